// Package wire reads and writes levy's hottest gRPC messages by hand, for
// a codec that hands everything else to protobuf. It is levy's one
// protobuf dialect: the ext_authz and RateLimitService codecs (pkg/authz,
// pkg/rls) and the access-log reader (pkg/usage) all read fields with Next
// and write them with the Append functions. A codec's reader is exact or
// declines: it first checks that every field of the message is one it
// reads exactly as proto.Unmarshal would (by number and wire type, strings
// valid UTF-8), and when one is not, the message goes to protobuf whole.
// The access-log reader instead skips what it does not read, as protobuf
// skips unknown fields.
package wire

import (
	"sync/atomic"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Codec is a gRPC codec: Decode and Encode take the messages they can,
// and protobuf the rest.
type Codec struct {
	// Decode reads data into v, exactly as proto.Unmarshal would, or
	// returns false and leaves v alone. It takes the bytes (Contiguous)
	// only for the messages it reads: an access-log batch, which protobuf
	// reads, is not copied on its way there.
	Decode func(data mem.BufferSlice, v any) bool
	// Encode writes v exactly as proto.Marshal would, or returns false.
	Encode func(v any) ([]byte, bool)
}

var _ encoding.CodecV2 = Codec{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

// Name implements encoding.CodecV2: this is the protobuf codec.
func (Codec) Name() string { return grpcproto.Name }

// Marshal implements encoding.CodecV2.
func (c Codec) Marshal(v any) (mem.BufferSlice, error) {
	if c.Encode != nil {
		if b, ok := c.encode(v); ok {
			return mem.BufferSlice{mem.SliceBuffer(b)}, nil
		}
	}
	return protoCodec.Marshal(v)
}

// Unmarshal implements encoding.CodecV2.
func (c Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if c.Decode != nil && c.decode(data, v) {
		return nil
	}
	return protoCodec.Unmarshal(data, v) // resets v: nothing a declined or failed Decode wrote survives
}

// Recovered counts the messages the hand-written reader or writer
// panicked on and protobuf handled instead (levy_codec_recovered_total).
var Recovered atomic.Uint64

// decode runs c.Decode. The readers are fuzzed, but a panic one of them
// still hides costs that one message protobuf's slower reading, never the
// process and with it every other caller's decisions.
func (c Codec) decode(data mem.BufferSlice, v any) (ok bool) {
	defer func() {
		if recover() != nil {
			Recovered.Add(1)
			ok = false
		}
	}()
	return c.Decode(data, v)
}

// encode runs c.Encode, likewise.
func (c Codec) encode(v any) (b []byte, ok bool) {
	defer func() {
		if recover() != nil {
			Recovered.Add(1)
			b, ok = nil, false
		}
	}()
	return c.Encode(v)
}

// Decoder is a Codec.Decode for messages of type T, read by decode from
// the message's bytes in one slice (valid during the call only) exactly as
// proto.Unmarshal would, or declined.
func Decoder[T any](decode func(b []byte, m *T) bool) func(mem.BufferSlice, any) bool {
	return func(data mem.BufferSlice, v any) bool {
		m, ok := v.(*T)
		if !ok || m == nil {
			return false
		}
		b, free := Contiguous(data)
		defer free()
		return decode(b, m)
	}
}

// Encoder is a Codec.Encode for messages of type T: size is the encoding's
// size (false to leave the message to protobuf), and write appends it.
func Encoder[T any](size func(*T) (int, bool), write func(b []byte, m *T) []byte) func(any) ([]byte, bool) {
	return func(v any) ([]byte, bool) {
		m, ok := v.(*T)
		if !ok || m == nil {
			return nil, false
		}
		n, ok := size(m)
		if !ok {
			return nil, false
		}
		return write(make([]byte, 0, n), m), true
	}
}

// Contiguous is data's bytes in one slice, valid until free is called
// (and data's, which gRPC frees after Unmarshal): its one buffer, or a
// pooled copy of its several.
func Contiguous(data mem.BufferSlice) (b []byte, free func()) {
	if len(data) == 1 {
		return data[0].ReadOnlyData(), func() {}
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	return buf.ReadOnlyData(), buf.Free
}

// Field is one field of a message as it came off the wire: a varint's or
// a fixed-size field's value, or the offset and length of a
// length-delimited field's bytes.
type Field struct {
	Tag
	V      uint64
	Off, N int
}

// Tag is a field's number and wire type. It is a struct of its own so
// that Field has four fields: the compiler keeps a struct of up to four in
// registers, and Next returning one of five took BenchmarkWireMessage from
// 0.21 to 0.45 CPU-seconds per 3,000 messages.
type Tag struct {
	Num      protowire.Number
	WireType protowire.Type
}

// Bytes is the bytes of a length-delimited field of b.
func (f Field) Bytes(b []byte) []byte { return b[f.Off : f.Off+f.N] }

// Next reads the field at b[i:] and returns it and the offset after it;
// false when the bytes are malformed. A group is skipped whole (a Field of
// no value). Check declines every field that is neither a varint nor
// length-delimited; a reader that skips what it does not know, as
// protobuf does, walks a message with Next.
func Next(b []byte, i int) (Field, int, bool) {
	num, typ, k := protowire.ConsumeTag(b[i:])
	if k < 0 || num > protowire.MaxValidNumber { // ConsumeTag checks the least number, protobuf both
		return Field{}, 0, false
	}
	i += k
	f := Field{Tag: Tag{Num: num, WireType: typ}}
	switch typ {
	case protowire.VarintType:
		f.V, k = protowire.ConsumeVarint(b[i:])
	case protowire.BytesType:
		n, m := protowire.ConsumeVarint(b[i:])
		if m < 0 || n > uint64(len(b)-i-m) {
			return Field{}, 0, false
		}
		f.Off, f.N = i+m, int(n)
		k = m + f.N
	case protowire.Fixed64Type:
		f.V, k = protowire.ConsumeFixed64(b[i:])
	case protowire.Fixed32Type:
		var v uint32
		v, k = protowire.ConsumeFixed32(b[i:])
		f.V = uint64(v)
	default:
		k = protowire.ConsumeFieldValue(num, typ, b[i:])
	}
	if k < 0 {
		return Field{}, 0, false
	}
	return f, i + k, true
}

// View is b as a string without a copy, valid only while b is: whatever
// outlives the message must be cloned. The access-log reader takes every
// string it reads (a request's path and id, each header's name and value)
// as a View, so that reading an entry allocates nothing
// (TestWireReadingDoesNotAllocate); copying them instead cost
// BenchmarkWireMessage 1,000 allocations and 15 KB per 100-entry message,
// and about twice its time. It is the one unsafe conversion of levy's
// codecs: authz and rls, whose strings outlive the call, copy the message
// once and slice that.
func View(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// Type is a field's type as a reader reads it: what descriptor.proto calls
// a field's type (TYPE_STRING, TYPE_MESSAGE), every integer folded into
// Varint. It is not the wire type (protowire.Type), which cannot tell a
// string from bytes or a message.
type Type uint8

const (
	Varint  Type = iota + 1 // an integer, enum or bool
	String                  // UTF-8, checked
	Bytes                   // bytes, unchecked
	Message                 // a message of its own
)

// Fields are the fields of a message a reader reads, indexed by number
// (a slice, not a map: it is looked up for every field of every request).
type Fields []Type

// typeOf is the type fields reads field number num as; 0 when it does not
// read it.
func (fields Fields) typeOf(num protowire.Number) Type {
	if num >= 0 && int(num) < len(fields) {
		return fields[num]
	}
	return 0
}

// Check checks that every field of b[off:off+n] is in fields with its
// wire type (strings valid UTF-8), and calls sub, when not nil, with each
// Message field; false at the first that is not, or when sub says so.
func Check(b []byte, off, n int, fields Fields, sub func(Field) bool) bool {
	for i, end := off, off+n; i < end; {
		f, j, ok := Next(b[:end], i)
		if !ok {
			return false
		}
		switch fields.typeOf(f.Num) {
		case Varint:
			ok = f.WireType == protowire.VarintType
		case String:
			ok = f.WireType == protowire.BytesType && utf8.Valid(f.Bytes(b))
		case Bytes:
			ok = f.WireType == protowire.BytesType
		case Message:
			ok = f.WireType == protowire.BytesType && (sub == nil || sub(f))
		default:
			ok = false
		}
		if !ok {
			return false
		}
		i = j
	}
	return true
}

// Each calls fn with each field of b[off:off+n], which Check accepted.
func Each(b []byte, off, n int, fn func(Field)) {
	for i, end := off, off+n; i < end; {
		f, j, _ := Next(b[:end], i)
		fn(f)
		i = j
	}
}

// The sizes and appenders below write proto3 fields numbered below 16 (a
// one-byte tag), leaving out zero scalars as protobuf does.

// VarintSize is the size of a varint field holding v.
func VarintSize(v uint64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(v)
}

// BoolSize is the size of a bool field holding v.
func BoolSize(v bool) int {
	if !v {
		return 0
	}
	return 2
}

// StringSize is the size of a string field holding s.
func StringSize(s string) int {
	if s == "" {
		return 0
	}
	return 1 + protowire.SizeBytes(len(s))
}

// MessageSize is the size of a message field whose message takes m bytes
// (written even when empty: a message field is there or not).
func MessageSize(m int) int { return 1 + protowire.SizeBytes(m) }

// AppendVarint appends a varint field holding v.
func AppendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

// AppendBool appends a bool field holding v.
func AppendBool(b []byte, num protowire.Number, v bool) []byte {
	return AppendVarint(b, num, protowire.EncodeBool(v))
}

// AppendString appends a string field holding s.
func AppendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
}

// AppendMessage appends a message field's tag and length, m: its message
// follows.
func AppendMessage(b []byte, num protowire.Number, m int) []byte {
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.BytesType), uint64(m))
}
