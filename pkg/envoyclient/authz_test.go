package envoyclient

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// authzServer records every CheckRequest and answers with respond.
type authzServer struct {
	authv3.UnimplementedAuthorizationServer
	respond func(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error)

	mu   sync.Mutex
	reqs []*authv3.CheckRequest
}

func (s *authzServer) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	s.mu.Unlock()
	return s.respond(ctx, req)
}

func (s *authzServer) received() []*authv3.CheckRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*authv3.CheckRequest(nil), s.reqs...)
}

func startAuthz(t *testing.T, respond func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)) (*authzServer, *grpc.ClientConn) {
	t.Helper()
	s := &authzServer{respond: respond}
	conn := serve(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, s) })
	return s, conn
}

func answer(resp *authv3.CheckResponse) func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) { return resp, nil }
}

func okResponse(ok *authv3.OkHttpResponse) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	}
}

func hvo(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value}}
}

func hvoAppend(key, value string, appendHeader bool) *corev3.HeaderValueOption {
	o := hvo(key, value)
	o.Append = wrapperspb.Bool(appendHeader)
	return o
}

func hvoAction(key, value string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	o := hvo(key, value)
	o.AppendAction = action
	return o
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestCheckRequestHeadersMapAsEnvoyBuildsIt(t *testing.T) {
	tests := []struct {
		name string
		give Request
		want map[string]string // keys that must be present with these values
		gone []string          // keys that must be absent
	}{
		{
			name: "defaults and pseudo-headers",
			give: Request{RequestID: "rid-1"},
			want: map[string]string{
				":authority": "localhost", ":method": "GET", ":path": "/", ":scheme": "http",
				"x-request-id": "rid-1", "x-forwarded-proto": "http",
			},
		},
		{
			name: "names are lower-cased and the path keeps its query",
			give: Request{
				Method: "POST", Scheme: "https", Authority: "api.example.com", Path: "/v1/items?x=1&y=%20",
				Headers: []Header{{Name: "X-Api-Key", Value: "k1"}, {Name: "Content-Type", Value: "application/json"}},
			},
			want: map[string]string{
				":authority": "api.example.com", ":method": "POST", ":path": "/v1/items?x=1&y=%20", ":scheme": "https",
				"x-api-key": "k1", "content-type": "application/json", "x-forwarded-proto": "https",
			},
			gone: []string{"X-Api-Key"},
		},
		{
			name: "duplicates are joined with a comma",
			give: Request{Headers: []Header{
				{Name: "Accept", Value: "text/html"}, {Name: "x-tag", Value: "a"}, {Name: "accept", Value: "application/json"}, {Name: "X-Tag", Value: "b"},
			}},
			want: map[string]string{"accept": "text/html,application/json", "x-tag": "a,b"},
		},
		{
			name: "invalid UTF-8 becomes !",
			give: Request{Headers: []Header{{Name: "x-name", Value: "caf\xe9"}, {Name: "x-ok", Value: "café"}}},
			want: map[string]string{"x-name": "caf!", "x-ok": "café"},
		},
		{
			name: "client x-request-id and x-forwarded-proto are kept",
			give: Request{Headers: []Header{{Name: "X-Request-Id", Value: "client-rid"}, {Name: "X-Forwarded-Proto", Value: "https"}}},
			want: map[string]string{"x-request-id": "client-rid", "x-forwarded-proto": "https"},
		},
		{
			name: "HTTP/1 Host becomes :authority",
			give: Request{Headers: []Header{{Name: "Host", Value: "h.example.com:8080"}}},
			want: map[string]string{":authority": "h.example.com:8080"},
			gone: []string{"host"},
		},
		{
			name: "client x-envoy-auth-partial-body and hop-by-hop headers are not sent",
			give: Request{Headers: []Header{
				{Name: "x-envoy-auth-partial-body", Value: "false"}, {Name: "Connection", Value: "keep-alive"},
				{Name: "Keep-Alive", Value: "timeout=5"}, {Name: "TE", Value: "gzip"},
			}},
			gone: []string{"x-envoy-auth-partial-body", "connection", "keep-alive", "te"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := BuildCheckRequest(&tt.give, 7).GetAttributes().GetRequest().GetHttp().GetHeaders()
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("headers[%q] = %q, want %q", k, got[k], v)
				}
			}
			for _, k := range tt.gone {
				if _, ok := got[k]; ok {
					t.Errorf("headers[%q] present, want absent", k)
				}
			}
		})
	}
}

