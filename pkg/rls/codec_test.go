package rls

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levyhq/levy/pkg/wire/wiretest"
)

// requestCases are RateLimitRequests on the wire: what Envoy sends, and
// what protobuf allows that Envoy does not send (repeated singular fields,
// which merge; unknown fields; fields the codec leaves to protobuf), and
// what it refuses (bad UTF-8, cut short).
func requestCases(t testing.TB) map[string][]byte {
	t.Helper()
	marshal := func(m proto.Message) []byte { return wiretest.Marshal(t, m) }
	entry := func(k, v string) *rlv3.RateLimitDescriptor_Entry {
		return &rlv3.RateLimitDescriptor_Entry{Key: k, Value: v}
	}
	envoyLike := marshal(&rlsv3.RateLimitRequest{
		Domain: "api",
		Descriptors: []*rlv3.RateLimitDescriptor{
			{Entries: []*rlv3.RateLimitDescriptor_Entry{entry("remote_address", "10.0.0.1")}},
			{Entries: []*rlv3.RateLimitDescriptor_Entry{entry("consumer", "acme"), entry("route", "items")},
				Limit:      &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 7, Unit: typev3.RateLimitUnit_MINUTE},
				HitsAddend: wrapperspb.UInt64(3), IsNegativeHits: true},
			{Entries: []*rlv3.RateLimitDescriptor_Entry{entry("", ""), entry("k", "")}, HitsAddend: wrapperspb.UInt64(0)},
			{},
		},
		HitsAddend: 5,
	})
	field, varint, cat := wiretest.Bytes, wiretest.Varint, wiretest.Cat
	desc := field(2, cat(field(1, cat(field(1, []byte("k")), field(2, []byte("v"))))))
	return map[string][]byte{
		"envoy":          envoyLike,
		"empty":          {},
		"domain only":    field(1, []byte("api")),
		"domain twice":   cat(field(1, []byte("first")), desc, field(1, []byte("last"))),
		"limit twice":    cat(field(1, []byte("api")), field(2, cat(field(2, varint(1, 9)), field(2, varint(2, 3))))),
		"hits twice":     cat(field(2, cat(field(3, varint(1, 4)), field(3, nil)))),
		"entry merged":   field(2, cat(field(1, cat(field(1, []byte("a")), field(1, []byte("b")))))),
		"hits over u32":  cat(desc, varint(3, 1<<40)),
		"huge unit":      field(2, field(2, varint(2, math.MaxUint64))),
		"unknown field":  cat(desc, varint(9, 1)),
		"unknown nested": field(2, cat(field(1, cat(field(1, []byte("k")), varint(7, 1))))),
		"multiplier":     field(2, field(2, cat(varint(1, 2), field(3, varint(1, 5))))),
		"wrong type":     cat(varint(1, 7), desc),
		"bad utf8":       field(1, []byte{0xff, 0xfe}),
		"bad utf8 entry": field(2, field(1, field(2, []byte{'a', 0xc0}))),
		"cut short":      envoyLike[:len(envoyLike)-3],
		"bad length":     {0x12, 0x7f, 0x0a},
		"group":          {0x0b, 0x0c},
	}
}

// sameAsProtobuf checks that the codec reads b into what proto.Unmarshal
// reads, or fails when it does.
func sameAsProtobuf(t *testing.T, name string, b []byte) {
	t.Helper()
	want := &rlsv3.RateLimitRequest{}
	wantErr := proto.Unmarshal(b, want)
	got := &rlsv3.RateLimitRequest{Domain: "stale", HitsAddend: 9} // reset first, as protobuf does
	gotErr := Codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got)
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("%s: codec error %v, protobuf %v", name, gotErr, wantErr)
	}
	if wantErr == nil && !proto.Equal(got, want) {
		t.Fatalf("%s: codec read\n%v\nprotobuf\n%v", name, got, want)
	}
}

func TestCodecReadsRequestsAsProtobufDoes(t *testing.T) {
	for name, b := range requestCases(t) {
		sameAsProtobuf(t, name, b)
	}
	// Split across buffers, as gRPC hands over a large message.
	b := requestCases(t)["envoy"]
	got, want := &rlsv3.RateLimitRequest{}, &rlsv3.RateLimitRequest{}
	if err := Codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:10]), mem.SliceBuffer(b[10:])}, got); err != nil {
		t.Fatal(err)
	}
	if proto.Unmarshal(b, want) != nil || !proto.Equal(got, want) {
		t.Fatalf("split: %v, want %v", got, want)
	}
}

