package envoyclient

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// DefaultUpstreamCluster is the cluster name used when LogInput.UpstreamCluster is empty.
const DefaultUpstreamCluster = "upstream"

const detailsViaUpstream = "via_upstream"

// LogInput is one finished request as the access logger sees it. Authz and RateLimit are the
// outcomes of the filters that ran (nil if the filter did not run); ext_authz runs first.
type LogInput struct {
	Request   *Request
	Authz     *Outcome
	RateLimit *RateLimitOutcome
	// UpstreamStatus is the upstream's status when the request got there; default 200.
	UpstreamStatus int
	// ResponseHeaders are the upstream response's headers, before the filters add theirs.
	ResponseHeaders   []Header
	ResponseBodyBytes uint64
	RouteName         string
	// AdditionalRequestHeaders and AdditionalResponseHeaders are
	// additional_request_headers_to_log and additional_response_headers_to_log.
	AdditionalRequestHeaders, AdditionalResponseHeaders []string

	// UpstreamCluster is the routed cluster; default "upstream".
	UpstreamCluster string
	// RequestBodyBytes is the downstream request body size.
	RequestBodyBytes uint64
	// Duration is the stream's total duration (common_properties.duration).
	Duration time.Duration
}

// HTTPLogEntry builds the entry Envoy writes for a request and its outcome (http_grpc access
// logger plus grpc_access_log_utils.cc):
//
//   - common_properties: start_time, duration, downstream (direct) remote and local addresses,
//     route_name, upstream_cluster, stream_id (= x-request-id), access_log_type DownstreamEnd,
//     metadata.filter_metadata with the ext_authz dynamic metadata under
//     "envoy.filters.http.ext_authz" (and the ratelimit one under "envoy.filters.http.ratelimit"),
//     response_flags: unauthorized_details EXTERNAL_SERVICE for an ext_authz denial or
//     fail-closed error (UAEX), rate_limited for an over-limit local reply (RL),
//     rate_limit_service_error for a fail-closed RLS error (RLSE).
//   - request: method, scheme, authority, path, user_agent, referer, forwarded_for, request_id,
//     original_path, header and body byte counts, and the AdditionalRequestHeaders taken from
//     the final request header map (so headers set by ext_authz are visible), joined with ",".
//   - response: response_code, response_code_details, header and body byte counts, and the
//     AdditionalResponseHeaders.
//
// A nil Request is treated as a default one.
func HTTPLogEntry(in LogInput) *accesslogdatav3.HTTPAccessLogEntry {
	req := Request{}
	if in.Request != nil {
		req = *in.Request
	}
	if in.Authz != nil {
		if in.Authz.RequestID != "" {
			req.RequestID = in.Authz.RequestID
		}
		if !in.Authz.StartTime.IsZero() {
			req.StartTime = in.Authz.StartTime
		}
	}
	p, err := prepare(&req)
	if err != nil {
		p, _ = prepare(&Request{RequestID: req.RequestID, StartTime: req.StartTime})
	}

	// The request header map at the end of the stream.
	reqHeaders := p.headers
	forwarded := true
	if a := in.Authz; a != nil {
		switch {
		case a.Allowed && a.UpstreamHeaders != nil:
			reqHeaders = a.UpstreamHeaders.clone()
		case !a.Allowed:
			forwarded = false
			if a.downstreamHeaders != nil {
				reqHeaders = a.downstreamHeaders
			}
		}
	}
	if rl := in.RateLimit; forwarded && rl != nil {
		if rl.Allowed {
			reqHeaders = append(reqHeaders.clone(), rl.UpstreamHeaders...)
		} else {
			forwarded = false
		}
	}

	flags := &accesslogdatav3.ResponseFlags{}
	var (
		status    int
		respH     Headers
		bodyBytes uint64
		details   string
	)
	switch {
	case in.Authz != nil && !in.Authz.Allowed:
		status, respH, bodyBytes = in.Authz.Status, in.Authz.ResponseHeaders, uint64(len(in.Authz.Body))
		details = in.Authz.ResponseCodeDetails
		flags.UnauthorizedDetails = &accesslogdatav3.ResponseFlags_Unauthorized{
			Reason: accesslogdatav3.ResponseFlags_Unauthorized_EXTERNAL_SERVICE,
		}
	case in.RateLimit != nil && !in.RateLimit.Allowed:
		status, respH, bodyBytes = in.RateLimit.Status, in.RateLimit.ResponseHeaders, uint64(len(in.RateLimit.Body))
		details = in.RateLimit.ResponseCodeDetails
		flags.RateLimited = in.RateLimit.Limited
		flags.RateLimitServiceError = in.RateLimit.ServiceError
	default:
		status = in.UpstreamStatus
		if status == 0 {
			status = http.StatusOK
		}
		for _, h := range in.ResponseHeaders {
			respH.add(h.Name, h.Value)
		}
		// Encoder filters run in reverse order: ratelimit's headers first, then ext_authz's.
		if in.RateLimit != nil {
			respH = append(respH, in.RateLimit.ResponseHeaders...)
		}
		if in.Authz != nil {
			respH = in.Authz.ApplyResponseHeaders(respH)
		}
		bodyBytes = in.ResponseBodyBytes
		details = detailsViaUpstream
	}

	md := &corev3.Metadata{}
	if in.Authz != nil && len(in.Authz.DynamicMetadata.GetFields()) > 0 {
		addFilterMetadata(md, ExtAuthzNamespace, in.Authz.DynamicMetadata)
	}
	if in.RateLimit != nil && len(in.RateLimit.DynamicMetadata.GetFields()) > 0 {
		addFilterMetadata(md, RateLimitNamespace, in.RateLimit.DynamicMetadata)
	}

	cluster := in.UpstreamCluster
	if cluster == "" {
		cluster = DefaultUpstreamCluster
	}
	common := &accesslogdatav3.AccessLogCommon{
		DownstreamRemoteAddress:       p.source,
		DownstreamDirectRemoteAddress: p.source,
		DownstreamLocalAddress:        p.destination,
		StartTime:                     timestamppb.New(p.req.StartTime),
		Duration:                      durationpb.New(in.Duration),
		UpstreamCluster:               cluster,
		RouteName:                     in.RouteName,
		ResponseFlags:                 flags,
		Metadata:                      md,
		StreamId:                      p.requestID,
		AccessLogType:                 accesslogdatav3.AccessLogType_DownstreamEnd,
	}
	if forwarded {
		common.UpstreamRequestAttemptCount = 1
	}

	request := &accesslogdatav3.HTTPRequestProperties{
		RequestMethod:       corev3.RequestMethod(corev3.RequestMethod_value[strings.ToUpper(reqHeaders.Get(":method"))]),
		Scheme:              reqHeaders.Get(":scheme"),
		Authority:           reqHeaders.Get(":authority"),
		Path:                reqHeaders.Get(":path"),
		UserAgent:           reqHeaders.Get("user-agent"),
		Referer:             reqHeaders.Get("referer"),
		ForwardedFor:        reqHeaders.Get("x-forwarded-for"),
		RequestId:           reqHeaders.Get(HeaderRequestID),
		OriginalPath:        reqHeaders.Get("x-envoy-original-path"),
		RequestHeadersBytes: reqHeaders.byteSize(),
		RequestBodyBytes:    in.RequestBodyBytes,
		RequestHeaders:      loggedHeaders(reqHeaders, in.AdditionalRequestHeaders),
	}
	response := &accesslogdatav3.HTTPResponseProperties{
		ResponseCode:         wrapperspb.UInt32(uint32(status)),
		ResponseHeadersBytes: uint64(len(":status")+len(strconv.Itoa(status))) + respH.byteSize(),
		ResponseBodyBytes:    bodyBytes,
		ResponseHeaders:      loggedHeaders(respH, in.AdditionalResponseHeaders),
		ResponseCodeDetails:  details,
	}
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: common,
		ProtocolVersion:  httpVersion(p.req.Protocol),
		Request:          request,
		Response:         response,
	}
}