func TestCheckRequestGeneratesUUIDv4RequestID(t *testing.T) {
	s, conn := startAuthz(t, answer(okResponse(nil)))
	out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{})).Check(context.Background(), &Request{})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	sent := s.received()[0].GetAttributes().GetRequest().GetHttp().GetHeaders()["x-request-id"]
	if !uuidV4.MatchString(sent) {
		t.Errorf("x-request-id = %q, want a UUID v4", sent)
	}
	if out.RequestID != sent || out.UpstreamHeaders.Get("x-request-id") != sent {
		t.Errorf("RequestID = %q, upstream x-request-id = %q, want both %q", out.RequestID, out.UpstreamHeaders.Get("x-request-id"), sent)
	}
}

func TestCheckRequestAttributes(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 5, time.UTC)
	req := &Request{
		Method: "PUT", Path: "/x", Authority: "a.example", Scheme: "https", Protocol: "HTTP/2",
		SourceAddress: "10.1.2.3:4444", StartTime: start,
		Headers: []Header{{Name: "x-envoy-downstream-service-cluster", Value: "frontend"}},
	}
	s, conn := startAuthz(t, answer(okResponse(nil)))
	out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{})).Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	got := s.received()[0]
	if !proto.Equal(got, out.CheckRequest) {
		t.Errorf("server got a different CheckRequest than Outcome.CheckRequest")
	}
	attrs := got.GetAttributes()
	http := attrs.GetRequest().GetHttp()
	checks := []struct {
		name      string
		got, want any
	}{
		{"source ip", attrs.GetSource().GetAddress().GetSocketAddress().GetAddress(), "10.1.2.3"},
		{"source port", attrs.GetSource().GetAddress().GetSocketAddress().GetPortValue(), uint32(4444)},
		{"source service", attrs.GetSource().GetService(), "frontend"},
		{"destination ip", attrs.GetDestination().GetAddress().GetSocketAddress().GetAddress(), "127.0.0.1"},
		{"id", http.GetId(), strconv.FormatUint(out.StreamID, 10)},
		{"method", http.GetMethod(), "PUT"},
		{"path", http.GetPath(), "/x"},
		{"host", http.GetHost(), "a.example"},
		{"scheme", http.GetScheme(), "https"},
		{"protocol", http.GetProtocol(), "HTTP/2"},
		{"size", http.GetSize(), int64(0)},
		{"time", attrs.GetRequest().GetTime().AsTime(), start},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestCheckEncodeRawHeadersSendsEachLineInHeaderMap: encode_raw_headers
// sends every header line, repeated ones apart and unsanitised, as
// raw_value in header_map, and no headers map.
func TestCheckEncodeRawHeadersSendsEachLineInHeaderMap(t *testing.T) {
	s, conn := startAuthz(t, answer(okResponse(nil)))
	c := NewAuthzClient(conn, patientAuthz(AuthzConfig{EncodeRawHeaders: true, DisallowedHeaders: []string{"x-secret"}}))
	_, err := c.Check(context.Background(), &Request{Path: "/p", Headers: []Header{{Name: "Accept", Value: "a"}, {Name: "accept", Value: "b"},
		{Name: "x-bin", Value: "\xff"}, {Name: "x-secret", Value: "s"}}})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	http := s.received()[0].GetAttributes().GetRequest().GetHttp()
	if http.GetHeaders() != nil {
		t.Errorf("headers map %v, want none", http.GetHeaders())
	}
	var accept []string
	for _, h := range http.GetHeaderMap().GetHeaders() {
		switch h.GetKey() {
		case "accept":
			accept = append(accept, string(h.GetRawValue()))
		case "x-bin":
			if string(h.GetRawValue()) != "\xff" || h.GetValue() != "" {
				t.Errorf("x-bin = %q raw %q, want raw \\xff unsanitised", h.GetValue(), h.GetRawValue())
			}
		case "x-secret":
			t.Error("a disallowed header was sent")
		}
	}
	if len(accept) != 2 || accept[0] != "a" || accept[1] != "b" {
		t.Errorf("accept lines %q, want [a b] apart", accept)
	}
	if http.GetPath() != "/p" {
		t.Errorf("path %q", http.GetPath())
	}
}

func TestCheckAllowedHeadersFiltersPseudoHeadersToo(t *testing.T) {
	tests := []struct {
		name string
		give []string
		want []string
	}{
		{name: "only listed keys", give: []string{"x-api-key"}, want: []string{"x-api-key"}},
		{name: "pseudo-headers only when listed", give: []string{"x-api-key", ":path"}, want: []string{":path", "x-api-key"}},
		{name: "matching is case-sensitive", give: []string{"X-Api-Key", ":method"}, want: []string{":method"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, conn := startAuthz(t, answer(okResponse(nil)))
			c := NewAuthzClient(conn, patientAuthz(AuthzConfig{AllowedHeaders: tt.give}))
			_, err := c.Check(context.Background(), &Request{Headers: []Header{{Name: "X-Api-Key", Value: "k"}, {Name: "accept", Value: "*/*"}}})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			got := s.received()[0].GetAttributes().GetRequest().GetHttp().GetHeaders()
			if len(got) != len(tt.want) {
				t.Errorf("headers = %v, want keys %v", got, tt.want)
			}
			for _, k := range tt.want {
				if _, ok := got[k]; !ok {
					t.Errorf("headers lacks %q: %v", k, got)
				}
			}
		})
	}
}

func TestCheckAppliesOkMutationsAsEnvoy(t *testing.T) {
	base := []Header{
		{Name: "x-consumer-id", Value: "forged"}, {Name: "x-consumer-id", Value: "forged2"},
		{Name: "x-api-key", Value: "secret"}, {Name: "x-tags", Value: "a"},
	}
	tests := []struct {
		name     string
		givePath string
		give     *authv3.OkHttpResponse
		want     map[string][]string // upstream header values
		gone     []string
		wantResp map[string][]string // response header values
	}{
		{
			name: "append unset overwrites every copy",
			give: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{hvo("x-consumer-id", "cus_1"), hvo("X-Plan-Id", "pro")}},
			want: map[string][]string{"x-consumer-id": {"cus_1"}, "x-plan-id": {"pro"}},
		},
		{
			name: "append false overwrites",
			give: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{hvoAppend("x-api-key", "masked", false)}},
			want: map[string][]string{"x-api-key": {"masked"}},
		},
		{
			name: "append true joins onto an existing header",
			give: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{hvoAppend("x-tags", "b", true)}},
			want: map[string][]string{"x-tags": {"a,b"}},
		},
		{
			name: "append true does not add an absent header",
			give: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{hvoAppend("x-new", "1", true)}},
			gone: []string{"x-new"},
		},
		{
			name: "remove, except pseudo-headers and host",
			give: &authv3.OkHttpResponse{HeadersToRemove: []string{"x-api-key", ":path", ":authority", "host", "Host", "x-consumer-id"}},
			want: map[string][]string{":path": {"/"}, ":authority": {"localhost"}},
			gone: []string{"x-api-key", "x-consumer-id"},
		},
		{
			name:     "query parameters are rewritten in key order",
			givePath: "/v1/items?z=1&api_key=secret&a=2&a=3",
			give: &authv3.OkHttpResponse{
				QueryParametersToSet:    []*corev3.QueryParameter{{Key: "b", Value: "x"}, {Key: "a", Value: "9"}},
				QueryParametersToRemove: []string{"api_key"},
			},
			want: map[string][]string{":path": {"/v1/items?a=9&b=x&z=1"}},
		},
		{
			name: "response_headers_to_add honour append and append_action",
			give: &authv3.OkHttpResponse{ResponseHeadersToAdd: []*corev3.HeaderValueOption{
				hvo("x-default", "1"), hvo("x-default", "2"), // APPEND_IF_EXISTS_OR_ADD
				hvoAction("x-set", "1", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
				hvoAction("x-set", "2", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
				hvoAction("x-absent", "1", corev3.HeaderValueOption_ADD_IF_ABSENT),
				hvoAction("x-default", "3", corev3.HeaderValueOption_ADD_IF_ABSENT),
				hvoAction("x-missing", "1", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
				hvoAppend("x-bool", "1", true), hvoAppend("x-bool", "2", true),
				hvoAppend("x-bool-set", "1", false), hvoAppend("x-bool-set", "2", false),
			}},
			wantResp: map[string][]string{
				"x-default": {"1", "2"}, "x-set": {"2"}, "x-absent": {"1"},
				"x-bool": {"1", "2"}, "x-bool-set": {"2"}, "x-missing": nil,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, conn := startAuthz(t, answer(okResponse(tt.give)))
			out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{})).Check(context.Background(), &Request{Path: tt.givePath, Headers: base})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if !out.Allowed || out.Status != 200 {
				t.Fatalf("Allowed = %v, Status = %d, want allowed 200", out.Allowed, out.Status)
			}
			for k, v := range tt.want {
				if got := out.UpstreamHeaders.Values(k); !equalStrings(got, v) {
					t.Errorf("upstream %q = %q, want %q", k, got, v)
				}
			}
			for _, k := range tt.gone {
				if out.UpstreamHeaders.Has(k) {
					t.Errorf("upstream %q = %q, want absent", k, out.UpstreamHeaders.Values(k))
				}
			}
			for k, v := range tt.wantResp {
				if got := out.ResponseHeaders.Values(k); !equalStrings(got, v) {
					t.Errorf("response %q = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestApplyResponseHeadersOnUpstreamResponse(t *testing.T) {
	_, conn := startAuthz(t, answer(okResponse(&authv3.OkHttpResponse{ResponseHeadersToAdd: []*corev3.HeaderValueOption{
		hvoAction("x-absent", "authz", corev3.HeaderValueOption_ADD_IF_ABSENT),
		hvoAction("x-over", "authz", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS),
		hvo("x-add", "authz"),
	}})))
	out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{})).Check(context.Background(), &Request{})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	got := out.ApplyResponseHeaders(Headers{{Name: "x-absent", Value: "up"}, {Name: "x-over", Value: "up"}, {Name: "x-add", Value: "up"}})
	want := map[string][]string{"x-absent": {"up"}, "x-over": {"authz"}, "x-add": {"up", "authz"}}
	for k, v := range want {
		if g := got.Values(k); !equalStrings(g, v) {
			t.Errorf("%q = %q, want %q", k, g, v)
		}
	}
}

func TestCheckDenyMapsStatusAsEnvoy(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{"reason": "bad_key"})
	tests := []struct {
		name       string
		give       *authv3.CheckResponse
		wantStatus int
		wantBody   string
		wantHdrs   map[string][]string
	}{
		{
			name:       "no denied_response gives 403",
			give:       &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)}},
			wantStatus: 403,
		},
		{
			name: "denied status 0 gives 403",
			give: &authv3.CheckResponse{
				Status:       &rpcstatus.Status{Code: int32(codes.Unauthenticated)},
				HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Body: "no"}},
			},
			wantStatus: 403, wantBody: "no",
			wantHdrs: map[string][]string{"content-type": {"text/plain"}},
		},
		{
			name: "denied status, body and headers",
			give: &authv3.CheckResponse{
				Status: &rpcstatus.Status{Code: int32(codes.Unauthenticated)},
				HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
					Status: &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized},
					Body:   `{"error":"invalid api key"}`,
					Headers: []*corev3.HeaderValueOption{
						hvo("Content-Type", "application/json"), hvo("set-cookie", "a=1"), hvo("set-cookie", "b=2"),
						hvoAppend("x-appended", "dropped", true),
					},
				}},
			},
			wantStatus: 401, wantBody: `{"error":"invalid api key"}`,
			wantHdrs: map[string][]string{"content-type": {"application/json"}, "set-cookie": {"a=1", "b=2"}, "x-appended": nil},
		},
		{
			name: "dynamic metadata is kept on deny",
			give: &authv3.CheckResponse{
				Status:          &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
				HttpResponse:    &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{Status: &typev3.HttpStatus{Code: typev3.StatusCode_PaymentRequired}}},
				DynamicMetadata: md,
			},
			wantStatus: 402,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, conn := startAuthz(t, answer(tt.give))
			out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{FailureModeAllow: true})).Check(context.Background(), &Request{})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if out.Allowed || out.Status != tt.wantStatus || out.Body != tt.wantBody {
				t.Errorf("Allowed, Status, Body = %v, %d, %q; want false, %d, %q", out.Allowed, out.Status, out.Body, tt.wantStatus, tt.wantBody)
			}
			if out.UpstreamHeaders != nil || out.FailureModeAllowed || out.RPCError != nil {
				t.Errorf("UpstreamHeaders, FailureModeAllowed, RPCError = %v, %v, %v; want nil, false, nil", out.UpstreamHeaders, out.FailureModeAllowed, out.RPCError)
			}
			for k, v := range tt.wantHdrs {
				if got := out.ResponseHeaders.Values(k); !equalStrings(got, v) {
					t.Errorf("response %q = %q, want %q", k, got, v)
				}
			}
			if !proto.Equal(out.DynamicMetadata, tt.give.GetDynamicMetadata()) {
				t.Errorf("DynamicMetadata = %v, want %v", out.DynamicMetadata, tt.give.GetDynamicMetadata())
			}
		})
	}
}

