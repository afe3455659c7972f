package usage

import (
	"errors"
	"math"
	"unsafe"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
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
	for len(b) > 0 {
		num, typ, _, val, n := consumeField(b)
		if n < 0 {
			return errMalformedMessage
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case fMsgIdentifier:
			if m.identifier == nil {
				m.identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{}
			}
			if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(val, m.identifier); err != nil {
				return err
			}
		case fMsgHTTPLogs:
			m.logs = append(m.logs, val)
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
		for len(logs) > 0 {
			num, typ, _, entry, n := consumeField(logs)
			if n < 0 {
				m.b.counts[outMalformed]++
				break
			}
			logs = logs[n:]
			if num != fEntriesLogEntry || typ != protowire.BytesType {
				continue
			}
			m.f = facts{}
			if !m.f.fromWire(entry, units, consumer) {
				m.b.counts[outMalformed]++
				continue
			}
			m.r.settleFacts(m.b, &m.f, cat, now)
		}
	}
	return nil
}

// consumeField reads one field: its number, wire type, value (an integer
// for varint and fixed types, bytes for length-delimited ones) and length;
// n < 0 if b is malformed.
func consumeField(b []byte) (num protowire.Number, typ protowire.Type, v uint64, val []byte, n int) {
	num, typ, n = protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, 0, nil, n
	}
	var m int
	switch typ {
	case protowire.VarintType:
		v, m = protowire.ConsumeVarint(b[n:])
	case protowire.BytesType:
		val, m = protowire.ConsumeBytes(b[n:])
	case protowire.Fixed64Type:
		v, m = protowire.ConsumeFixed64(b[n:])
	case protowire.Fixed32Type:
		var v32 uint32
		v32, m = protowire.ConsumeFixed32(b[n:])
		v = uint64(v32)
	default:
		m = protowire.ConsumeFieldValue(num, typ, b[n:])
	}
	if m < 0 {
		return 0, 0, 0, nil, m
	}
	return num, typ, v, val, n + m
}

// str is b as a string without a copy: it is only valid while b is, so
// whatever outlives the message must be cloned.
func str(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// fromWire reads an encoded HTTPAccessLogEntry's facts; false if it is
// malformed. Its strings point into b.
func (f *facts) fromWire(b []byte, unitsHeader, consumerHeader string) bool {
	for len(b) > 0 {
		num, typ, _, val, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		ok := true
		switch num {
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
	for len(b) > 0 {
		num, typ, v, val, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		ok := true
		switch {
		case num == fCommonStartTime && typ == protowire.BytesType:
			f.hasStart = true
			ok = f.timestampFromWire(val)
		case num == fCommonResponseFlags && typ == protowire.BytesType:
			ok = f.flagsFromWire(val)
		case num == fCommonMetadata && typ == protowire.BytesType:
			ok = f.metadataFromWire(val)
		case num == fCommonIntermediate && typ == protowire.VarintType:
			f.intermediate = v != 0
		case num == fCommonLogType && typ == protowire.VarintType:
			f.logType = int32(v)
		}
		if !ok {
			return false
		}
	}
	return true
}

// timestampFromWire reads a google.protobuf.Timestamp.
func (f *facts) timestampFromWire(b []byte) bool {
	for len(b) > 0 {
		num, typ, v, _, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ != protowire.VarintType {
			continue
		}
		switch num {
		case 1:
			f.startSec = int64(v)
		case 2:
			f.startNanos = int32(v)
		}
	}
	return true
}

func (f *facts) flagsFromWire(b []byte) bool {
	for len(b) > 0 {
		num, typ, _, _, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num == fFlagsUnauthorized && typ == protowire.BytesType {
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
	for len(b) > 0 {
		num, typ, _, entry, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num != field || typ != protowire.BytesType {
			continue
		}
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
	for len(entry) > 0 {
		num, typ, _, val, n := consumeField(entry)
		if n < 0 {
			return false
		}
		entry = entry[n:]
		if num == fMapValue && typ == protowire.BytesType && !fn(val) {
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
	for len(b) > 0 {
		num, typ, x, val, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == fValueNumber && typ == protowire.Fixed64Type:
			v.kind, v.n = num, math.Float64frombits(x)
		case num == fValueString && typ == protowire.BytesType:
			v.kind, v.s = num, str(val)
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
	for len(b) > 0 {
		num, typ, _, val, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case fRequestPath:
			f.path = str(val)
		case fRequestID:
			f.requestID = str(val)
		case fRequestOriginalPath:
			f.originalPath = str(val)
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
	for len(b) > 0 {
		num, typ, _, val, n := consumeField(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case fResponseCode:
			f.hasCode = true
			// google.protobuf.UInt32Value
			for len(val) > 0 {
				cn, ct, v, _, m := consumeField(val)
				if m < 0 {
					return false
				}
				val = val[m:]
				if cn == 1 && ct == protowire.VarintType {
					f.code = uint32(v)
				}
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

// mapKey returns a map entry's string key (the last one, "" if none).
func mapKey(entry []byte) (string, bool) {
	key := ""
	for len(entry) > 0 {
		num, typ, _, val, n := consumeField(entry)
		if n < 0 {
			return "", false
		}
		entry = entry[n:]
		if num == fMapKey && typ == protowire.BytesType {
			key = str(val)
		}
	}
	return key, true
}

// stringMapEntry reads a map<string, string> entry.
func stringMapEntry(entry []byte) (key, value string, ok bool) {
	for len(entry) > 0 {
		num, typ, _, val, n := consumeField(entry)
		if n < 0 {
			return "", "", false
		}
		entry = entry[n:]
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case fMapKey:
			key = str(val)
		case fMapValue:
			value = str(val)
		}
	}
	return key, value, true
}