// TestCodecReadsWhatEnvoySendsItself checks that the fast path, not the
// protobuf fallback, reads Envoy's requests, and that the fallback takes
// what it does not read exactly.
func TestCodecReadsWhatEnvoySendsItself(t *testing.T) {
	cases := requestCases(t)
	for name, fast := range map[string]bool{"envoy": true, "limit twice": true, "domain twice": true, "empty": true,
		"unknown field": false, "multiplier": false, "bad utf8": false, "cut short": false} {
		if got := decodeRequest(cases[name], &rlsv3.RateLimitRequest{}); got != fast {
			t.Errorf("%s: read by the fast path %v, want %v", name, got, fast)
		}
	}
	// The fast path allocates five times whatever the request's size (one
	// copy of its strings, descriptors, entries and two slices of
	// pointers), and once for each override and hits_addend: here 1 and 2.
	b, req := cases["envoy"], &rlsv3.RateLimitRequest{}
	allocs := testing.AllocsPerRun(100, func() { decodeRequest(b, req) })
	if allocs != 8 {
		t.Errorf("%v allocations to read a request of 4 descriptors and 5 entries, want 8", allocs)
	}
}

func FuzzCodecRequest(f *testing.F) {
	for _, b := range requestCases(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { sameAsProtobuf(t, "fuzz", b) })
}

// randomResponse is a response with each field the codec writes set or not
// at random, values at their encodings' edges included.
func randomResponse(r *rand.Rand) *rlsv3.RateLimitResponse {
	pick := func(vs ...uint64) uint64 { return vs[r.IntN(len(vs))] }
	str := func() string { return []string{"", "a", "per-ip", string(make([]byte, 200))}[r.IntN(4)] }
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_Code(r.IntN(3))}
	for range r.IntN(5) {
		st := &rlsv3.RateLimitResponse_DescriptorStatus{
			Code:           rlsv3.RateLimitResponse_Code(r.IntN(3)),
			LimitRemaining: uint32(pick(0, 1, 127, 128, math.MaxUint32)),
		}
		if r.IntN(3) > 0 {
			st.CurrentLimit = &rlsv3.RateLimitResponse_RateLimit{Name: str(),
				RequestsPerUnit: uint32(pick(0, 1, 4_000_000_000)), Unit: rlsv3.RateLimitResponse_RateLimit_Unit(r.IntN(7))}
		}
		if r.IntN(3) > 0 {
			st.DurationUntilReset = &durationpb.Duration{Seconds: int64(pick(0, 1, 86400, math.MaxInt64)), Nanos: int32(pick(0, 1, 999_999_999)) * int32(1-2*r.IntN(2))}
		}
		resp.Statuses = append(resp.Statuses, st)
	}
	for range r.IntN(3) {
		resp.ResponseHeadersToAdd = append(resp.ResponseHeadersToAdd, &corev3.HeaderValue{Key: str(), Value: str()})
	}
	for range r.IntN(2) {
		resp.RequestHeadersToAdd = append(resp.RequestHeadersToAdd, &corev3.HeaderValue{Key: str(), Value: str()})
	}
	if r.IntN(2) == 0 {
		resp.RawBody = []byte(str())
	}
	return resp
}

// TestCodecWritesResponsesAsProtobufDoes compares the codec's bytes with
// protobuf's for random responses, and for responses with the fields it
// leaves to protobuf.
func TestCodecWritesResponsesAsProtobufDoes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var responses []*rlsv3.RateLimitResponse
	for range 2000 {
		responses = append(responses, randomResponse(r))
	}
	meta, _ := structpb.NewStruct(map[string]any{"k": "v"})
	withOther := []func(*rlsv3.RateLimitResponse){
		func(x *rlsv3.RateLimitResponse) { x.DynamicMetadata = meta },
		func(x *rlsv3.RateLimitResponse) { x.Quota = &rlsv3.RateLimitResponse_Quota{Requests: 3} },
		func(x *rlsv3.RateLimitResponse) {
			x.Statuses = append(x.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{Quota: &rlsv3.RateLimitResponse_Quota{Requests: 1}})
		},
		func(x *rlsv3.RateLimitResponse) {
			x.Statuses = append(x.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{
				CurrentLimit: &rlsv3.RateLimitResponse_RateLimit{UnitMultiplier: wrapperspb.UInt32(2)}})
		},
		func(x *rlsv3.RateLimitResponse) {
			x.ResponseHeadersToAdd = append(x.ResponseHeadersToAdd, &corev3.HeaderValue{Key: "k", RawValue: []byte("v")})
		},
	}
	for _, with := range withOther {
		x := randomResponse(r)
		with(x)
		if _, ok := responseSize(x); ok {
			t.Fatalf("the codec would write %v itself", x)
		}
		responses = append(responses, x)
	}
	for _, x := range responses {
		want, err := proto.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Codec.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Materialize(), want) {
			t.Fatalf("codec wrote %x\nprotobuf  %x\nfor %v", got.Materialize(), want, x)
		}
	}
}

