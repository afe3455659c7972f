package authz

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/wire/wiretest"
)

// checkCases are CheckRequests on the wire: what Envoy sends, what
// protobuf allows that Envoy does not send (repeated fields, which merge;
// duplicate map keys, the last kept), what the reader leaves to protobuf
// (metadata, TLS, named ports, unknown fields) and what protobuf refuses
// (bad UTF-8, cut short).
func checkCases(t testing.TB) map[string][]byte {
	t.Helper()
	marshal := func(m proto.Message) []byte { return wiretest.Marshal(t, m) }
	sdk := envoyclient.BuildCheckRequest(&envoyclient.Request{
		Method: "GET", Path: "/v1/search?q=x", Authority: "api.example.com", Scheme: "https", Protocol: "HTTP/2",
		SourceAddress: "203.0.113.9:51234", DestinationAddress: "10.0.0.7:8443",
		StartTime: time.Date(2026, 11, 27, 10, 0, 0, 123, time.UTC),
		Headers: []envoyclient.Header{
			{Name: "x-api-key", Value: "levy_abc"}, {Name: "user-agent", Value: "sdk/1.2"},
			{Name: "accept", Value: "a"}, {Name: "accept", Value: "b"}, {Name: "x-envoy-downstream-service-cluster", Value: "web"},
		},
	}, 42)
	if sdk == nil {
		t.Fatal("envoy.BuildCheckRequest refused the request")
	}
	full := proto.Clone(sdk).(*authv3.CheckRequest)
	full.Attributes.ContextExtensions = map[string]string{"route": "search", "": "empty key"}
	full.Attributes.Source.Labels = map[string]string{"app": "web"}
	full.Attributes.Source.Principal, full.Attributes.Source.Certificate = "spiffe://x/ns/a", "-----BEGIN"
	full.Attributes.Destination.Labels = map[string]string{"v": "2"}
	sock := full.Attributes.Source.Address.GetSocketAddress()
	sock.Protocol, sock.ResolverName, sock.Ipv4Compat, sock.NetworkNamespaceFilepath = corev3.SocketAddress_UDP, "r", true, "/ns"
	h := full.Attributes.Request.Http
	h.Query, h.Fragment, h.Size, h.Body, h.RawBody = "q=x", "frag", 1<<40, "{}", []byte{0, 0xff}
	full.Attributes.Request.Time = &timestamppb.Timestamp{Seconds: -5, Nanos: -1}

	withMeta := proto.Clone(sdk).(*authv3.CheckRequest)
	meta, _ := structpb.NewStruct(map[string]any{"consumer": "acme"})
	withMeta.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"levy": meta}}
	named := proto.Clone(sdk).(*authv3.CheckRequest)
	named.Attributes.Destination.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_NamedPort{NamedPort: "https"}
	tls := proto.Clone(sdk).(*authv3.CheckRequest)
	tls.Attributes.TlsSession = &authv3.AttributeContext_TLSSession{Sni: "api.example.com"}
	headerMap := proto.Clone(sdk).(*authv3.CheckRequest)
	headerMap.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "k", Value: "v"}}}

	field, varint, cat := wiretest.Bytes, wiretest.Varint, wiretest.Cat
	header := func(k, v string) []byte { return field(3, cat(field(1, []byte(k)), field(2, []byte(v)))) }
	http := func(fields ...[]byte) []byte { return field(1, field(4, field(2, cat(fields...)))) }
	b := marshal(sdk)
	return map[string][]byte{
		"envoy":             b,
		"every field":       marshal(full),
		"empty":             {},
		"empty attributes":  field(1, nil),
		"attributes twice":  cat(http(header("a", "1"), field(4, []byte("/p"))), http(header("b", "2"), varint(9, 7))),
		"duplicate header":  http(header("k", "first"), header("k", "last")),
		"entry without key": http(field(3, field(2, []byte("v")))),
		"source merged":     field(1, cat(field(1, field(2, []byte("svc"))), field(1, field(4, []byte("p"))))),
		"port twice":        field(1, field(1, field(1, field(1, cat(varint(3, 80), varint(3, 443)))))),
		"metadata":          marshal(withMeta),
		"named port":        marshal(named),
		"tls":               marshal(tls),
		"header map":        marshal(headerMap),
		"unknown field":     cat(b, varint(7, 1)),
		"unknown in entry":  http(field(3, cat(field(1, []byte("k")), varint(3, 1)))),
		"wrong type":        http(varint(4, 1)),
		"bad utf8 header":   http(header("k", "\xff")),
		"bad utf8 body":     http(field(11, []byte{0xc0})),
		"raw body":          http(field(12, []byte{0xc0})),
		"cut short":         b[:len(b)-4],
	}
}

