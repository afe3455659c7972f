package authz

import (
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/levyhq/levy/pkg/wire/wiretest"
)

// requestCases are checkCases and the header_map's: encode_raw_headers'
// raw values, repeated headers, values without raw_value, and both
// header lists at once (which Envoy never sends).
func requestCases(t testing.TB) map[string][]byte {
	cases := checkCases(t)
	field, varint, cat := wiretest.Bytes, wiretest.Varint, wiretest.Cat
	http := func(fields ...[]byte) []byte { return field(1, field(4, field(2, cat(fields...)))) }
	value := func(fields ...[]byte) []byte { return field(1, cat(fields...)) } // a HeaderMap's HeaderValue
	headerMap := func(values ...[]byte) []byte { return field(13, cat(values...)) }
	k := func(s string) []byte { return field(1, []byte(s)) }
	v := func(s string) []byte { return field(2, []byte(s)) }
	raw := func(s string) []byte { return field(3, []byte(s)) }
	cases["raw headers"] = http(headerMap(value(k("x-api-key"), raw("levy_abc")), value(k("accept"), raw("a")),
		value(k("accept"), raw("b")), value(k("x-bin"), raw("\xff\x00"))), field(4, []byte("/v1")))
	cases["raw and value"] = http(headerMap(value(k("a"), v("value"), raw("raw")), value(k("b"), v("value only"))))
	cases["header map twice"] = http(headerMap(value(k("a"), raw("1"))), headerMap(value(k("a"), raw("2"))))
	cases["both lists"] = http(headerMap(value(k("a"), raw("from map"))), field(3, cat(k("a"), v("from headers"))))
	cases["bad utf8 raw key"] = http(headerMap(value(k("\xff"), raw("x"))))
	cases["bad utf8 path"] = http(field(4, []byte{0xc0}))
	cases["wrong type header map"] = http(varint(13, 1))
	cases["wrong type in header map"] = http(headerMap(varint(1, 1)))
	cases["cut short in header map"] = http(field(13, []byte{0x0a, 0x05, 0x0a}))
	return cases
}

// names are every header name r or want holds.
func names(r, want *Request) []string {
	var all []string
	for _, h := range [][]string{r.headers, r.raw, want.headers, want.raw} {
		for i := 0; i < len(h); i += 2 {
			all = append(all, h[i])
		}
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// skeleton is a CheckRequest of only the fields Decode reads, under the
// same numbers and types (proto3: strings are checked to be UTF-8): the
// message Decode reads, by protobuf. Everything else is unknown to it, and
// skipped as Decode skips it.
var skeleton = func() protoreflect.MessageDescriptor {
	str, byt, msg := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), descriptorpb.FieldDescriptorProto_TYPE_BYTES.Enum(),
		descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	one, many := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	field := func(name string, num int32, typ *descriptorpb.FieldDescriptorProto_Type, label *descriptorpb.FieldDescriptorProto_Label, of string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(num), Type: typ, Label: label, JsonName: proto.String(name)}
		if of != "" {
			f.TypeName = proto.String(".s." + of)
		}
		return f
	}
	message := func(name string, fields ...*descriptorpb.FieldDescriptorProto) *descriptorpb.DescriptorProto {
		return &descriptorpb.DescriptorProto{Name: proto.String(name), Field: fields}
	}
	entry := message("HeadersEntry", field("key", 1, str, one, ""), field("value", 2, str, one, ""))
	entry.Options = &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)}
	http := message("Http", field("headers", fieldHeaders, msg, many, "Http.HeadersEntry"), field("path", fieldPath, str, one, ""),
		field("header_map", fieldHeaderMap, msg, one, "HeaderMap"))
	http.NestedType = []*descriptorpb.DescriptorProto{entry}
	file := &descriptorpb.FileDescriptorProto{Name: proto.String("skeleton.proto"), Package: proto.String("s"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			message("CheckRequest", field("attributes", fieldAttributes, msg, one, "Attributes")),
			message("Attributes", field("request", fieldRequest, msg, one, "Req")),
			message("Req", field("http", fieldHTTP, msg, one, "Http")),
			http,
			message("HeaderMap", field("headers", fieldMapHeaders, msg, many, "HeaderValue")),
			message("HeaderValue", field("key", fieldKey, str, one, ""), field("value", fieldValue, str, one, ""),
				field("raw_value", fieldRawValue, byt, one, "")),
		}}
	fd, err := protodesc.NewFile(file, nil)
	if err != nil {
		panic(err)
	}
	return fd.Messages().ByName("CheckRequest")
}()