// TestCodecKnowsEveryField fails when go-control-plane adds a field to a
// message the codec reads or writes: the codec would drop it, so it must
// learn it (or leave the message to protobuf) first.
func TestCodecKnowsEveryField(t *testing.T) {
	wiretest.KnowsFields(t, &rlsv3.RateLimitRequest{}, 1, 2, 3)
	wiretest.KnowsFields(t, &rlv3.RateLimitDescriptor{}, 1, 2, 3, 4)
	wiretest.KnowsFields(t, &rlv3.RateLimitDescriptor_Entry{}, 1, 2)
	wiretest.KnowsFields(t, &rlv3.RateLimitDescriptor_RateLimitOverride{}, 1, 2, 3)
	wiretest.KnowsFields(t, &rlsv3.RateLimitResponse{}, 1, 2, 3, 4, 5, 6, 7)
	wiretest.KnowsFields(t, &rlsv3.RateLimitResponse_DescriptorStatus{}, 1, 2, 3, 4, 5)
	wiretest.KnowsFields(t, &rlsv3.RateLimitResponse_RateLimit{}, 1, 2, 3, 4)
	wiretest.KnowsFields(t, &corev3.HeaderValue{}, 1, 2, 3)
	wiretest.KnowsFields(t, &durationpb.Duration{}, 1, 2)
	wiretest.KnowsFields(t, &wrapperspb.UInt64Value{}, 1)
}

// TestCodecKeepsNoPartOfTheBuffer: gRPC reads the next message into the
// buffer Decode read from, so what Decode made of a request (the domain,
// descriptor entries that become state keys and directory look-ups) is
// still that request afterwards.
func TestCodecKeepsNoPartOfTheBuffer(t *testing.T) {
	cases := requestCases(t)
	first, next := cases["envoy"], cases["domain twice"]
	want := &rlsv3.RateLimitRequest{}
	if err := proto.Unmarshal(first, want); err != nil {
		t.Fatal(err)
	}
	buf := append([]byte(nil), first...)
	got := &rlsv3.RateLimitRequest{}
	if !Decode(mem.BufferSlice{mem.SliceBuffer(buf)}, got) {
		t.Fatal("Decode declined")
	}
	clear(buf)
	if !Decode(mem.BufferSlice{mem.SliceBuffer(buf[:copy(buf, next)])}, &rlsv3.RateLimitRequest{}) {
		t.Fatal("Decode declined the next")
	}
	if !proto.Equal(got, want) {
		t.Fatalf("after the next message, the first reads\n%v\nwant\n%v", got, want)
	}
}

// FuzzCodecResponse: a response of random fields (from seed) is written by
// the codec as protobuf writes it.
func FuzzCodecResponse(f *testing.F) {
	for seed := range uint64(8) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, seed uint64) {
		x := randomResponse(rand.New(rand.NewPCG(seed, seed)))
		want, err := proto.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := Encode(x)
		if !ok {
			t.Fatalf("Encode declined %v", x)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("Encode wrote %x\nprotobuf   %x\nfor %v", got, want, x)
		}
	})
}

// answer is a response as levy answers three descriptors, one over its
// limit, with the x-ratelimit headers.
func answer() *rlsv3.RateLimitResponse {
	status := func(code rlsv3.RateLimitResponse_Code, remaining uint32) *rlsv3.RateLimitResponse_DescriptorStatus {
		return &rlsv3.RateLimitResponse_DescriptorStatus{Code: code, LimitRemaining: remaining,
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{Name: "per-consumer", RequestsPerUnit: 100, Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE},
			DurationUntilReset: &durationpb.Duration{Seconds: 42}}
	}
	return &rlsv3.RateLimitResponse{
		OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT,
		Statuses:    []*rlsv3.RateLimitResponse_DescriptorStatus{status(rlsv3.RateLimitResponse_OK, 99), status(rlsv3.RateLimitResponse_OVER_LIMIT, 0), status(rlsv3.RateLimitResponse_OK, 7)},
		ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "x-ratelimit-limit", Value: "100, 100;w=60"},
			{Key: "x-ratelimit-remaining", Value: "0"}, {Key: "x-ratelimit-reset", Value: "42"}},
	}
}

// BenchmarkEncodeResponse writes answer by Encode and by protobuf
// (codec_vt_test.go adds go-control-plane's MarshalVTStrict).
func BenchmarkEncodeResponse(b *testing.B) {
	x := answer()
	b.Run("Encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			Encode(x)
		}
	})
	b.Run("Protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			proto.Marshal(x)
		}
	})
}

// BenchmarkDecodeRequest reads the RateLimitRequest Envoy sends, by Decode
// and by protobuf (go-control-plane ships no UnmarshalVT to compare).
func BenchmarkDecodeRequest(b *testing.B) {
	msg := requestCases(b)["envoy"]
	b.Run("Decode", func(b *testing.B) {
		data := mem.BufferSlice{mem.SliceBuffer(msg)}
		b.ReportAllocs()
		for b.Loop() {
			if !Decode(data, &rlsv3.RateLimitRequest{}) {
				b.Fatal("Decode declined")
			}
		}
	})
	b.Run("Protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(msg, &rlsv3.RateLimitRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
