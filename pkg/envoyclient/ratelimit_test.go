package envoyclient

import (
	"context"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitv3common "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// rlsServer records every RateLimitRequest and answers with respond.
type rlsServer struct {
	rlsv3.UnimplementedRateLimitServiceServer
	respond func(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error)

	mu   sync.Mutex
	reqs []*rlsv3.RateLimitRequest
}

func (s *rlsServer) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	s.mu.Unlock()
	return s.respond(ctx, req)
}

func (s *rlsServer) received() []*rlsv3.RateLimitRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*rlsv3.RateLimitRequest(nil), s.reqs...)
}

func startRLS(t *testing.T, respond func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error)) (*rlsServer, *grpc.ClientConn) {
	t.Helper()
	s := &rlsServer{respond: respond}
	conn := serve(t, func(g *grpc.Server) { rlsv3.RegisterRateLimitServiceServer(g, s) })
	return s, conn
}

func rlsAnswer(resp *rlsv3.RateLimitResponse) func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) { return resp, nil }
}

func limitStatus(code rlsv3.RateLimitResponse_Code, rpu uint32, unit rlsv3.RateLimitResponse_RateLimit_Unit, name string, remaining uint32, reset time.Duration) *rlsv3.RateLimitResponse_DescriptorStatus {
	return &rlsv3.RateLimitResponse_DescriptorStatus{
		Code:               code,
		CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{Name: name, RequestsPerUnit: rpu, Unit: unit},
		LimitRemaining:     remaining,
		DurationUntilReset: durationpb.New(reset),
	}
}

var perKey = []Descriptor{{Entries: [][2]string{{"consumer_id", "cus_1"}}}}