// randomCheckResponse is an answer with each field Encode writes set or not
// at random, at their encodings' edges.
func randomCheckResponse(r *rand.Rand) *authv3.CheckResponse {
	str := func() string { return []string{"", "x-consumer-id", "acme", string(make([]byte, 200))}[r.IntN(4)] }
	options := func() []*corev3.HeaderValueOption {
		var hs []*corev3.HeaderValueOption
		for range r.IntN(4) {
			h := &corev3.HeaderValueOption{AppendAction: corev3.HeaderValueOption_HeaderAppendAction(r.IntN(4)), KeepEmptyValue: r.IntN(2) == 0}
			if r.IntN(4) > 0 {
				h.Header = &corev3.HeaderValue{Key: str(), Value: str()}
			}
			if r.IntN(3) == 0 {
				h.Append = wrapperspb.Bool(r.IntN(2) == 0)
			}
			hs = append(hs, h)
		}
		return hs
	}
	strs := func() []string {
		var ss []string
		for range r.IntN(3) {
			ss = append(ss, str())
		}
		return ss
	}
	resp := &authv3.CheckResponse{}
	if r.IntN(4) > 0 {
		resp.Status = &rpcstatus.Status{Code: []int32{0, 7, 16, -1}[r.IntN(4)], Message: str()}
	}
	switch r.IntN(3) {
	case 0:
		resp.HttpResponse = &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: options(), HeadersToRemove: strs(), ResponseHeadersToAdd: options(), QueryParametersToRemove: strs()}}
	case 1:
		d := &authv3.DeniedHttpResponse{Headers: options(), Body: str()}
		if r.IntN(3) > 0 {
			d.Status = &typev3.HttpStatus{Code: typev3.StatusCode([]int{0, 429, 403, 503}[r.IntN(4)])}
		}
		resp.HttpResponse = &authv3.CheckResponse_DeniedResponse{DeniedResponse: d}
	}
	switch r.IntN(4) {
	case 0:
	case 1: // an allow's: who, and the ledger window it was counted in
		resp.DynamicMetadata = allowMetadata(windows[r.IntN(len(windows))], str())
	default:
		fields := map[string]*structpb.Value{}
		for range r.IntN(4) {
			fields[str()] = []*structpb.Value{structpb.NewStringValue(str()), structpb.NewNumberValue(r.Float64() * 1e6),
				structpb.NewBoolValue(r.IntN(2) == 0), structpb.NewNullValue(), {}}[r.IntN(5)]
		}
		resp.DynamicMetadata = &structpb.Struct{Fields: fields}
	}
	return resp
}

// windows are ledger window starts at the edges of a number's encoding:
// none, before 1970, now, past 2^31 and 2^32 seconds, the largest a float64
// holds exactly.
var windows = []int64{0, -60, 1_773_500_940, 1<<31 + 60, 1<<32 + 60, 1<<53 - 1}

// allowMetadata is the shape of an allow's dynamic metadata.
func allowMetadata(window int64, ledger string) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataConsumer: structpb.NewStringValue("acme"),
		MetadataPlan:     structpb.NewStringValue("pro"),
		MetadataModel:    structpb.NewStringValue("tiered"),
		MetadataKeyID:    structpb.NewStringValue("key_1"),
		MetadataWindow:   structpb.NewNumberValue(float64(window)),
		MetadataLedger:   structpb.NewStringValue(ledger),
	}}
}

// encodesAsProtobuf checks that what Encode writes for x reads back as x,
// and is byte for byte protobuf's when no map has two entries to order.
func encodesAsProtobuf(t *testing.T, x *authv3.CheckResponse) {
	t.Helper()
	got, ok := Encode(x)
	if !ok {
		t.Fatalf("Encode declined %v", x)
	}
	back := &authv3.CheckResponse{}
	if err := proto.Unmarshal(got, back); err != nil || !proto.Equal(back, x) {
		t.Fatalf("Encode wrote %x, read back as %v (%v), for %v", got, back, err, x)
	}
	if x.DynamicMetadata == nil || len(x.DynamicMetadata.Fields) < 2 {
		if want := wiretest.Marshal(t, x); !bytes.Equal(got, want) {
			t.Fatalf("Encode wrote %x\nprotobuf     %x\nfor %v", got, want, x)
		}
	}
}

// FuzzEncodeCheckResponse: an answer of random fields (from seed) with an
// allow's metadata of any window and ledger key is written as protobuf
// would write it.
func FuzzEncodeCheckResponse(f *testing.F) {
	for i, w := range windows {
		f.Add(uint64(i), w, "{c:acme}:ledger:api_calls")
	}
	f.Add(uint64(7), int64(-1), "")
	f.Fuzz(func(t *testing.T, seed uint64, window int64, ledger string) {
		if !utf8.ValidString(ledger) {
			t.Skip("protobuf refuses to write a string that is not UTF-8; levy's keys are")
		}
		x := randomCheckResponse(rand.New(rand.NewPCG(seed, seed)))
		x.DynamicMetadata = allowMetadata(window, ledger)
		encodesAsProtobuf(t, x)
	})
}

