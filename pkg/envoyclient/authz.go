package envoyclient

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Ext_authz settings and names from Envoy.
const (
	// DefaultAuthzTimeout is the ext_authz grpc_service timeout when none is configured.
	DefaultAuthzTimeout = 200 * time.Millisecond
	// ExtAuthzNamespace is the dynamic-metadata namespace of the HTTP ext_authz filter.
	ExtAuthzNamespace = "envoy.filters.http.ext_authz"
	// ExtAuthzDurationKey is the field Envoy adds to the dynamic metadata on OK.
	ExtAuthzDurationKey = "ext_authz_duration"

	detailsAuthzDenied = "ext_authz_denied"
	detailsAuthzError  = "ext_authz_error"
)

// AuthzConfig mirrors the ext_authz filter settings that change the outcome.
type AuthzConfig struct {
	// Timeout of the Check call; 0 means 200ms (Envoy's default), a negative value means none.
	Timeout time.Duration
	// FailureModeAllow lets the request through when the call fails or times out. The client
	// then behaves as if failure_mode_allow_header_add were also set: the upstream request gets
	// x-envoy-auth-failure-mode-allowed: true.
	FailureModeAllow bool
	// StatusOnError is the status sent when the call fails and FailureModeAllow is off;
	// default 403.
	StatusOnError int
	// AllowedHeaders, if set, are the only header keys sent in the CheckRequest headers map,
	// pseudo-headers included (Envoy adds none for a gRPC service). Matching is exact and
	// case-sensitive against Envoy's lower-case keys, as an exact StringMatcher is.
	AllowedHeaders []string
	// DisallowedHeaders are header keys never sent (exact, case-sensitive).
	DisallowedHeaders []string
	// EncodeRawHeaders sends the headers as encode_raw_headers does: in
	// header_map, one entry per header line (repeated headers not joined),
	// each value as raw_value bytes, not sanitised; the headers map is
	// left empty.
	EncodeRawHeaders bool
}

// AuthzClient calls Authorization/Check the way Envoy's HTTP ext_authz filter does and applies
// the answer to the request and the response.
type AuthzClient struct {
	client authv3.AuthorizationClient
	cfg    AuthzConfig
}

// NewAuthzClient returns a client that sends its checks on conn.
func NewAuthzClient(conn grpc.ClientConnInterface, cfg AuthzConfig) *AuthzClient {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultAuthzTimeout
	}
	if cfg.StatusOnError == 0 {
		cfg.StatusOnError = http.StatusForbidden
	}
	return &AuthzClient{client: authv3.NewAuthorizationClient(conn), cfg: cfg}
}

// Outcome is what the ext_authz filter made of one request.
type Outcome struct {
	Allowed            bool             // forwarded upstream
	Status             int              // HTTP status the downstream client gets: 200 when allowed (upstream assumed to answer 200), else the local reply status
	UpstreamHeaders    Headers          // request headers the upstream receives (after OkHttpResponse mutations), incl pseudo-headers; nil when not allowed
	ResponseHeaders    Headers          // headers on the response to the client (allow: response_headers_to_add applied to an empty upstream response; deny: the local reply's)
	Body               string           // local reply body on deny
	DynamicMetadata    *structpb.Struct // what Envoy stores under "envoy.filters.http.ext_authz" (nil if none); on OK it includes ext_authz_duration
	FailureModeAllowed bool             // allowed because of an RPC error with FailureModeAllow
	RPCError           error
	CheckRequest       *authv3.CheckRequest
	CheckResponse      *authv3.CheckResponse

	// RequestID is the x-request-id of the request (given or generated).
	RequestID string
	// StartTime is the stream start time used for request.time.
	StartTime time.Time
	// StreamID is the stream id sent as attributes.request.http.id.
	StreamID uint64
	// ResponseCodeDetails is Envoy's response code details for a local reply:
	// "ext_authz_denied" or "ext_authz_error"; "" when allowed.
	ResponseCodeDetails string

	downstreamHeaders Headers      // the request headers before ext_authz changed them
	responseOps       []responseOp // response_headers_to_add, for ApplyResponseHeaders
}