func TestXRateLimitHeadersAsRatelimitHeadersCC(t *testing.T) {
	const ok = rlsv3.RateLimitResponse_OK
	tests := []struct {
		name string
		give []*rlsv3.RateLimitResponse_DescriptorStatus
		want Headers
	}{
		{
			name: "the proto's example",
			give: []*rlsv3.RateLimitResponse_DescriptorStatus{
				limitStatus(ok, 10, rlsv3.RateLimitResponse_RateLimit_SECOND, "per-ip", 10, time.Second),
				limitStatus(ok, 1000, rlsv3.RateLimitResponse_RateLimit_HOUR, "", 999, 3599*time.Second),
			},
			want: Headers{
				{Name: "x-ratelimit-limit", Value: `10, 10;w=1;name="per-ip", 1000;w=3600`},
				{Name: "x-ratelimit-remaining", Value: "10"},
				{Name: "x-ratelimit-reset", Value: "1"},
			},
		},
		{
			name: "smallest remaining wins",
			give: []*rlsv3.RateLimitResponse_DescriptorStatus{
				limitStatus(ok, 10, rlsv3.RateLimitResponse_RateLimit_SECOND, "per-ip", 8, time.Second),
				limitStatus(ok, 600, rlsv3.RateLimitResponse_RateLimit_MINUTE, "plan", 2, 42*time.Second),
			},
			want: Headers{
				{Name: "x-ratelimit-limit", Value: `600, 10;w=1;name="per-ip", 600;w=60;name="plan"`},
				{Name: "x-ratelimit-remaining", Value: "2"},
				{Name: "x-ratelimit-reset", Value: "42"},
			},
		},
		{
			name: "a tie keeps the first; a status without current_limit is ignored",
			give: []*rlsv3.RateLimitResponse_DescriptorStatus{
				{Code: ok},
				limitStatus(ok, 100, rlsv3.RateLimitResponse_RateLimit_DAY, "day", 5, 1000*time.Second),
				limitStatus(ok, 7, rlsv3.RateLimitResponse_RateLimit_MONTH, "month", 5, 2000*time.Second),
			},
			want: Headers{
				{Name: "x-ratelimit-limit", Value: `100, 100;w=86400;name="day", 7;w=2592000;name="month"`},
				{Name: "x-ratelimit-remaining", Value: "5"},
				{Name: "x-ratelimit-reset", Value: "1000"},
			},
		},
		{
			name: "a unit without a window is left out of the policy but can still be the minimum",
			give: []*rlsv3.RateLimitResponse_DescriptorStatus{
				limitStatus(ok, 50, rlsv3.RateLimitResponse_RateLimit_WEEK, "week", 1, 9*time.Second),
				limitStatus(ok, 1, rlsv3.RateLimitResponse_RateLimit_YEAR, "", 3, 0),
			},
			want: Headers{
				{Name: "x-ratelimit-limit", Value: `50, 1;w=31536000`},
				{Name: "x-ratelimit-remaining", Value: "1"},
				{Name: "x-ratelimit-reset", Value: "9"},
			},
		},
		{name: "no current_limit at all", give: []*rlsv3.RateLimitResponse_DescriptorStatus{{Code: ok}}, want: nil},
		{name: "no statuses", give: nil, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := XRateLimitHeaders(tt.give)
			if len(got) != len(tt.want) {
				t.Fatalf("XRateLimitHeaders = %q, want %q", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("header %d = %q, want %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestShouldRateLimitSendsDescriptorsAsEnvoy(t *testing.T) {
	s, conn := startRLS(t, rlsAnswer(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}))
	five := uint64(5)
	override := &ratelimitv3common.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 600, Unit: typev3.RateLimitUnit_MINUTE}
	give := []Descriptor{
		{Entries: [][2]string{{"consumer_id", "cus_1"}, {"plan", "pro"}}, Limit: override},
		{Entries: [][2]string{{"remote_address", "10.0.0.1"}}, HitsAddend: &five},
	}
	out, err := NewRateLimitClient(conn, patientRL(RateLimitConfig{Domain: "billing"})).ShouldRateLimit(context.Background(), give, 3)
	if err != nil {
		t.Fatalf("ShouldRateLimit: %v", err)
	}
	want := &rlsv3.RateLimitRequest{
		Domain:     "billing",
		HitsAddend: 3,
		Descriptors: []*ratelimitv3common.RateLimitDescriptor{
			{
				Entries: []*ratelimitv3common.RateLimitDescriptor_Entry{{Key: "consumer_id", Value: "cus_1"}, {Key: "plan", Value: "pro"}},
				Limit:   override,
			},
			{
				Entries:    []*ratelimitv3common.RateLimitDescriptor_Entry{{Key: "remote_address", Value: "10.0.0.1"}},
				HitsAddend: wrapperspb.UInt64(5),
			},
		},
	}
	got := s.received()
	if len(got) != 1 || !proto.Equal(got[0], want) {
		t.Errorf("server got %v, want %v", got, want)
	}
	if !proto.Equal(out.Request, want) {
		t.Errorf("Request = %v, want %v", out.Request, want)
	}
}

func TestShouldRateLimitMakesNoCallWithoutDescriptors(t *testing.T) {
	s, conn := startRLS(t, rlsAnswer(&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT}))
	out, err := NewRateLimitClient(conn, RateLimitConfig{Domain: "billing"}).ShouldRateLimit(context.Background(), nil, 0)
	if err != nil {
		t.Fatalf("ShouldRateLimit: %v", err)
	}
	if !out.Allowed || out.Limited || out.Status != 200 || out.Request != nil {
		t.Errorf("outcome = %+v, want allowed 200 without a request", out)
	}
	if n := len(s.received()); n != 0 {
		t.Errorf("server got %d calls, want 0", n)
	}
}

func TestShouldRateLimitAppliesResponseAsEnvoy(t *testing.T) {
	statuses := []*rlsv3.RateLimitResponse_DescriptorStatus{
		limitStatus(rlsv3.RateLimitResponse_OVER_LIMIT, 10, rlsv3.RateLimitResponse_RateLimit_SECOND, "per-ip", 0, time.Second),
	}
	md, _ := structpb.NewStruct(map[string]any{"bucket": "b1"})
	tests := []struct {
		name         string
		give         RateLimitConfig
		resp         *rlsv3.RateLimitResponse
		wantAllowed  bool
		wantLimited  bool
		wantStatus   int
		wantBody     string
		wantResp     Headers
		wantUpstream Headers
	}{
		{
			name: "OK adds response and request headers",
			resp: &rlsv3.RateLimitResponse{
				OverallCode:          rlsv3.RateLimitResponse_OK,
				ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "X-Quota", Value: "ok"}},
				RequestHeadersToAdd:  []*corev3.HeaderValue{{Key: "x-rl-bucket", Value: "b1"}},
				DynamicMetadata:      md,
			},
			wantAllowed: true, wantStatus: 200,
			wantResp:     Headers{{Name: "x-quota", Value: "ok"}},
			wantUpstream: Headers{{Name: "x-rl-bucket", Value: "b1"}},
		},
		{
			name: "OK with x-ratelimit headers",
			give: RateLimitConfig{XRateLimitHeaders: true},
			resp: &rlsv3.RateLimitResponse{
				OverallCode: rlsv3.RateLimitResponse_OK,
				Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{
					limitStatus(rlsv3.RateLimitResponse_OK, 10, rlsv3.RateLimitResponse_RateLimit_SECOND, "per-ip", 4, time.Second),
				},
			},
			wantAllowed: true, wantStatus: 200,
			wantResp: Headers{
				{Name: "x-ratelimit-limit", Value: `10, 10;w=1;name="per-ip"`},
				{Name: "x-ratelimit-remaining", Value: "4"},
				{Name: "x-ratelimit-reset", Value: "1"},
			},
		},
		{
			name:        "UNKNOWN is treated as OK",
			resp:        &rlsv3.RateLimitResponse{RequestHeadersToAdd: []*corev3.HeaderValue{{Key: "x-a", Value: "1"}}},
			wantAllowed: true, wantStatus: 200,
			wantUpstream: Headers{{Name: "x-a", Value: "1"}},
		},
		{
			name: "OVER_LIMIT is a 429 local reply",
			give: RateLimitConfig{XRateLimitHeaders: true},
			resp: &rlsv3.RateLimitResponse{
				OverallCode:          rlsv3.RateLimitResponse_OVER_LIMIT,
				Statuses:             statuses,
				ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "x-quota", Value: "exhausted"}},
				RequestHeadersToAdd:  []*corev3.HeaderValue{{Key: "x-ignored", Value: "1"}},
				RawBody:              []byte("slow down"),
			},
			wantLimited: true, wantStatus: 429, wantBody: "slow down",
			wantResp: Headers{
				{Name: "content-type", Value: "text/plain"},
				{Name: "x-quota", Value: "exhausted"},
				{Name: "x-envoy-ratelimited", Value: "true"},
				{Name: "x-ratelimit-limit", Value: `10, 10;w=1;name="per-ip"`},
				{Name: "x-ratelimit-remaining", Value: "0"},
				{Name: "x-ratelimit-reset", Value: "1"},
			},
		},
		{
			name: "the service's content-type replaces the local reply's",
			resp: &rlsv3.RateLimitResponse{
				OverallCode:          rlsv3.RateLimitResponse_OVER_LIMIT,
				ResponseHeadersToAdd: []*corev3.HeaderValue{{Key: "content-type", Value: "application/json"}},
				RawBody:              []byte(`{"error":"rate limited"}`),
			},
			wantLimited: true, wantStatus: 429, wantBody: `{"error":"rate limited"}`,
			wantResp: Headers{{Name: "content-type", Value: "application/json"}, {Name: "x-envoy-ratelimited", Value: "true"}},
		},
		{
			name:        "rate_limited_status and disable_x_envoy_ratelimited_header",
			give:        RateLimitConfig{RateLimitedStatus: 503, DisableXEnvoyRateLimitedHeader: true},
			resp:        &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT},
			wantLimited: true, wantStatus: 503,
		},
		{
			name:        "rate_limited_status below 400 becomes 429",
			give:        RateLimitConfig{RateLimitedStatus: 200},
			resp:        &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT},
			wantLimited: true, wantStatus: 429,
			wantResp: Headers{{Name: "x-envoy-ratelimited", Value: "true"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, conn := startRLS(t, rlsAnswer(tt.resp))
			tt.give.Domain = "billing"
			out, err := NewRateLimitClient(conn, patientRL(tt.give)).ShouldRateLimit(context.Background(), perKey, 0)
			if err != nil {
				t.Fatalf("ShouldRateLimit: %v", err)
			}
			if out.Allowed != tt.wantAllowed || out.Limited != tt.wantLimited || out.Status != tt.wantStatus || out.Body != tt.wantBody {
				t.Errorf("Allowed, Limited, Status, Body = %v, %v, %d, %q; want %v, %v, %d, %q",
					out.Allowed, out.Limited, out.Status, out.Body, tt.wantAllowed, tt.wantLimited, tt.wantStatus, tt.wantBody)
			}
			if !equalHeaders(out.ResponseHeaders, tt.wantResp) {
				t.Errorf("ResponseHeaders = %q, want %q", out.ResponseHeaders, tt.wantResp)
			}
			if !equalHeaders(out.UpstreamHeaders, tt.wantUpstream) {
				t.Errorf("UpstreamHeaders = %q, want %q", out.UpstreamHeaders, tt.wantUpstream)
			}
			if !proto.Equal(out.DynamicMetadata, tt.resp.GetDynamicMetadata()) {
				t.Errorf("DynamicMetadata = %v, want %v", out.DynamicMetadata, tt.resp.GetDynamicMetadata())
			}
		})
	}
}