func addFilterMetadata(md *corev3.Metadata, ns string, s *structpb.Struct) {
	if md.FilterMetadata == nil {
		md.FilterMetadata = map[string]*structpb.Struct{}
	}
	md.FilterMetadata[ns] = s
}

// loggedHeaders picks the configured names, every value joined with ",", keyed lower-case.
func loggedHeaders(h Headers, names []string) map[string]string {
	var out map[string]string
	for _, n := range names {
		n = strings.ToLower(n)
		if v, ok := h.joined(n); ok {
			if out == nil {
				out = map[string]string{}
			}
			out[n] = v
		}
	}
	return out
}

func httpVersion(protocol string) accesslogdatav3.HTTPAccessLogEntry_HTTPVersion {
	switch protocol {
	case "HTTP/1.0":
		return accesslogdatav3.HTTPAccessLogEntry_HTTP10
	case "HTTP/1.1":
		return accesslogdatav3.HTTPAccessLogEntry_HTTP11
	case "HTTP/2":
		return accesslogdatav3.HTTPAccessLogEntry_HTTP2
	case "HTTP/3":
		return accesslogdatav3.HTTPAccessLogEntry_HTTP3
	default:
		return accesslogdatav3.HTTPAccessLogEntry_PROTOCOL_UNSPECIFIED
	}
}