// ApplyResponseHeaders returns the upstream response headers after the OK response's
// response_headers_to_add have been applied, as the filter's encodeHeaders does: appends first,
// then overwrites, then add-if-absent, then overwrite-if-exists.
func (o *Outcome) ApplyResponseHeaders(upstream Headers) Headers {
	out := upstream.clone()
	for _, kind := range []responseOpKind{opAdd, opSet, opAddIfAbsent, opOverwriteIfExists} {
		for _, op := range o.responseOps {
			if op.kind != kind {
				continue
			}
			switch kind {
			case opAdd:
				out.add(op.key, op.value)
			case opSet:
				out.set(op.key, op.value)
			case opAddIfAbsent:
				if !out.Has(op.key) {
					out.add(op.key, op.value)
				}
			case opOverwriteIfExists:
				if out.Has(op.key) {
					out.set(op.key, op.value)
				}
			}
		}
	}
	return out
}

type responseOpKind int

const (
	opAdd responseOpKind = iota
	opSet
	opAddIfAbsent
	opOverwriteIfExists
)

type responseOp struct {
	kind       responseOpKind
	key, value string
}

// BuildCheckRequest is what Envoy's check_request_utils.cc builds; streamID goes in
// attributes.request.http.id as a decimal string. It returns nil for a Request Envoy would
// reject before any filter runs (see [AuthzClient.Check]). A generated x-request-id differs on
// every call unless req.RequestID is set.
func BuildCheckRequest(req *Request, streamID uint64) *authv3.CheckRequest {
	p, err := prepare(req)
	if err != nil {
		return nil
	}
	return buildCheckRequest(p, streamID, &AuthzConfig{})
}

func buildCheckRequest(p *prepared, streamID uint64, cfg *AuthzConfig) *authv3.CheckRequest {
	headers := map[string]string{}
	var raw *corev3.HeaderMap
	if cfg.EncodeRawHeaders {
		headers, raw = nil, &corev3.HeaderMap{}
	}
	for _, h := range p.headers {
		if h.Name == HeaderAuthPartialBody {
			continue
		}
		if contains(cfg.DisallowedHeaders, h.Name) {
			continue
		}
		if cfg.AllowedHeaders != nil && !contains(cfg.AllowedHeaders, h.Name) {
			continue
		}
		if raw != nil {
			raw.Headers = append(raw.Headers, &corev3.HeaderValue{Key: h.Name, RawValue: []byte(h.Value)})
			continue
		}
		v := sanitizeUTF8(h.Value)
		if old, ok := headers[h.Name]; ok {
			headers[h.Name] = old + "," + v
		} else {
			headers[h.Name] = v
		}
	}
	source := &authv3.AttributeContext_Peer{Address: p.source}
	if svc := p.headers.Get(headerDownstreamServiceCluster); svc != "" {
		source.Service = sanitizeUTF8(svc)
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      source,
		Destination: &authv3.AttributeContext_Peer{Address: p.destination},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(p.req.StartTime),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:        strconv.FormatUint(streamID, 10),
				Method:    sanitizeUTF8(p.headers.Get(":method")),
				Path:      sanitizeUTF8(p.headers.Get(":path")),
				Host:      sanitizeUTF8(p.headers.Get(":authority")),
				Scheme:    sanitizeUTF8(p.headers.Get(":scheme")),
				Size:      0, // bytes received when the headers are decoded; no body is buffered
				Protocol:  p.req.Protocol,
				Headers:   headers,
				HeaderMap: raw,
			},
		},
		MetadataContext:      &corev3.Metadata{},
		RouteMetadataContext: &corev3.Metadata{},
	}}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Check builds the CheckRequest as Envoy does, calls Authorization/Check with the timeout, and
