package envoyclient

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// alsMessage is one message as the server received it, with the number of its stream.
type alsMessage struct {
	stream int32
	msg    *alsv3.StreamAccessLogsMessage
}

// alsServer passes every message it receives to msgs. With closeAfter > 0 it ends each stream
// after that many messages, as a server that wants Envoy to reconnect does.
type alsServer struct {
	alsv3.UnimplementedAccessLogServiceServer
	closeAfter int
	msgs       chan alsMessage
	streams    atomic.Int32
	halfClosed chan int32 // streams the client half-closed
}

func (s *alsServer) StreamAccessLogs(stream grpc.ClientStreamingServer[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]) error {
	n := s.streams.Add(1)
	for count := 1; ; count++ {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			s.halfClosed <- n
			return stream.SendAndClose(&alsv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		s.msgs <- alsMessage{stream: n, msg: m}
		if s.closeAfter > 0 && count >= s.closeAfter {
			return status.Error(codes.Unavailable, "rebalancing")
		}
	}
}

func startALS(t *testing.T, closeAfter int) (*alsServer, *grpc.ClientConn) {
	t.Helper()
	s := &alsServer{closeAfter: closeAfter, msgs: make(chan alsMessage, 100), halfClosed: make(chan int32, 100)}
	conn := serve(t, func(g *grpc.Server) { alsv3.RegisterAccessLogServiceServer(g, s) })
	return s, conn
}

func logEntry(path string) *accesslogdatav3.HTTPAccessLogEntry {
	return &accesslogdatav3.HTTPAccessLogEntry{Request: &accesslogdatav3.HTTPRequestProperties{Path: path}}
}

func paths(m *alsv3.StreamAccessLogsMessage) []string {
	var out []string
	for _, e := range m.GetHttpLogs().GetLogEntry() {
		out = append(out, e.GetRequest().GetPath())
	}
	return out
}

var alsCfg = AccessLogConfig{LogName: "billing", NodeID: "gw-1", Cluster: "ingress"}

func checkIdentifier(t *testing.T, m *alsv3.StreamAccessLogsMessage, want bool) {
	t.Helper()
	id := m.GetIdentifier()
	if !want {
		if id != nil {
			t.Errorf("identifier = %v, want none", id)
		}
		return
	}
	if id.GetLogName() != "billing" || id.GetNode().GetId() != "gw-1" || id.GetNode().GetCluster() != "ingress" {
		t.Errorf("identifier = %v, want log_name billing, node gw-1/ingress", id)
	}
}

func TestAccessLoggerSendsIdentifierOnlyOnFirstMessageOfStream(t *testing.T) {
	s, conn := startALS(t, 0)
	l := NewAccessLogger(conn, alsCfg)
	batches := [][]string{{"/a", "/b"}, {"/c"}, {"/d", "/e", "/f"}}
	for _, b := range batches {
		for _, p := range b {
			l.Log(logEntry(p))
		}
		if err := l.Flush(context.Background()); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		if n := l.Buffered(); n != 0 {
			t.Errorf("Buffered after Flush = %d, want 0", n)
		}
	}
	for i, want := range batches {
		got := <-s.msgs
		if got.stream != 1 {
			t.Errorf("message %d on stream %d, want 1", i, got.stream)
		}
		checkIdentifier(t, got.msg, i == 0)
		if !equalStrings(paths(got.msg), want) {
			t.Errorf("message %d carries %q, want %q", i, paths(got.msg), want)
		}
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if got := <-s.halfClosed; got != 1 {
		t.Errorf("half-closed stream %d, want 1", got)
	}
}

func TestAccessLoggerResendsIdentifierAfterStreamBreak(t *testing.T) {
	s, conn := startALS(t, 1) // every stream ends after its first message
	l := NewAccessLogger(conn, alsCfg)
	defer l.Close()
	for i, p := range []string{"/one", "/two", "/three"} {
		l.Log(logEntry(p))
		if err := l.Flush(context.Background()); err != nil {
			t.Fatalf("Flush %d: %v", i, err)
		}
		got := <-s.msgs
		if got.stream != int32(i+1) {
			t.Errorf("message %d on stream %d, want %d", i, got.stream, i+1)
		}
		checkIdentifier(t, got.msg, true)
		if !equalStrings(paths(got.msg), []string{p}) {
			t.Errorf("message %d carries %q, want [%s]", i, paths(got.msg), p)
		}
		<-l.StreamClosed() // Envoy's onRemoteClose
	}
}

func TestAccessLoggerFlushClearsBufferEvenWhenSendFails(t *testing.T) {
	l := NewAccessLogger(stoppedServerConn(t), alsCfg)
	defer l.Close()
	l.Log(logEntry("/lost"))
	if err := l.Flush(context.Background()); err == nil {
		t.Errorf("Flush to a stopped server succeeded, want an error")
	}
	if n := l.Buffered(); n != 0 {
		t.Errorf("Buffered = %d, want 0: the batch is dropped as Envoy drops it", n)
	}
}

func TestAccessLoggerOpensNoStreamForEmptyFlush(t *testing.T) {
	s, conn := startALS(t, 0)
	l := NewAccessLogger(conn, alsCfg)
	if err := l.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := s.streams.Load(); n != 0 {
		t.Errorf("server saw %d streams, want 0", n)
	}
	if err := l.Flush(context.Background()); !errors.Is(err, ErrLoggerClosed) {
		t.Errorf("Flush after Close = %v, want ErrLoggerClosed", err)
	}
}

func TestHTTPLogEntryReflectsOutcomes(t *testing.T) {
	// levy's allow metadata: who, and the ledger window the units were
	// counted in, which the access-log receiver settles.
	md, _ := structpb.NewStruct(map[string]any{"consumer_id": "cus_1", "window": 1_773_500_940, "ledger": "{c:cus_1}:ledger:api_calls"})
	allow := okResponse(&authv3.OkHttpResponse{
		Headers:              []*corev3.HeaderValueOption{hvo("x-consumer-id", "cus_1")},
		HeadersToRemove:      []string{"x-api-key"},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{hvo("x-plan", "pro")},
	})
	allow.DynamicMetadata = md
	deny := &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.Unauthenticated)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized}, Body: "bad key",
		}},
		DynamicMetadata: md,
	}
	_, allowConn := startAuthz(t, answer(allow))
	_, denyConn := startAuthz(t, answer(deny))
	_, okConn := startRLS(t, rlsAnswer(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}))
	_, overConn := startRLS(t, rlsAnswer(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT, RawBody: []byte("429")}))
	_, downConn := startRLS(t, func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		return nil, status.Error(codes.Unavailable, "down")
	})

	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	req := &Request{
		Method: "POST", Path: "/v1/items", Authority: "api.example.com", RequestID: "rid-9", StartTime: start,
		SourceAddress: "10.0.0.9:1234",
		Headers:       []Header{{Name: "X-Api-Key", Value: "secret"}, {Name: "User-Agent", Value: "curl/8"}},
	}
	check := func(conn *grpc.ClientConn) *Outcome {
		out, err := NewAuthzClient(conn, patientAuthz(AuthzConfig{})).Check(context.Background(), req)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return out
	}
	limit := func(conn *grpc.ClientConn) *RateLimitOutcome {
		out, err := NewRateLimitClient(conn, RateLimitConfig{Domain: "billing", FailureModeDeny: true, Timeout: patience}).ShouldRateLimit(context.Background(), perKey, 0)
		if err != nil {
			t.Fatalf("ShouldRateLimit: %v", err)
		}
		return out
	}

	tests := []struct {
		name         string
		give         LogInput
		wantCode     uint32
		wantDetails  string
		wantUAEX     bool
		wantRL       bool
		wantRLSE     bool
		wantMetadata bool
		wantReqHdrs  map[string]string
		wantRespHdrs map[string]string
		wantBody     uint64
	}{
		{
			name: "allowed and forwarded",
			give: LogInput{
				Request: req, Authz: check(allowConn), RateLimit: limit(okConn),
				UpstreamStatus: 201, ResponseHeaders: []Header{{Name: "Content-Type", Value: "application/json"}}, ResponseBodyBytes: 17,
			},
			wantCode: 201, wantDetails: "via_upstream", wantMetadata: true,
			wantReqHdrs:  map[string]string{"x-consumer-id": "cus_1"},
			wantRespHdrs: map[string]string{"content-type": "application/json", "x-plan": "pro"},
			wantBody:     17,
		},
		{
			name:     "ext_authz denial",
			give:     LogInput{Request: req, Authz: check(denyConn)},
			wantCode: 401, wantDetails: "ext_authz_denied", wantUAEX: true, wantMetadata: true,
			wantReqHdrs:  map[string]string{"x-api-key": "secret"},
			wantRespHdrs: map[string]string{"content-type": "text/plain"},
			wantBody:     uint64(len("bad key")),
		},
		{
			name:     "rate limited",
			give:     LogInput{Request: req, Authz: check(allowConn), RateLimit: limit(overConn)},
			wantCode: 429, wantDetails: "request_rate_limited", wantRL: true, wantMetadata: true,
			wantReqHdrs:  map[string]string{"x-consumer-id": "cus_1"},
			wantRespHdrs: map[string]string{"content-type": "text/plain", "x-envoy-ratelimited": "true"},
			wantBody:     3,
		},
		{
			name:     "rate limit service error while failing closed",
			give:     LogInput{Request: req, RateLimit: limit(downConn)},
			wantCode: 500, wantDetails: "rate_limiter_error", wantRLSE: true,
			wantReqHdrs: map[string]string{"x-api-key": "secret"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.give.RouteName = "items"
			tt.give.AdditionalRequestHeaders = []string{"x-consumer-id", "X-Api-Key"}
			tt.give.AdditionalResponseHeaders = []string{"content-type", "x-plan", "x-envoy-ratelimited"}
			e := HTTPLogEntry(tt.give)
			c := e.GetCommonProperties()
			if got := e.GetResponse().GetResponseCode().GetValue(); got != tt.wantCode {
				t.Errorf("response_code = %d, want %d", got, tt.wantCode)
			}
			if got := e.GetResponse().GetResponseCodeDetails(); got != tt.wantDetails {
				t.Errorf("response_code_details = %q, want %q", got, tt.wantDetails)
			}
			if got := e.GetResponse().GetResponseBodyBytes(); got != tt.wantBody {
				t.Errorf("response_body_bytes = %d, want %d", got, tt.wantBody)
			}
			f := c.GetResponseFlags()
			gotUAEX := f.GetUnauthorizedDetails().GetReason() == accesslogdatav3.ResponseFlags_Unauthorized_EXTERNAL_SERVICE
			if gotUAEX != tt.wantUAEX || f.GetRateLimited() != tt.wantRL || f.GetRateLimitServiceError() != tt.wantRLSE {
				t.Errorf("response_flags = %v, want UAEX %v, RL %v, RLSE %v", f, tt.wantUAEX, tt.wantRL, tt.wantRLSE)
			}
			authzMD := c.GetMetadata().GetFilterMetadata()[ExtAuthzNamespace]
			if got := authzMD.GetFields()["consumer_id"].GetStringValue() == "cus_1"; got != tt.wantMetadata {
				t.Errorf("filter_metadata[%s] = %v, want consumer_id: %v", ExtAuthzNamespace, authzMD, tt.wantMetadata)
			}
			for k, v := range md.GetFields() {
				if got := authzMD.GetFields()[k]; tt.wantMetadata && !proto.Equal(got, v) {
					t.Errorf("filter_metadata[%s][%s] = %v, want %v", ExtAuthzNamespace, k, got, v)
				}
			}
			if !mapsEqual(e.GetRequest().GetRequestHeaders(), tt.wantReqHdrs) {
				t.Errorf("request_headers = %v, want %v", e.GetRequest().GetRequestHeaders(), tt.wantReqHdrs)
			}
			if !mapsEqual(e.GetResponse().GetResponseHeaders(), tt.wantRespHdrs) {
				t.Errorf("response_headers = %v, want %v", e.GetResponse().GetResponseHeaders(), tt.wantRespHdrs)
			}
			r := e.GetRequest()
			if r.GetRequestId() != "rid-9" || c.GetStreamId() != "rid-9" || r.GetPath() != "/v1/items" || r.GetAuthority() != "api.example.com" ||
				r.GetRequestMethod() != corev3.RequestMethod_POST || r.GetUserAgent() != "curl/8" || r.GetScheme() != "http" {
				t.Errorf("request = %v, want POST http://api.example.com/v1/items, request_id rid-9, user_agent curl/8", r)
			}
			if !c.GetStartTime().AsTime().Equal(start) || c.GetRouteName() != "items" || c.GetUpstreamCluster() != DefaultUpstreamCluster ||
				c.GetDownstreamRemoteAddress().GetSocketAddress().GetAddress() != "10.0.0.9" ||
				c.GetAccessLogType() != accesslogdatav3.AccessLogType_DownstreamEnd {
				t.Errorf("common_properties = %v", c)
			}
			if e.GetProtocolVersion() != accesslogdatav3.HTTPAccessLogEntry_HTTP11 {
				t.Errorf("protocol_version = %v, want HTTP11", e.GetProtocolVersion())
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
