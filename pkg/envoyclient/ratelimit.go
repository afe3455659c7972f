package envoyclient

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	ratelimitv3common "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Ratelimit filter settings and names from Envoy.
const (
	// DefaultRateLimitTimeout is the ratelimit filter's timeout when none is configured.
	DefaultRateLimitTimeout = 20 * time.Millisecond
	// RateLimitNamespace is the dynamic-metadata namespace of the HTTP ratelimit filter.
	RateLimitNamespace = "envoy.filters.http.ratelimit"

	detailsRateLimited    = "request_rate_limited"
	detailsRateLimitError = "rate_limiter_error"
)

// RateLimitConfig mirrors the HTTP ratelimit filter settings that change the outcome.
type RateLimitConfig struct {
	Domain string
	// Timeout of the ShouldRateLimit call; 0 means 20ms (Envoy's default), a negative value
	// means none (Envoy's explicit 0).
	Timeout         time.Duration
	FailureModeDeny bool // default false: fail open
	// StatusOnError is the status when failing closed; default 500.
	StatusOnError int
	// XRateLimitHeaders is enable_x_ratelimit_headers: DRAFT_VERSION_03.
	XRateLimitHeaders bool
	// RateLimitedStatus is the over-limit status; default 429, and values below 400 become 429.
	RateLimitedStatus int
	// DisableXEnvoyRateLimitedHeader is disable_x_envoy_ratelimited_header.
	DisableXEnvoyRateLimitedHeader bool
}

// RateLimitClient calls RateLimitService/ShouldRateLimit the way Envoy's HTTP ratelimit filter
// does and applies the answer.
type RateLimitClient struct {
	client rlsv3.RateLimitServiceClient
	cfg    RateLimitConfig
}

// NewRateLimitClient returns a client that sends its calls on conn.
func NewRateLimitClient(conn grpc.ClientConnInterface, cfg RateLimitConfig) *RateLimitClient {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultRateLimitTimeout
	}
	if cfg.StatusOnError == 0 {
		cfg.StatusOnError = http.StatusInternalServerError
	}
	if cfg.RateLimitedStatus < 400 {
		cfg.RateLimitedStatus = http.StatusTooManyRequests
	}
	return &RateLimitClient{client: rlsv3.NewRateLimitServiceClient(conn), cfg: cfg}
}

// Descriptor is one descriptor as the route's rate_limits actions produce it.
type Descriptor struct {
	Entries    [][2]string                                              // ordered key,value
	HitsAddend *uint64                                                  // per-descriptor hits_addend (nil = unset)
	Limit      *ratelimitv3common.RateLimitDescriptor_RateLimitOverride // optional override
}

// RateLimitOutcome is what the ratelimit filter made of one request.
type RateLimitOutcome struct {
	// Allowed reports that the request goes on to the upstream (OK, or an error while failing open).
	Allowed bool
	// Limited reports an OVER_LIMIT answer (a local reply with RateLimitedStatus).
	Limited bool
	// Status is 200 when allowed, else RateLimitedStatus or StatusOnError.
	Status int
	// ResponseHeaders are, when allowed, the headers added to the upstream response
	// (response_headers_to_add, then x-ratelimit-*); otherwise the local reply's headers.
	ResponseHeaders Headers
	// UpstreamHeaders are the request_headers_to_add, added to the upstream request when allowed.
	UpstreamHeaders Headers
	// Body is the local reply body (raw_body).
	Body               string
	FailureModeAllowed bool // allowed because of an RPC error while failing open
	// ServiceError reports an RPC error while failing closed (response flag RLSE).
	ServiceError bool
	// DynamicMetadata is what Envoy stores under "envoy.filters.http.ratelimit" (nil if none).
	DynamicMetadata *structpb.Struct
	// ResponseCodeDetails is "request_rate_limited" or "rate_limiter_error" for a local reply.
	ResponseCodeDetails string
	RPCError            error
	Response            *rlsv3.RateLimitResponse
	Request             *rlsv3.RateLimitRequest // nil when no call was made
}

// BuildRateLimitRequest is the RateLimitRequest Envoy sends for these descriptors.
func BuildRateLimitRequest(domain string, descriptors []Descriptor, hitsAddend uint32) *rlsv3.RateLimitRequest {
	req := &rlsv3.RateLimitRequest{Domain: domain, HitsAddend: hitsAddend}
	for _, d := range descriptors {
		pd := &ratelimitv3common.RateLimitDescriptor{Limit: d.Limit}
		for _, e := range d.Entries {
			pd.Entries = append(pd.Entries, &ratelimitv3common.RateLimitDescriptor_Entry{Key: e[0], Value: e[1]})
		}
		if d.HitsAddend != nil {
			pd.HitsAddend = wrapperspb.UInt64(*d.HitsAddend)
		}
		req.Descriptors = append(req.Descriptors, pd)
	}
	return req
}

