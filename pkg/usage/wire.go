package usage

import (
	"errors"
	"math"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/wire"
)

// Decoding a whole HTTPAccessLogEntry into Go structs (addresses,
// durations, TLS properties, every metadata Struct and header map) is
// almost all of the cost of ingesting access logs, and settlement reads a
// dozen fields. So the Receiver reads those fields straight off the wire:
// a wireMessage is what it passes to RecvMsg, and gRPC's proto codec hands
// it the message's bytes through the protobuf runtime's legacy Unmarshal
// hook. It settles the entries right there, while the bytes are valid.
//
// The reading follows protobuf's rules for the fields it reads: the last
// value of a scalar wins, a message field seen twice is merged, a map
// entry replaces an earlier one with the same key, the last member of a
// oneof wins, and a field with an unexpected wire type is ignored as an
// unknown field. It is more lenient than a full decode in one way: a
// malformed entry, or invalid UTF-8 in a string it does not read, costs
// that entry (counted as malformed), not the whole message.
// TestWireFactsMatchDecodedFacts checks it against Settle's facts.

// Field numbers, from envoy/service/accesslog/v3/als.proto and
// envoy/data/accesslog/v3/accesslog.proto.
const (
	fMsgIdentifier = 1 // StreamAccessLogsMessage
	fMsgHTTPLogs   = 2
	fMsgTCPLogs    = 3

	fEntriesLogEntry = 1 // HTTPAccessLogEntries

	fEntryCommon   = 1 // HTTPAccessLogEntry
	fEntryRequest  = 3
	fEntryResponse = 4

	fCommonStartTime     = 5 // AccessLogCommon
	fCommonResponseFlags = 16
	fCommonMetadata      = 17
	fCommonIntermediate  = 27
	fCommonLogType       = 33

	fFlagsUnauthorized = 13 // ResponseFlags

	fMetadataFilter = 1 // config.core.v3.Metadata.filter_metadata

	fStructFields = 1 // google.protobuf.Struct

	fValueNull   = 1 // google.protobuf.Value
	fValueNumber = 2
	fValueString = 3
	fValueBool   = 4
	fValueStruct = 5
	fValueList   = 6

	fRequestPath         = 5 // HTTPRequestProperties
	fRequestID           = 9
	fRequestOriginalPath = 10
	fRequestHeaders      = 13

	fResponseCode    = 1 // HTTPResponseProperties
	fResponseHeaders = 4

	fMapKey   = 1 // a map entry
	fMapValue = 2
)

var errMalformedMessage = errors.New("malformed StreamAccessLogsMessage")

// wireMessage is a StreamAccessLogsMessage that settles its HTTP entries
// into a stream's batch as it is decoded. It implements the protobuf
// runtime's legacy message interface (Reset, String, ProtoMessage) and its
// Unmarshal hook; it cannot be marshalled.
type wireMessage struct {
	r *Receiver
	b *batch
	// identifier is the message's identifier, if it had one.
	identifier *accesslogv3.StreamAccessLogsMessage_Identifier
	logs       [][]byte // http_logs occurrences, valid during Unmarshal
	f          facts
}

func (m *wireMessage) Reset() {
	m.identifier = nil
	m.dropLogs()
}

func (m *wireMessage) dropLogs() {
	clear(m.logs)
	m.logs = m.logs[:0]
}

func (m *wireMessage) String() string { return "usage.wireMessage" }

// ProtoMessage marks wireMessage as a (legacy) protobuf message.
func (m *wireMessage) ProtoMessage() {}

// Unmarshal decodes a StreamAccessLogsMessage and settles its entries.
func (m *wireMessage) Unmarshal(b []byte) error {
	defer m.dropLogs() // they point into b
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return errMalformedMessage
		}
		i = next
		if fld.WireType != protowire.BytesType {
			continue
		}
		switch fld.Num {
		case fMsgIdentifier:
			if m.identifier == nil {
				m.identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{}
			}
			if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(fld.Bytes(b), m.identifier); err != nil {
				return err
			}
		case fMsgHTTPLogs:
			m.logs = append(m.logs, fld.Bytes(b))
		case fMsgTCPLogs: // the other member of the oneof: http_logs so far are gone
			m.dropLogs()
		}
	}
	if len(m.logs) == 0 {
		return nil
	}
	cat := m.r.cfg.Catalog()
	now := m.r.cfg.Clock()
	units, consumer := m.r.cfg.UnitsHeader, m.r.cfg.ConsumerHeader
	for _, logs := range m.logs {
		for i := 0; i < len(logs); {
			fld, next, ok := wire.Next(logs, i)
			if !ok {
				m.b.counts[outMalformed]++
				break
			}
			i = next
			if fld.Num != fEntriesLogEntry || fld.WireType != protowire.BytesType {
				continue
			}
			m.f = facts{}
			if !m.f.fromWire(fld.Bytes(logs), units, consumer) {
				m.b.counts[outMalformed]++
				continue
			}
			m.r.settleFacts(m.b, &m.f, cat, now)
		}
	}
	return nil
}

