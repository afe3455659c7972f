package rls

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levyhq/levy/pkg/wire"
)

// Codec reads RateLimitRequests and writes RateLimitResponses itself, and
// hands every other message (and any of these with a field it does not
// write exactly as protobuf does) to gRPC's protobuf codec. Generic
// protobuf decoding and encoding took about a tenth of levy's CPU per
// ShouldRateLimit; reading a request here takes a handful of allocations
// (descriptors and entries each in one slice, every string a piece of one
// copy of the request), and the answer is written in one pass into one
// buffer of the right size. Both produce what protobuf would: the tests
// compare them, field by field and byte by byte. levy serve's codec
// (server.GRPCOptions) uses Decode and Encode with ext_authz's.
var Codec = wire.Codec{Decode: Decode, Encode: Encode}

// Decode reads a RateLimitRequest as proto.Unmarshal would, or declines.
// BenchmarkDecodeRequest: Envoy's request of 4 descriptors in 9
// allocations against proto.Unmarshal's 28; go-control-plane ships no
// UnmarshalVT for it. FuzzCodecRequest compares it with proto.Unmarshal.
var Decode = wire.Decoder(decodeRequest)

// Encode writes a RateLimitResponse as proto.Marshal would, or declines.
// BenchmarkEncodeResponse: an answer of three descriptors and the
// x-ratelimit headers in about 0.7 µs of CPU against proto.Marshal's 1.3
// (one allocation each). MarshalVTStrict takes about 0.5 µs, but only in a
// build with -tags vtprotobuf, which a plain go build of levy would not
// have. FuzzCodecResponse compares it with proto.Marshal.
var Encode = wire.Encoder(responseSize, appendResponse)

// The fields decodeRequest reads, by message. A field of another number or
// type (unit_multiplier, a field Envoy adds later) sends the request to the
// protobuf codec instead.
var (
	requestFields    = wire.Fields{1: wire.String, 2: wire.Message, 3: wire.Varint}
	descriptorFields = wire.Fields{1: wire.Message, 2: wire.Message, 3: wire.Message, 4: wire.Varint}
	entryFields      = wire.Fields{1: wire.String, 2: wire.String}
	overrideFields   = wire.Fields{1: wire.Varint, 2: wire.Varint}
	uint64Fields     = wire.Fields{1: wire.Varint}
)

// checkRequest checks that b is a RateLimitRequest of fields decodeRequest
// reads, and counts its descriptors and entries.
func checkRequest(b []byte) (descs, entries int, ok bool) {
	descriptor := func(f wire.Field) bool {
		switch f.Num {
		case 1:
			entries++
			return wire.Check(b, f.Off, f.N, entryFields, nil)
		case 2:
			return wire.Check(b, f.Off, f.N, overrideFields, nil)
		default: // 3, hits_addend
			return wire.Check(b, f.Off, f.N, uint64Fields, nil)
		}
	}
	ok = wire.Check(b, 0, len(b), requestFields, func(f wire.Field) bool {
		descs++
		return wire.Check(b, f.Off, f.N, descriptorFields, descriptor)
	})
	return descs, entries, ok
}

// decodeRequest reads b into req as proto.Unmarshal would (the fields it
// reads, merged the same way), or returns false, leaving req as it was,
// when b has anything else or is malformed.
func decodeRequest(b []byte, req *rlsv3.RateLimitRequest) bool {
	nd, ne, ok := checkRequest(b)
	if !ok {
		return false
	}
	proto.Reset(req) // as proto.Unmarshal does
	s := string(b)   // every string is a piece of this one copy
	str := func(f wire.Field) string { return s[f.Off : f.Off+f.N] }
	descs := make([]rlv3.RateLimitDescriptor, nd)
	entries := make([]rlv3.RateLimitDescriptor_Entry, ne)
	entryPtrs := make([]*rlv3.RateLimitDescriptor_Entry, ne)
	out := make([]*rlv3.RateLimitDescriptor, nd)
	if nd > 0 {
		req.Descriptors = out
	}
	di, ei := 0, 0
	wire.Each(b, 0, len(b), func(f wire.Field) {
		switch f.Num {
		case 1:
			req.Domain = str(f)
		case 3:
			req.HitsAddend = uint32(f.V)
		case 2:
			d := &descs[di]
			out[di] = d
			di++
			first := ei
			wire.Each(b, f.Off, f.N, func(g wire.Field) {
				switch g.Num {
				case 1:
					e := &entries[ei]
					entryPtrs[ei] = e
					ei++
					wire.Each(b, g.Off, g.N, func(h wire.Field) {
						if h.Num == 1 {
							e.Key = str(h)
						} else {
							e.Value = str(h)
						}
					})
				case 2:
					if d.Limit == nil {
						d.Limit = &rlv3.RateLimitDescriptor_RateLimitOverride{}
					}
					wire.Each(b, g.Off, g.N, func(h wire.Field) {
						if h.Num == 1 {
							d.Limit.RequestsPerUnit = uint32(h.V)
						} else {
							d.Limit.Unit = typev3.RateLimitUnit(int32(h.V))
						}
					})
				case 3:
					if d.HitsAddend == nil {
						d.HitsAddend = &wrapperspb.UInt64Value{}
					}
					wire.Each(b, g.Off, g.N, func(h wire.Field) { d.HitsAddend.Value = h.V })
				case 4:
					d.IsNegativeHits = g.V != 0
				}
			})
			if ei > first {
				d.Entries = entryPtrs[first:ei:ei]
			}
		}
	})
	return true
}