// ShouldRateLimit calls the service with the request's descriptors, as the filter does in
// decodeHeaders, and applies the answer. With no descriptors Envoy makes no call and the request
// is allowed. The returned error is only for descriptors Envoy would never produce (no entries)
// or an empty domain; RPC failures are folded into the outcome per FailureModeDeny.
func (c *RateLimitClient) ShouldRateLimit(ctx context.Context, descriptors []Descriptor, hitsAddend uint32) (*RateLimitOutcome, error) {
	if len(descriptors) == 0 {
		return &RateLimitOutcome{Allowed: true, Status: http.StatusOK}, nil
	}
	if c.cfg.Domain == "" {
		return nil, errors.New("ratelimit: empty domain")
	}
	for i, d := range descriptors {
		if len(d.Entries) == 0 {
			return nil, errors.New("ratelimit: descriptor " + strconv.Itoa(i) + " has no entries")
		}
	}
	out := &RateLimitOutcome{Request: BuildRateLimitRequest(c.cfg.Domain, descriptors, hitsAddend)}

	callCtx, cancel := ctx, context.CancelFunc(func() {})
	if c.cfg.Timeout > 0 {
		callCtx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
	}
	resp, err := c.client.ShouldRateLimit(callCtx, out.Request)
	cancel()
	if err != nil {
		out.RPCError = err
		if c.cfg.FailureModeDeny {
			out.Status = c.cfg.StatusOnError
			out.ServiceError = true
			out.ResponseCodeDetails = detailsRateLimitError
			return out, nil
		}
		out.Allowed = true
		out.FailureModeAllowed = true
		out.Status = http.StatusOK
		return out, nil
	}
	out.Response = resp
	if len(resp.GetDynamicMetadata().GetFields()) > 0 {
		out.DynamicMetadata = resp.GetDynamicMetadata()
	}

	// ratelimit_impl.cc copies response_headers_to_add into a header map; the filter then sets
	// x-envoy-ratelimited and adds the x-ratelimit-* headers.
	var rh Headers
	for _, hv := range resp.GetResponseHeadersToAdd() {
		rh.add(hv.GetKey(), headerValue(hv))
	}
	limited := resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT
	if limited && !c.cfg.DisableXEnvoyRateLimitedHeader {
		rh.set(HeaderEnvoyRateLimited, "true")
	}
	if c.cfg.XRateLimitHeaders {
		rh = append(rh, XRateLimitHeaders(resp.GetStatuses())...)
	}

	if !limited { // UNKNOWN is an ASSERT in debug builds and OK in release builds.
		out.Allowed = true
		out.Status = http.StatusOK
		out.ResponseHeaders = rh
		for _, hv := range resp.GetRequestHeadersToAdd() {
			out.UpstreamHeaders.add(hv.GetKey(), headerValue(hv))
		}
		return out, nil
	}

	out.Limited = true
	out.Status = c.cfg.RateLimitedStatus
	out.Body = string(resp.GetRawBody())
	out.ResponseCodeDetails = detailsRateLimited
	// sendLocalReply sets text/plain for a body; a content-type from the service replaces it.
	var local Headers
	if out.Body != "" && !rh.Has("content-type") {
		local.add("content-type", "text/plain")
	}
	out.ResponseHeaders = append(local, rh...)
	return out, nil
}

// XRateLimitHeaders computes the DRAFT_VERSION_03 headers as ratelimit_headers.cc does: of the
// statuses with a current_limit, the first with the smallest limit_remaining gives
// x-ratelimit-limit, -remaining and -reset; every status with a known window adds
// ", <requests_per_unit>;w=<window seconds>[;name="<name>"]" to x-ratelimit-limit. It returns
// nil when no status has a current_limit.
func XRateLimitHeaders(statuses []*rlsv3.RateLimitResponse_DescriptorStatus) Headers {
	var min *rlsv3.RateLimitResponse_DescriptorStatus
	var policy strings.Builder
	for _, s := range statuses {
		if s.GetCurrentLimit() == nil {
			continue
		}
		if min == nil || s.GetLimitRemaining() < min.GetLimitRemaining() {
			min = s
		}
		w := windowSeconds(s.GetCurrentLimit().GetUnit())
		if w == 0 {
			continue
		}
		policy.WriteString(", " + strconv.FormatUint(uint64(s.GetCurrentLimit().GetRequestsPerUnit()), 10) + ";w=" + strconv.FormatUint(uint64(w), 10))
		if name := s.GetCurrentLimit().GetName(); name != "" {
			policy.WriteString(`;name="` + name + `"`)
		}
	}
	if min == nil {
		return nil
	}
	return Headers{
		{Name: HeaderXRateLimitLimit, Value: strconv.FormatUint(uint64(min.GetCurrentLimit().GetRequestsPerUnit()), 10) + policy.String()},
		{Name: HeaderXRateLimitRemaining, Value: strconv.FormatUint(uint64(min.GetLimitRemaining()), 10)},
		{Name: HeaderXRateLimitReset, Value: strconv.FormatInt(min.GetDurationUntilReset().GetSeconds(), 10)},
	}
}

// windowSeconds is XRateLimitHeaderUtils::convertRateLimitUnit (WEEK and UNKNOWN give 0).
func windowSeconds(u rlsv3.RateLimitResponse_RateLimit_Unit) uint32 {
	switch u {
	case rlsv3.RateLimitResponse_RateLimit_SECOND:
		return 1
	case rlsv3.RateLimitResponse_RateLimit_MINUTE:
		return 60
	case rlsv3.RateLimitResponse_RateLimit_HOUR:
		return 60 * 60
	case rlsv3.RateLimitResponse_RateLimit_DAY:
		return 24 * 60 * 60
	case rlsv3.RateLimitResponse_RateLimit_MONTH:
		return 30 * 24 * 60 * 60
	case rlsv3.RateLimitResponse_RateLimit_YEAR:
		return 365 * 24 * 60 * 60
	default:
		return 0
	}
}