func TestShouldRateLimitFailsOpenUnlessFailureModeDeny(t *testing.T) {
	fail := func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		return nil, status.Error(codes.Unavailable, "redis down")
	}
	block := func(ctx context.Context, _ *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	tests := []struct {
		name        string
		give        RateLimitConfig
		respond     func(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error)
		wantAllowed bool
		wantStatus  int
		wantCode    codes.Code
	}{
		{name: "fail open by default", give: RateLimitConfig{Timeout: patience}, respond: fail, wantAllowed: true, wantStatus: 200, wantCode: codes.Unavailable},
		{name: "fail closed with 500", give: RateLimitConfig{FailureModeDeny: true, Timeout: patience}, respond: fail, wantStatus: 500, wantCode: codes.Unavailable},
		{name: "fail closed with status_on_error", give: RateLimitConfig{FailureModeDeny: true, StatusOnError: 503, Timeout: patience}, respond: fail, wantStatus: 503, wantCode: codes.Unavailable},
		{name: "default 20ms timeout fails open", respond: block, wantAllowed: true, wantStatus: 200, wantCode: codes.DeadlineExceeded},
		{name: "timeout fails closed", give: RateLimitConfig{FailureModeDeny: true, Timeout: 30 * time.Millisecond}, respond: block, wantStatus: 500, wantCode: codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, conn := startRLS(t, tt.respond)
			tt.give.Domain = "billing"
			out, err := NewRateLimitClient(conn, tt.give).ShouldRateLimit(context.Background(), perKey, 0)
			if err != nil {
				t.Fatalf("ShouldRateLimit: %v", err)
			}
			if out.Allowed != tt.wantAllowed || out.Status != tt.wantStatus || out.Limited {
				t.Errorf("Allowed, Status, Limited = %v, %d, %v; want %v, %d, false", out.Allowed, out.Status, out.Limited, tt.wantAllowed, tt.wantStatus)
			}
			if out.FailureModeAllowed != tt.wantAllowed || out.ServiceError == tt.wantAllowed {
				t.Errorf("FailureModeAllowed, ServiceError = %v, %v; want %v, %v", out.FailureModeAllowed, out.ServiceError, tt.wantAllowed, !tt.wantAllowed)
			}
			if got := status.Code(out.RPCError); got != tt.wantCode {
				t.Errorf("RPCError = %v, want code %v", out.RPCError, tt.wantCode)
			}
		})
	}
}

func TestShouldRateLimitRejectsDescriptorsEnvoyNeverSends(t *testing.T) {
	tests := []struct {
		name   string
		domain string
		give   []Descriptor
	}{
		{name: "empty domain", domain: "", give: perKey},
		{name: "descriptor without entries", domain: "billing", give: []Descriptor{{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, conn := startRLS(t, rlsAnswer(&rlsv3.RateLimitResponse{}))
			out, err := NewRateLimitClient(conn, RateLimitConfig{Domain: tt.domain}).ShouldRateLimit(context.Background(), tt.give, 0)
			if err == nil || out != nil {
				t.Errorf("ShouldRateLimit = %v, %v; want nil and an error", out, err)
			}
			if n := len(s.received()); n != 0 {
				t.Errorf("server got %d calls, want 0", n)
			}
		})
	}
}

func equalHeaders(a, b Headers) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