// responseSize is the encoded size of r, and false when r has a field
// appendResponse does not write (dynamic metadata, quotas, a unit
// multiplier, a raw header value): protobuf writes those.
func responseSize(r *rlsv3.RateLimitResponse) (int, bool) {
	if r.DynamicMetadata != nil || r.Quota != nil {
		return 0, false
	}
	n := wire.VarintSize(uint64(r.OverallCode))
	for _, st := range r.Statuses {
		m, ok := statusSize(st)
		if !ok {
			return 0, false
		}
		n += wire.MessageSize(m)
	}
	for _, hs := range [][]*corev3.HeaderValue{r.ResponseHeadersToAdd, r.RequestHeadersToAdd} {
		for _, h := range hs {
			if h == nil || len(h.RawValue) > 0 {
				return 0, false
			}
			n += wire.MessageSize(headerSize(h))
		}
	}
	if len(r.RawBody) > 0 {
		n += 1 + protowire.SizeBytes(len(r.RawBody))
	}
	return n, true
}

func statusSize(st *rlsv3.RateLimitResponse_DescriptorStatus) (int, bool) {
	if st == nil || st.Quota != nil {
		return 0, false
	}
	n := wire.VarintSize(uint64(st.Code)) + wire.VarintSize(uint64(st.LimitRemaining))
	if l := st.CurrentLimit; l != nil {
		if l.UnitMultiplier != nil {
			return 0, false
		}
		n += wire.MessageSize(limitSize(l))
	}
	if d := st.DurationUntilReset; d != nil {
		n += wire.MessageSize(durationSize(d))
	}
	return n, true
}

func limitSize(l *rlsv3.RateLimitResponse_RateLimit) int {
	return wire.VarintSize(uint64(l.RequestsPerUnit)) + wire.VarintSize(uint64(l.Unit)) + wire.StringSize(l.Name)
}

func durationSize(d *durationpb.Duration) int {
	return wire.VarintSize(uint64(d.Seconds)) + wire.VarintSize(uint64(int64(d.Nanos)))
}

func headerSize(h *corev3.HeaderValue) int { return wire.StringSize(h.Key) + wire.StringSize(h.Value) }

// appendResponse writes r, whose size responseSize accepted, in field
// number order, as protobuf does.
func appendResponse(b []byte, r *rlsv3.RateLimitResponse) []byte {
	b = wire.AppendVarint(b, 1, uint64(r.OverallCode))
	for _, st := range r.Statuses {
		m, _ := statusSize(st)
		b = wire.AppendMessage(b, 2, m)
		b = wire.AppendVarint(b, 1, uint64(st.Code))
		if l := st.CurrentLimit; l != nil {
			b = wire.AppendMessage(b, 2, limitSize(l))
			b = wire.AppendVarint(b, 1, uint64(l.RequestsPerUnit))
			b = wire.AppendVarint(b, 2, uint64(l.Unit))
			b = wire.AppendString(b, 3, l.Name)
		}
		b = wire.AppendVarint(b, 3, uint64(st.LimitRemaining))
		if d := st.DurationUntilReset; d != nil {
			b = wire.AppendMessage(b, 4, durationSize(d))
			b = wire.AppendVarint(b, 1, uint64(d.Seconds))
			b = wire.AppendVarint(b, 2, uint64(int64(d.Nanos)))
		}
	}
	for i, hs := range [][]*corev3.HeaderValue{r.ResponseHeadersToAdd, r.RequestHeadersToAdd} {
		for _, h := range hs {
			b = wire.AppendMessage(b, protowire.Number(3+i), headerSize(h))
			b = wire.AppendString(b, 1, h.Key)
			b = wire.AppendString(b, 2, h.Value)
		}
	}
	if len(r.RawBody) > 0 {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, r.RawBody)
	}
	return b
}
