package rls

import (
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Codec is the gRPC codec of levy's server. It reads RateLimitRequests and
// writes RateLimitResponses itself, and hands every other message (and any
// of these with a field it does not write exactly as protobuf does) to
// gRPC's protobuf codec. Generic protobuf decoding and encoding took about
// a tenth of levy's CPU per ShouldRateLimit; reading a request here takes
// a handful of allocations (descriptors and entries each in one slice,
// every string a piece of one copy of the request), and the answer is
// written in one pass into one buffer of the right size. Both produce what
// protobuf would: the tests compare them, field by field and byte by byte.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

// Name implements encoding.CodecV2: levy's codec is the protobuf codec.
func (Codec) Name() string { return grpcproto.Name }

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rlsv3.RateLimitResponse); ok && r != nil {
		if n, ok := responseSize(r); ok {
			return mem.BufferSlice{mem.SliceBuffer(appendResponse(make([]byte, 0, n), r))}, nil
		}
	}
	return protoCodec.Marshal(v)
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rlsv3.RateLimitRequest); ok && r != nil {
		var b []byte
		if len(data) == 1 {
			b = data[0].ReadOnlyData() // copied below, before the buffer is freed
		} else {
			b = data.Materialize()
		}
		if decodeRequest(b, r) {
			return nil
		}
	}
	return protoCodec.Unmarshal(data, v)
}

// wireField is one field of a message as it came off the wire: a varint's
// value, or the offset and length of a length-delimited field's bytes.
type wireField struct {
	num    protowire.Number
	typ    protowire.Type
	v      uint64
	off, n int
}

// nextField reads the field at b[i:] and returns it and the offset after
// it; false when the bytes are malformed or the field is neither a varint
// nor length-delimited (none that levy reads is).
func nextField(b []byte, i int) (wireField, int, bool) {
	num, typ, k := protowire.ConsumeTag(b[i:])
	if k < 0 {
		return wireField{}, 0, false
	}
	i += k
	f := wireField{num: num, typ: typ}
	switch typ {
	case protowire.VarintType:
		v, k := protowire.ConsumeVarint(b[i:])
		if k < 0 {
			return wireField{}, 0, false
		}
		f.v = v
		return f, i + k, true
	case protowire.BytesType:
		n, k := protowire.ConsumeVarint(b[i:])
		if k < 0 || n > uint64(len(b)-i-k) {
			return wireField{}, 0, false
		}
		f.off, f.n = i+k, int(n)
		return f, f.off + f.n, true
	}
	return wireField{}, 0, false
}

// known reports whether f is a field the decoder below reads exactly as
// protobuf does, in a message whose fields are given as number: wire type.
func known(f wireField, fields map[protowire.Number]protowire.Type) bool {
	t, ok := fields[f.num]
	return ok && t == f.typ
}

// The fields decodeRequest reads, by message. A field of another number or
// type (unit_multiplier, a field Envoy adds later) sends the request to the
// protobuf codec instead.
var (
	requestFields    = map[protowire.Number]protowire.Type{1: protowire.BytesType, 2: protowire.BytesType, 3: protowire.VarintType}
	descriptorFields = map[protowire.Number]protowire.Type{1: protowire.BytesType, 2: protowire.BytesType, 3: protowire.BytesType, 4: protowire.VarintType}
	entryFields      = map[protowire.Number]protowire.Type{1: protowire.BytesType, 2: protowire.BytesType}
	overrideFields   = map[protowire.Number]protowire.Type{1: protowire.VarintType, 2: protowire.VarintType}
	uint64Fields     = map[protowire.Number]protowire.Type{1: protowire.VarintType}
)

// scanMessage checks that every field of b[off:off+n] is in fields and
// calls sub, when not nil, with each length-delimited one.
func scanMessage(b []byte, off, n int, fields map[protowire.Number]protowire.Type, sub func(wireField) bool) bool {
	for i, end := off, off+n; i < end; {
		f, j, ok := nextField(b[:end], i)
		if !ok || !known(f, fields) {
			return false
		}
		if sub != nil && f.typ == protowire.BytesType && !sub(f) {
			return false
		}
		i = j
	}
	return true
}