func TestCheckStoresDynamicMetadataWithDurationOnOK(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{"consumer_id": "cus_123", "plan": "pro"})
	resp := okResponse(nil)
	resp.DynamicMetadata = md
	_, conn := startAuthz(t, answer(resp))
	out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{})).Check(context.Background(), &Request{})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	f := out.DynamicMetadata.GetFields()
	if f["consumer_id"].GetStringValue() != "cus_123" || f["plan"].GetStringValue() != "pro" {
		t.Errorf("DynamicMetadata = %v, want consumer_id and plan", out.DynamicMetadata)
	}
	if _, ok := f[ExtAuthzDurationKey].GetKind().(*structpb.Value_NumberValue); !ok {
		t.Errorf("DynamicMetadata lacks a number %s: %v", ExtAuthzDurationKey, out.DynamicMetadata)
	}
	if len(md.GetFields()) != 2 {
		t.Errorf("the server's struct was modified: %v", md)
	}
}

func TestCheckFoldsRPCErrorsPerFailureMode(t *testing.T) {
	fail := func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return nil, status.Error(codes.Unavailable, "store down")
	}
	errResp := func(code typev3.StatusCode) func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		return answer(&authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.Internal)},
			HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: code}, Body: "oops",
			}},
		})
	}
	tests := []struct {
		name        string
		give        AuthzConfig
		respond     func(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error)
		wantAllowed bool
		wantStatus  int
		wantRPCErr  bool
		wantBody    string
	}{
		{name: "fail closed with the default 403", respond: fail, wantStatus: 403, wantRPCErr: true},
		{name: "fail closed with status_on_error", give: AuthzConfig{StatusOnError: 503}, respond: fail, wantStatus: 503, wantRPCErr: true},
		{name: "fail open", give: AuthzConfig{FailureModeAllow: true}, respond: fail, wantAllowed: true, wantStatus: 200, wantRPCErr: true},
		{name: "error_response with its status", respond: errResp(typev3.StatusCode_ServiceUnavailable), wantStatus: 503, wantBody: "oops"},
		{name: "error_response without status uses status_on_error", give: AuthzConfig{StatusOnError: 500}, respond: errResp(typev3.StatusCode_Empty), wantStatus: 500, wantBody: "oops"},
		{name: "error_response fails open", give: AuthzConfig{FailureModeAllow: true}, respond: errResp(typev3.StatusCode_ServiceUnavailable), wantAllowed: true, wantStatus: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, conn := startAuthz(t, tt.respond)
			out, err := NewAuthzClient(conn, patientAuthz(tt.give)).Check(context.Background(), &Request{})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if out.Allowed != tt.wantAllowed || out.Status != tt.wantStatus || out.Body != tt.wantBody {
				t.Errorf("Allowed, Status, Body = %v, %d, %q; want %v, %d, %q", out.Allowed, out.Status, out.Body, tt.wantAllowed, tt.wantStatus, tt.wantBody)
			}
			if (out.RPCError != nil) != tt.wantRPCErr {
				t.Errorf("RPCError = %v, want error: %v", out.RPCError, tt.wantRPCErr)
			}
			if out.FailureModeAllowed != tt.wantAllowed {
				t.Errorf("FailureModeAllowed = %v, want %v", out.FailureModeAllowed, tt.wantAllowed)
			}
			wantHeader := ""
			if tt.wantAllowed {
				wantHeader = "true"
			}
			if got := out.UpstreamHeaders.Get(HeaderAuthFailureModeAllowed); got != wantHeader {
				t.Errorf("upstream %s = %q, want %q", HeaderAuthFailureModeAllowed, got, wantHeader)
			}
		})
	}
}