// fromWire reads an encoded HTTPAccessLogEntry's facts; false if it is
// malformed. Its strings point into b (wire.View).
func (f *facts) fromWire(b []byte, unitsHeader, consumerHeader string) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		if fld.WireType != protowire.BytesType {
			continue
		}
		switch val := fld.Bytes(b); fld.Num {
		case fEntryCommon:
			f.hasCommon = true
			ok = f.commonFromWire(val)
		case fEntryRequest:
			f.hasRequest = true
			ok = f.requestFromWire(val, consumerHeader)
		case fEntryResponse:
			f.hasResponse = true
			ok = f.responseFromWire(val, unitsHeader)
		}
		if !ok {
			return false
		}
	}
	return true
}

func (f *facts) commonFromWire(b []byte) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		bytes, varint := fld.WireType == protowire.BytesType, fld.WireType == protowire.VarintType
		switch {
		case fld.Num == fCommonStartTime && bytes:
			f.hasStart = true
			ok = f.timestampFromWire(fld.Bytes(b))
		case fld.Num == fCommonResponseFlags && bytes:
			ok = f.flagsFromWire(fld.Bytes(b))
		case fld.Num == fCommonMetadata && bytes:
			ok = f.metadataFromWire(fld.Bytes(b))
		case fld.Num == fCommonIntermediate && varint:
			f.intermediate = fld.V != 0
		case fld.Num == fCommonLogType && varint:
			f.logType = int32(fld.V)
		}
		if !ok {
			return false
		}
	}
	return true
}

// timestampFromWire reads a google.protobuf.Timestamp.
func (f *facts) timestampFromWire(b []byte) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		if fld.WireType != protowire.VarintType {
			continue
		}
		switch fld.Num {
		case 1:
			f.startSec = int64(fld.V)
		case 2:
			f.startNanos = int32(fld.V)
		}
	}
	return true
}

func (f *facts) flagsFromWire(b []byte) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		if fld.Num == fFlagsUnauthorized && fld.WireType == protowire.BytesType {
			f.denied = true
		}
	}
	return true
}

// metadataFromWire reads config.core.v3.Metadata for the ext_authz
// namespace's Struct.
func (f *facts) metadataFromWire(b []byte) bool {
	return mapEntries(b, fMetadataFilter, func(key string, entry []byte) bool {
		if key != ExtAuthzNamespace {
			return true
		}
		// This entry replaces any earlier one for the namespace.
		f.consumer, f.plan, f.ledger, f.window, f.hasWindow = "", "", "", 0, false
		f.quota, f.period, f.hasPeriod = "", 0, false
		return mapValues(entry, f.structFromWire)
	})
}

// structFromWire reads the ext_authz google.protobuf.Struct's fields.
func (f *facts) structFromWire(b []byte) bool {
	return mapEntries(b, fStructFields, func(key string, entry []byte) bool {
		if key != mdConsumer && key != mdPlan && key != mdLedger && key != mdWindow && key != mdQuota && key != mdPeriod {
			return true
		}
		// The Value, merged over its occurrences in the entry.
		var v wireValue
		if !mapValues(entry, v.fromWire) {
			return false
		}
		switch key {
		case mdConsumer:
			f.consumer = v.str()
		case mdPlan:
			f.plan = v.str()
		case mdLedger:
			f.ledger = v.str()
		case mdWindow:
			f.window, f.hasWindow = 0, false
			if v.kind == fValueNumber {
				f.window, f.hasWindow = windowSeconds(v.n)
			}
		case mdQuota:
			f.quota = v.str()
		case mdPeriod:
			f.period, f.hasPeriod = 0, false
			if v.kind == fValueNumber {
				f.period, f.hasPeriod = windowSeconds(v.n)
			}
		}
		return true
	})
}