// TestEncodeWritesCheckResponsesAsProtobufDoes: what Encode writes reads
// back as the answer it was, and is byte for byte protobuf's when no map
// has two entries to order; answers with fields it leaves to protobuf are
// left to it.
func TestEncodeWritesCheckResponsesAsProtobufDoes(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 3000 {
		encodesAsProtobuf(t, randomCheckResponse(r))
	}
	detail, _ := anypb.New(&structpb.Struct{})
	list, _ := structpb.NewList([]any{"a"})
	for name, x := range map[string]*authv3.CheckResponse{
		"details":          {Status: &rpcstatus.Status{Details: []*anypb.Any{detail}}},
		"error response":   {HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{}}},
		"ok metadata":      {HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{DynamicMetadata: &structpb.Struct{}}}},
		"query parameters": {HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{QueryParametersToSet: []*corev3.QueryParameter{{Key: "k"}}}}},
		"raw value":        {HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{RawValue: []byte("v")}}}}}},
		"nested struct":    {DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"s": structpb.NewStructValue(&structpb.Struct{})}}},
		"list":             {DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"l": structpb.NewListValue(list)}}},
	} {
		if _, ok := Encode(x); ok {
			t.Errorf("%s: Encode wrote it itself", name)
		}
	}
	if _, ok := Encode(&authv3.CheckRequest{}); ok {
		t.Error("Encode wrote a CheckRequest")
	}
}

func TestEncodeKnowsEveryField(t *testing.T) {
	wiretest.KnowsFields(t, &authv3.CheckResponse{}, 1, 2, 3, 4, 5)
	wiretest.KnowsFields(t, &authv3.OkHttpResponse{}, 2, 3, 5, 6, 7, 8)
	wiretest.KnowsFields(t, &authv3.DeniedHttpResponse{}, 1, 2, 3)
	wiretest.KnowsFields(t, &corev3.HeaderValueOption{}, 1, 2, 3, 4)
	wiretest.KnowsFields(t, &corev3.HeaderValue{}, 1, 2, 3)
	wiretest.KnowsFields(t, &rpcstatus.Status{}, 1, 2, 3)
	wiretest.KnowsFields(t, &typev3.HttpStatus{}, 1)
	wiretest.KnowsFields(t, &structpb.Struct{}, 1)
	wiretest.KnowsFields(t, &structpb.Value{}, 1, 2, 3, 4, 5, 6)
	wiretest.KnowsFields(t, &wrapperspb.BoolValue{}, 1)
}

// allowCase is a named answer for a benchmark.
type allowCase struct {
	name string
	x    *authv3.CheckResponse
}

// allowResponses are allows as levy answers them, their metadata with and
// without the ledger window.
func allowResponses() []allowCase {
	who := allowMetadata(1_773_500_940, "{c:acme}:ledger:api_calls")
	delete(who.Fields, MetadataWindow)
	delete(who.Fields, MetadataLedger)
	var out []allowCase
	for _, c := range []struct {
		name string
		md   *structpb.Struct
	}{
		{"Who", who},
		{"WhoAndWindow", allowMetadata(1_773_500_940, "{c:acme}:ledger:api_calls")},
	} {
		set := func(k, v string) *corev3.HeaderValueOption {
			return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}}
		}
		x := &authv3.CheckResponse{
			Status: &rpcstatus.Status{},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers:         []*corev3.HeaderValueOption{set("x-consumer-id", "acme"), set("x-consumer-plan", "pro"), set("x-credential-id", "key_1")},
				HeadersToRemove: []string{"x-api-key"},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{set("x-ratelimit-limit", "100"),
					set("x-ratelimit-remaining", "99"), set("x-ratelimit-reset", "1")},
			}},
			DynamicMetadata: c.md,
		}
		out = append(out, allowCase{c.name, x})
	}
	return out
}

// BenchmarkEncodeAllow writes an allow as levy answers it, its metadata
// with and without the ledger window, by Encode and by protobuf
// (codec_vt_test.go adds go-control-plane's MarshalVTStrict).
func BenchmarkEncodeAllow(b *testing.B) {
	for _, bb := range allowResponses() {
		b.Run("Encode/"+bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Encode(bb.x)
			}
		})
		b.Run("Protobuf/"+bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				proto.Marshal(bb.x)
			}
		})
	}
}