// applies the response as Envoy does. The returned error is only for a bad Request (e.g. a path
// without a leading "/"); RPC failures are folded into the Outcome per
// FailureModeAllow/StatusOnError.
func (c *AuthzClient) Check(ctx context.Context, req *Request) (*Outcome, error) {
	p, err := prepare(req)
	if err != nil {
		return nil, err
	}
	streamID := rand.Uint64()
	creq := buildCheckRequest(p, streamID, &c.cfg)
	out := &Outcome{
		CheckRequest:      creq,
		RequestID:         p.requestID,
		StartTime:         p.req.StartTime,
		StreamID:          streamID,
		downstreamHeaders: p.headers.clone(),
	}

	callCtx, cancel := ctx, context.CancelFunc(func() {})
	if c.cfg.Timeout > 0 {
		callCtx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
	}
	start := time.Now()
	resp, err := c.client.Check(callCtx, creq)
	elapsed := time.Since(start)
	cancel()
	if err != nil {
		out.RPCError = err
		c.applyError(out, p, nil)
		return out, nil
	}
	out.CheckResponse = resp

	// ext_authz_grpc_impl.cc: the deprecated ok_response.dynamic_metadata wins when set.
	md := resp.GetDynamicMetadata()
	if ok := resp.GetOkResponse(); ok != nil && ok.GetDynamicMetadata() != nil {
		md = ok.GetDynamicMetadata()
	}
	errResp := resp.GetErrorResponse()
	isOK := resp.GetStatus().GetCode() == 0 && errResp == nil
	if len(md.GetFields()) > 0 {
		md = proto.Clone(md).(*structpb.Struct)
		if isOK {
			md.Fields[ExtAuthzDurationKey] = structpb.NewNumberValue(float64(elapsed.Milliseconds()))
		}
		out.DynamicMetadata = md
	}

	switch {
	case errResp != nil:
		c.applyError(out, p, errResp)
	case isOK:
		applyOK(out, p, resp.GetOkResponse())
	default:
		applyDenied(out, resp.GetDeniedResponse())
	}
	return out, nil
}

// applyOK mirrors the CheckStatus::OK branch of the filter's onComplete.
func applyOK(out *Outcome, p *prepared, ok *authv3.OkHttpResponse) {
	h := p.headers.clone()
	var toAppend []*corev3.HeaderValue
	for _, o := range ok.GetHeaders() {
		if o.GetAppend().GetValue() {
			toAppend = append(toAppend, o.GetHeader())
			continue
		}
		h.set(o.GetHeader().GetKey(), headerValue(o.GetHeader()))
	}
	for _, hv := range toAppend {
		// Envoy only appends to a header that already exists (a TODO in ext_authz.cc).
		if h.Has(hv.GetKey()) {
			h.appendValue(hv.GetKey(), headerValue(hv))
		}
	}
	for _, name := range ok.GetHeadersToRemove() {
		if strings.HasPrefix(name, ":") || strings.EqualFold(name, "host") {
			continue
		}
		h.remove(name)
	}
	if len(ok.GetQueryParametersToSet()) > 0 || len(ok.GetQueryParametersToRemove()) > 0 {
		path := h.Get(":path")
		q := parseQuery(path)
		for _, kv := range ok.GetQueryParametersToSet() {
			q[kv.GetKey()] = []string{kv.GetValue()}
		}
		for _, k := range ok.GetQueryParametersToRemove() {
			delete(q, k)
		}
		h.setInPlace(":path", replaceQuery(path, q))
	}

	for _, o := range ok.GetResponseHeadersToAdd() {
		op := responseOp{key: o.GetHeader().GetKey(), value: headerValue(o.GetHeader())}
		switch {
		case o.GetAppend() != nil && o.GetAppend().GetValue():
			op.kind = opAdd
		case o.GetAppend() != nil:
			op.kind = opSet
		case o.GetAppendAction() == corev3.HeaderValueOption_ADD_IF_ABSENT:
			op.kind = opAddIfAbsent
		case o.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			op.kind = opOverwriteIfExists
		case o.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			op.kind = opSet
		default: // APPEND_IF_EXISTS_OR_ADD, the proto default
			op.kind = opAdd
		}
		out.responseOps = append(out.responseOps, op)
	}

	out.Allowed = true
	out.Status = http.StatusOK
	out.UpstreamHeaders = h
	out.ResponseHeaders = out.ApplyResponseHeaders(nil)
}

// applyDenied mirrors the CheckStatus::Denied branch: a local reply with the denied status
// (403 if unset), body and the headers whose append is false.
func applyDenied(out *Outcome, denied *authv3.DeniedHttpResponse) {
	out.Status = http.StatusForbidden
	if code := int(denied.GetStatus().GetCode()); code > 0 {
		out.Status = code
	}
	out.Body = denied.GetBody()
	out.ResponseHeaders = localReplyHeaders(out.Body, denied.GetHeaders())
	out.ResponseCodeDetails = detailsAuthzDenied
}