// skeletonRequest is what protobuf reads of b as a skeleton, as a Request.
func skeletonRequest(b []byte) (*Request, error) {
	m := dynamicpb.NewMessage(skeleton)
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, err
	}
	get := func(m protoreflect.Message, name protoreflect.Name) protoreflect.Value {
		return m.Get(m.Descriptor().Fields().ByName(name))
	}
	http := get(get(get(m, "attributes").Message(), "request").Message(), "http").Message()
	r := &Request{Path: get(http, "path").String()}
	get(http, "headers").Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		r.headers = append(r.headers, k.String(), v.String())
		return true
	})
	values := get(get(http, "header_map").Message(), "headers").List()
	for i := range values.Len() {
		h := values.Get(i).Message()
		r.raw = append(r.raw, get(h, "key").String(), headerValue(get(h, "value").String(), get(h, "raw_value").Bytes()))
	}
	return r, nil
}

// sameAsProtobuf checks that Decode reads b as protobuf reads the
// skeleton, or refuses it when protobuf does; and, where protobuf reads
// the whole CheckRequest, as RequestOf reads that.
func sameAsProtobuf(t *testing.T, name string, b []byte) {
	t.Helper()
	got := &Request{Path: "stale", headers: []string{"stale", "x"}, raw: []string{"stale", "y"}}
	read := Decode(mem.BufferSlice{mem.SliceBuffer(b)}, got)
	want, err := skeletonRequest(b)
	if read != (err == nil) {
		t.Fatalf("%s: read %v, protobuf's error %v", name, read, err)
	}
	if err != nil {
		if protobufCodec(got, b) == nil { // what levy's codec calls after Decode declines
			t.Fatalf("%s: protobuf read a Request it cannot read as a skeleton (%v)", name, err)
		}
		return
	}
	same(t, name, got, want)
	req := &authv3.CheckRequest{}
	if proto.Unmarshal(b, req) == nil {
		same(t, name+" (whole)", got, RequestOf(req))
	}
}

// same checks that got and want have one path and the same headers.
func same(t *testing.T, name string, got, want *Request) {
	t.Helper()
	if got.Path != want.Path {
		t.Fatalf("%s: path %q, protobuf %q", name, got.Path, want.Path)
	}
	for _, n := range names(got, want) {
		if g, w := got.Header(n), want.Header(n); g != w {
			t.Fatalf("%s: header %q = %q, protobuf %q", name, n, g, w)
		}
	}
}

func TestDecodeReadsHeadersAsProtobufDoes(t *testing.T) {
	for name, b := range requestCases(t) {
		sameAsProtobuf(t, name, b)
	}
}

func FuzzDecodeCheckRequest(f *testing.F) {
	for _, b := range requestCases(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { sameAsProtobuf(t, "fuzz", b) })
}

// TestDecodeReadsWhatEnvoySends: the walk, not protobuf, reads what Envoy
// sends, with either header list, and every header the way a decision
// looks it up.
func TestDecodeReadsWhatEnvoySends(t *testing.T) {
	cases := requestCases(t)
	for _, name := range []string{"envoy", "every field", "raw headers", "metadata", "tls", "named port", "unknown field"} {
		if !readRequest(cases[name], &Request{}) {
			t.Errorf("%s: left to protobuf", name)
		}
	}
	r := &Request{}
	Decode(mem.BufferSlice{mem.SliceBuffer(cases["raw headers"])}, r)
	for name, want := range map[string]string{"x-api-key": "levy_abc", "accept": "a,b", "x-bin": "\xff\x00", "nope": ""} {
		if got := r.Header(name); got != want {
			t.Errorf("raw headers: %s = %q, want %q", name, got, want)
		}
	}
	if r.Path != "/v1" {
		t.Errorf("raw headers: path %q", r.Path)
	}
	Decode(mem.BufferSlice{mem.SliceBuffer(cases["envoy"])}, r)
	if got := r.Header("x-api-key"); got != "levy_abc" {
		t.Errorf("envoy: x-api-key = %q after a message with header_map, want levy_abc", got)
	}
	if got := r.Header("accept"); got != "a,b" { // Envoy joined them
		t.Errorf("envoy: accept = %q", got)
	}
	if Decode(mem.BufferSlice{mem.SliceBuffer(cases["cut short"])}, r) {
		t.Error("a cut-short message read without an error")
	}
}