// checkRequest checks that b is a RateLimitRequest of fields decodeRequest
// reads, with valid UTF-8 strings, and counts its descriptors and entries.
func checkRequest(b []byte) (descs, entries int, ok bool) {
	validString := func(f wireField) bool { return utf8.Valid(b[f.off : f.off+f.n]) }
	entry := func(f wireField) bool { return validString(f) }
	descriptor := func(f wireField) bool {
		switch f.num {
		case 1:
			entries++
			return scanMessage(b, f.off, f.n, entryFields, entry)
		case 2:
			return scanMessage(b, f.off, f.n, overrideFields, nil)
		default: // 3, hits_addend
			return scanMessage(b, f.off, f.n, uint64Fields, nil)
		}
	}
	ok = scanMessage(b, 0, len(b), requestFields, func(f wireField) bool {
		if f.num == 1 {
			return validString(f)
		}
		descs++
		return scanMessage(b, f.off, f.n, descriptorFields, descriptor)
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
	str := func(f wireField) string { return s[f.off : f.off+f.n] }
	descs := make([]rlv3.RateLimitDescriptor, nd)
	entries := make([]rlv3.RateLimitDescriptor_Entry, ne)
	entryPtrs := make([]*rlv3.RateLimitDescriptor_Entry, ne)
	out := make([]*rlv3.RateLimitDescriptor, nd)
	if nd > 0 {
		req.Descriptors = out
	}
	di, ei := 0, 0
	forEach := func(off, n int, fn func(wireField)) {
		for i, end := off, off+n; i < end; {
			f, j, _ := nextField(b[:end], i) // checked above
			fn(f)
			i = j
		}
	}
	forEach(0, len(b), func(f wireField) {
		switch f.num {
		case 1:
			req.Domain = str(f)
		case 3:
			req.HitsAddend = uint32(f.v)
		case 2:
			d := &descs[di]
			out[di] = d
			di++
			first := ei
			forEach(f.off, f.n, func(g wireField) {
				switch g.num {
				case 1:
					e := &entries[ei]
					entryPtrs[ei] = e
					ei++
					forEach(g.off, g.n, func(h wireField) {
						if h.num == 1 {
							e.Key = str(h)
						} else {
							e.Value = str(h)
						}
					})
				case 2:
					if d.Limit == nil {
						d.Limit = &rlv3.RateLimitDescriptor_RateLimitOverride{}
					}
					forEach(g.off, g.n, func(h wireField) {
						if h.num == 1 {
							d.Limit.RequestsPerUnit = uint32(h.v)
						} else {
							d.Limit.Unit = typev3.RateLimitUnit(int32(h.v))
						}
					})
				case 3:
					if d.HitsAddend == nil {
						d.HitsAddend = &wrapperspb.UInt64Value{}
					}
					forEach(g.off, g.n, func(h wireField) { d.HitsAddend.Value = h.v })
				case 4:
					d.IsNegativeHits = g.v != 0
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
	n := varintSize(uint64(r.OverallCode))
	for _, st := range r.Statuses {
		m, ok := statusSize(st)
		if !ok {
			return 0, false
		}
		n += 1 + protowire.SizeBytes(m)
	}
	for _, hs := range [][]*corev3.HeaderValue{r.ResponseHeadersToAdd, r.RequestHeadersToAdd} {
		for _, h := range hs {
			if h == nil || len(h.RawValue) > 0 {
				return 0, false
			}
			n += 1 + protowire.SizeBytes(headerSize(h))
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
	n := varintSize(uint64(st.Code)) + varintSize(uint64(st.LimitRemaining))
	if l := st.CurrentLimit; l != nil {
		if l.UnitMultiplier != nil {
			return 0, false
		}
		n += 1 + protowire.SizeBytes(limitSize(l))
	}
	if d := st.DurationUntilReset; d != nil {
		n += 1 + protowire.SizeBytes(durationSize(d))
	}
	return n, true
}

func limitSize(l *rlsv3.RateLimitResponse_RateLimit) int {
	return varintSize(uint64(l.RequestsPerUnit)) + varintSize(uint64(l.Unit)) + stringField(l.Name)
}

func durationSize(d *durationpb.Duration) int {
	return varintSize(uint64(d.Seconds)) + varintSize(uint64(int64(d.Nanos)))
}

func headerSize(h *corev3.HeaderValue) int { return stringField(h.Key) + stringField(h.Value) }

// varintSize is the size of a varint field numbered below 16 (a one-byte
// tag): none when v is zero, as proto3 leaves it out.
func varintSize(v uint64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(v)
}

// stringField is the size of a string wireField numbered below 16.
func stringField(s string) int {
	if s == "" {
		return 0
	}
	return 1 + protowire.SizeBytes(len(s))
}

// appendResponse writes r, whose size responseSize accepted, in field
// number order, as protobuf does.
func appendResponse(b []byte, r *rlsv3.RateLimitResponse) []byte {
	b = appendVarint(b, 1, uint64(r.OverallCode))
	for _, st := range r.Statuses {
		m, _ := statusSize(st)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(m))
		b = appendVarint(b, 1, uint64(st.Code))
		if l := st.CurrentLimit; l != nil {
			b = protowire.AppendTag(b, 2, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(limitSize(l)))
			b = appendVarint(b, 1, uint64(l.RequestsPerUnit))
			b = appendVarint(b, 2, uint64(l.Unit))
			b = appendString(b, 3, l.Name)
		}
		b = appendVarint(b, 3, uint64(st.LimitRemaining))
		if d := st.DurationUntilReset; d != nil {
			b = protowire.AppendTag(b, 4, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(durationSize(d)))
			b = appendVarint(b, 1, uint64(d.Seconds))
			b = appendVarint(b, 2, uint64(int64(d.Nanos)))
		}
	}
	for i, hs := range [][]*corev3.HeaderValue{r.ResponseHeadersToAdd, r.RequestHeadersToAdd} {
		for _, h := range hs {
			b = protowire.AppendTag(b, protowire.Number(3+i), protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(headerSize(h)))
			b = appendString(b, 1, h.Key)
			b = appendString(b, 2, h.Value)
		}
	}
	if len(r.RawBody) > 0 {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, r.RawBody)
	}
	return b
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
}