func TestCheckHonoursTimeout(t *testing.T) {
	tests := []struct {
		name        string
		give        AuthzConfig
		wantStatus  int
		wantAllowed bool
	}{
		{name: "fail closed", give: AuthzConfig{Timeout: 50 * time.Millisecond, StatusOnError: 504}, wantStatus: 504},
		{name: "fail open", give: AuthzConfig{Timeout: 50 * time.Millisecond, FailureModeAllow: true}, wantStatus: 200, wantAllowed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverSawCancel := make(chan struct{})
			_, conn := startAuthz(t, func(ctx context.Context, _ *authv3.CheckRequest) (*authv3.CheckResponse, error) {
				<-ctx.Done()
				close(serverSawCancel)
				return nil, ctx.Err()
			})
			// Connected first: the 50ms are the call's, not a dial's and
			// handshake's, which under -race on a loaded machine outlast
			// them, so the call never reached the server to be cancelled.
			waitReady(t, conn)
			begin := time.Now()
			out, err := NewAuthzClient(conn, tt.give).Check(context.Background(), &Request{})
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if status.Code(out.RPCError) != codes.DeadlineExceeded {
				t.Errorf("RPCError = %v, want DeadlineExceeded", out.RPCError)
			}
			if out.Status != tt.wantStatus || out.Allowed != tt.wantAllowed {
				t.Errorf("Status = %d, Allowed = %v; want %d, %v", out.Status, out.Allowed, tt.wantStatus, tt.wantAllowed)
			}
			if elapsed := time.Since(begin); elapsed < tt.give.Timeout {
				t.Errorf("Check returned after %v, before the %v timeout", elapsed, tt.give.Timeout)
			}
			select {
			case <-serverSawCancel:
			case <-time.After(5 * time.Second):
				t.Errorf("the server's context was not cancelled")
			}
		})
	}
}