// mapEntries calls fn with the key and the bytes of each entry of the map
// field `field` in b; it stops at the first false.
func mapEntries(b []byte, field protowire.Number, fn func(key string, entry []byte) bool) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		if fld.Num != field || fld.WireType != protowire.BytesType {
			continue
		}
		entry := fld.Bytes(b)
		key, ok := mapKey(entry)
		if !ok || !fn(key, entry) {
			return false
		}
	}
	return true
}

// mapValues calls fn with each occurrence of a map entry's message value
// (protobuf merges them); it stops at the first false.
func mapValues(entry []byte, fn func(val []byte) bool) bool {
	for i := 0; i < len(entry); {
		fld, next, ok := wire.Next(entry, i)
		if !ok {
			return false
		}
		i = next
		if fld.Num == fMapValue && fld.WireType == protowire.BytesType && !fn(fld.Bytes(entry)) {
			return false
		}
	}
	return true
}

// wireValue is a google.protobuf.Value's kind (its oneof's field number)
// and, for strings and numbers, its value.
type wireValue struct {
	kind protowire.Number
	s    string
	n    float64
}

func (v *wireValue) fromWire(b []byte) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		switch num, typ := fld.Num, fld.WireType; {
		case num == fValueNumber && typ == protowire.Fixed64Type:
			v.kind, v.n = num, math.Float64frombits(fld.V)
		case num == fValueString && typ == protowire.BytesType:
			v.kind, v.s = num, wire.View(fld.Bytes(b))
		case (num == fValueNull || num == fValueBool) && typ == protowire.VarintType,
			(num == fValueStruct || num == fValueList) && typ == protowire.BytesType:
			v.kind = num
		}
	}
	return true
}

func (v *wireValue) str() string {
	if v.kind == fValueString {
		return v.s
	}
	return ""
}

func (f *facts) requestFromWire(b []byte, consumerHeader string) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		if fld.WireType != protowire.BytesType {
			continue
		}
		switch val := fld.Bytes(b); fld.Num {
		case fRequestPath:
			f.path = wire.View(val)
		case fRequestID:
			f.requestID = wire.View(val)
		case fRequestOriginalPath:
			f.originalPath = wire.View(val)
		case fRequestHeaders:
			key, value, ok := stringMapEntry(val)
			if !ok {
				return false
			}
			if key == consumerHeader {
				f.consumerHeader = value
			}
		}
	}
	return true
}

func (f *facts) responseFromWire(b []byte, unitsHeader string) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		if fld.WireType != protowire.BytesType {
			continue
		}
		switch val := fld.Bytes(b); fld.Num {
		case fResponseCode:
			f.hasCode = true
			if !f.codeFromWire(val) {
				return false
			}
		case fResponseHeaders:
			key, value, ok := stringMapEntry(val)
			if !ok {
				return false
			}
			if key == unitsHeader {
				f.unitsHeader = value
			}
		}
	}
	return true
}

// codeFromWire reads the response code, a google.protobuf.UInt32Value.
func (f *facts) codeFromWire(b []byte) bool {
	for i := 0; i < len(b); {
		fld, next, ok := wire.Next(b, i)
		if !ok {
			return false
		}
		i = next
		if fld.Num == 1 && fld.WireType == protowire.VarintType {
			f.code = uint32(fld.V)
		}
	}
	return true
}

// mapKey returns a map entry's string key (the last one, "" if none).
func mapKey(entry []byte) (string, bool) {
	key := ""
	for i := 0; i < len(entry); {
		fld, next, ok := wire.Next(entry, i)
		if !ok {
			return "", false
		}
		i = next
		if fld.Num == fMapKey && fld.WireType == protowire.BytesType {
			key = wire.View(fld.Bytes(entry))
		}
	}
	return key, true
}

// stringMapEntry reads a map<string, string> entry.
func stringMapEntry(entry []byte) (key, value string, ok bool) {
	for i := 0; i < len(entry); {
		fld, next, ok := wire.Next(entry, i)
		if !ok {
			return "", "", false
		}
		i = next
		if fld.WireType != protowire.BytesType {
			continue
		}
		switch fld.Num {
		case fMapKey:
			key = wire.View(fld.Bytes(entry))
		case fMapValue:
			value = wire.View(fld.Bytes(entry))
		}
	}
	return key, value, true
}