// TestHeaderJoinsManyLinesOnce: thousands of lines of one header (a
// client calling levy directly, under the 512 KiB message bound) are
// joined in one pass; the joined value is every line, in order.
func TestHeaderJoinsManyLinesOnce(t *testing.T) {
	r := &Request{}
	var lines []string
	for i := range 30000 {
		lines = append(lines, string(rune('a'+i%26)))
		r.raw = append(r.raw, "x-api-key", lines[i])
	}
	r.raw = append(r.raw, "other", "o")
	var joined string
	allocs := testing.AllocsPerRun(3, func() { joined = r.Header("x-api-key") })
	if allocs > 1 {
		t.Errorf("%v allocations to join 30,000 lines, want 1", allocs)
	}
	if joined != strings.Join(lines, ",") {
		t.Errorf("joined %d bytes: %.20q...", len(joined), joined)
	}
	r.raw = []string{"k", "", "k", "b", "k", ""}
	if got := r.Header("k"); got != ",b," {
		t.Errorf("empty lines joined as %q, want \",b,\"", got)
	}
}

// TestRequestIsReadByProtobufToo: a server without levy's codec reads a
// Request with protobuf, which calls its Unmarshal.
func TestRequestIsReadByProtobufToo(t *testing.T) {
	cases := requestCases(t)
	r := &Request{}
	if err := protobufCodec(r, cases["raw headers"]); err != nil || r.Header("x-api-key") != "levy_abc" || r.Path != "/v1" {
		t.Fatalf("gRPC's proto codec: %v, key %q, path %q", err, r.Header("x-api-key"), r.Path)
	}
	if err := protobufCodec(r, cases["cut short"]); err == nil {
		t.Fatal("gRPC's proto codec read a cut-short message")
	}
}

// protobufCodec reads b into r with gRPC's proto codec.
func protobufCodec(r *Request, b []byte) error {
	return encoding.GetCodecV2(grpcproto.Name).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, r)
}

// TestDecodeKeepsNoPartOfTheBuffer: gRPC reads the next message into the
// buffer Decode read from, so what a Request holds is still that request
// afterwards.
func TestDecodeKeepsNoPartOfTheBuffer(t *testing.T) {
	cases := requestCases(t)
	first, next := cases["raw headers"], cases["envoy"]
	buf := append([]byte(nil), first...)
	got := &Request{}
	Decode(mem.BufferSlice{mem.SliceBuffer(buf)}, got)
	clear(buf)
	Decode(mem.BufferSlice{mem.SliceBuffer(buf[:copy(buf, next)])}, &Request{})
	if got.Header("x-api-key") != "levy_abc" || got.Path != "/v1" {
		t.Fatalf("after the next message, the first reads key %q, path %q", got.Header("x-api-key"), got.Path)
	}
}

// TestDecodeFieldNumbers: the numbers the walk follows are go-control-plane's.
func TestDecodeFieldNumbers(t *testing.T) {
	for _, c := range []struct {
		m    proto.Message
		num  protoreflect.FieldNumber
		name protoreflect.Name
	}{
		{&authv3.CheckRequest{}, fieldAttributes, "attributes"},
		{&authv3.AttributeContext{}, fieldRequest, "request"},
		{&authv3.AttributeContext_Request{}, fieldHTTP, "http"},
		{&authv3.AttributeContext_HttpRequest{}, fieldHeaders, "headers"},
		{&authv3.AttributeContext_HttpRequest{}, fieldPath, "path"},
		{&authv3.AttributeContext_HttpRequest{}, fieldHeaderMap, "header_map"},
		{&corev3.HeaderMap{}, fieldMapHeaders, "headers"},
		{&corev3.HeaderValue{}, fieldKey, "key"},
		{&corev3.HeaderValue{}, fieldValue, "value"},
		{&corev3.HeaderValue{}, fieldRawValue, "raw_value"},
	} {
		d := c.m.ProtoReflect().Descriptor()
		if f := d.Fields().ByNumber(c.num); f == nil || f.Name() != c.name {
			t.Errorf("%s field %d is %v, want %s", d.FullName(), c.num, f, c.name)
		}
	}
}

// BenchmarkDecodeCheck reads the CheckRequest Envoy sends: into a Request
// (what levy serve does), and into an authv3.CheckRequest by protobuf.
func BenchmarkDecodeCheck(b *testing.B) {
	msg := checkCases(b)["envoy"]
	b.Run("Request", func(b *testing.B) {
		data := mem.BufferSlice{mem.SliceBuffer(msg)}
		r := &Request{}
		b.ReportAllocs()
		for b.Loop() {
			if !Decode(data, r) || !strings.HasPrefix(r.Header("x-api-key"), "levy_") {
				b.Fatal("not read")
			}
		}
	})
	b.Run("Protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(msg, &authv3.CheckRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