func TestCheckRejectsBadRequests(t *testing.T) {
	tests := []struct {
		name string
		give *Request
	}{
		{name: "nil", give: nil},
		{name: "relative path", give: &Request{Path: "v1/items"}},
		{name: "bad source address", give: &Request{SourceAddress: "10.0.0.1"}},
		{name: "pseudo-header in Headers", give: &Request{Headers: []Header{{Name: ":path", Value: "/"}}}},
		{name: "unknown protocol", give: &Request{Protocol: "SPDY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, conn := startAuthz(t, answer(okResponse(nil)))
			out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{})).Check(context.Background(), tt.give)
			if !errors.Is(err, errBadRequest) || out != nil {
				t.Errorf("Check = %v, %v; want nil, a bad-request error", out, err)
			}
			if n := len(s.received()); n != 0 {
				t.Errorf("server got %d checks, want 0", n)
			}
			if BuildCheckRequest(tt.give, 1) != nil {
				t.Errorf("BuildCheckRequest returned a request, want nil")
			}
		})
	}
}

func TestMetadataStringReadsOnlyNonEmptyStrings(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{
		"consumer_id": "cus_1",
		"plan":        map[string]any{"name": "pro", "rpm": 600},
		"empty":       "",
	})
	o := &Outcome{DynamicMetadata: md}
	tests := []struct {
		give   []string
		want   string
		wantOK bool
	}{
		{give: []string{"consumer_id"}, want: "cus_1", wantOK: true},
		{give: []string{"plan", "name"}, want: "pro", wantOK: true},
		{give: []string{"plan", "rpm"}},
		{give: []string{"plan"}},
		{give: []string{"empty"}},
		{give: []string{"missing"}},
		{give: []string{"consumer_id", "deeper"}},
		{give: nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.give, "."), func(t *testing.T) {
			got, ok := o.MetadataString(tt.give...)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("MetadataString(%q) = %q, %v; want %q, %v", tt.give, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// waitReady connects conn and waits until it is ready.
func waitReady(t *testing.T, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	conn.Connect()
	for st := conn.GetState(); st != connectivity.Ready; st = conn.GetState() {
		if !conn.WaitForStateChange(ctx, st) {
			t.Fatalf("connection not ready within %v: %v", patience, st)
		}
	}
}