// applyError mirrors the CheckStatus::Error branch, for an RPC failure (errResp nil) or an
// error_response.
func (c *AuthzClient) applyError(out *Outcome, p *prepared, errResp *authv3.DeniedHttpResponse) {
	if c.cfg.FailureModeAllow {
		h := p.headers.clone()
		h.add(HeaderAuthFailureModeAllowed, "true")
		out.Allowed = true
		out.FailureModeAllowed = true
		out.Status = http.StatusOK
		out.UpstreamHeaders = h
		return
	}
	out.Status = c.cfg.StatusOnError
	if code := int(errResp.GetStatus().GetCode()); code > 0 {
		out.Status = code
	}
	out.Body = errResp.GetBody()
	out.ResponseHeaders = localReplyHeaders(out.Body, errResp.GetHeaders())
	out.ResponseCodeDetails = detailsAuthzError
}

// localReplyHeaders is the header part of sendLocalReply plus the filter's callback: a
// text/plain content-type when there is a body, then every header whose append is false removed
// and added again (so one key can be given several times, as set-cookie needs). content-length,
// date and server are left out.
func localReplyHeaders(body string, opts []*corev3.HeaderValueOption) Headers {
	var h Headers
	if body != "" {
		h.add("content-type", "text/plain")
	}
	var set []*corev3.HeaderValue
	for _, o := range opts {
		if !o.GetAppend().GetValue() {
			set = append(set, o.GetHeader())
		}
	}
	for _, hv := range set {
		h.remove(hv.GetKey())
	}
	for _, hv := range set {
		h.add(hv.GetKey(), headerValue(hv))
	}
	return h
}

// headerValue returns value, or raw_value when value is empty.
func headerValue(hv *corev3.HeaderValue) string {
	if hv.GetValue() == "" && len(hv.GetRawValue()) > 0 {
		return string(hv.GetRawValue())
	}
	return hv.GetValue()
}

// setInPlace replaces the value of the first entry of name (HeaderMap::setPath on an inline
// header), adding it if absent.
func (h *Headers) setInPlace(name, value string) {
	for i, e := range *h {
		if e.Name == name {
			(*h)[i].Value = value
			return
		}
	}
	h.add(name, value)
}

// parseQuery is Http::Utility::QueryParamsMulti::parseQueryString: undecoded key/value lists.
func parseQuery(path string) map[string][]string {
	q := map[string][]string{}
	i := strings.IndexByte(path, '?')
	if i < 0 {
		return q
	}
	for _, param := range strings.Split(path[i+1:], "&") {
		if param == "" {
			continue
		}
		k, v, _ := strings.Cut(param, "=")
		q[k] = append(q[k], v)
	}
	return q
}

// replaceQuery is QueryParamsMulti::replaceQueryString: keys come out sorted, as from a btree_map.
func replaceQuery(path string, q map[string][]string) string {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(path)
	delim := "?"
	for _, k := range keys {
		for _, v := range q[k] {
			fmt.Fprintf(&b, "%s%s=%s", delim, k, v)
			delim = "&"
		}
	}
	return b.String()
}

// MetadataString returns the value at path in DynamicMetadata the way the route ratelimit
// "metadata" action reads dynamic metadata: only a non-empty string counts; any other kind, an
// empty string or a missing key is reported as absent (and Envoy then uses default_value, or
// produces no descriptor unless skip_if_absent is set).
func (o *Outcome) MetadataString(path ...string) (string, bool) {
	if o == nil || len(path) == 0 {
		return "", false
	}
	s := o.DynamicMetadata
	for i, key := range path {
		v, ok := s.GetFields()[key]
		if !ok {
			return "", false
		}
		if i == len(path)-1 {
			str, isStr := v.GetKind().(*structpb.Value_StringValue)
			if !isStr || str.StringValue == "" {
				return "", false
			}
			return str.StringValue, true
		}
		s = v.GetStructValue()
	}
	return "", false
}
