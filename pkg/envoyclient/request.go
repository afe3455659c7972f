package envoyclient

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Defaults applied to an empty [Request] field.
const (
	DefaultMethod             = "GET"
	DefaultScheme             = "http"
	DefaultAuthority          = "localhost"
	DefaultPath               = "/"
	DefaultSourceAddress      = "127.0.0.1:50000"
	DefaultDestinationAddress = "127.0.0.1:10000"
	DefaultProtocol           = "HTTP/1.1"
)

// Header names the HCM and the filters use.
const (
	HeaderRequestID                = "x-request-id"
	HeaderForwardedProto           = "x-forwarded-proto"
	HeaderAuthFailureModeAllowed   = "x-envoy-auth-failure-mode-allowed"
	HeaderAuthPartialBody          = "x-envoy-auth-partial-body"
	HeaderEnvoyRateLimited         = "x-envoy-ratelimited"
	HeaderXRateLimitLimit          = "x-ratelimit-limit"
	HeaderXRateLimitRemaining      = "x-ratelimit-remaining"
	HeaderXRateLimitReset          = "x-ratelimit-reset"
	headerDownstreamServiceCluster = "x-envoy-downstream-service-cluster"
)

// Request is an HTTP request as it arrives at Envoy.
//
// A "Host" entry in Headers is what HTTP/1 Envoy turns into ":authority": it is used as the
// authority when Authority is empty and never appears under its own name. Connection-specific
// headers (connection, keep-alive, proxy-connection, transfer-encoding, upgrade, and te other
// than "trailers") are stripped as the HCM does.
type Request struct {
	Method        string // default "GET"
	Scheme        string // default "http"
	Authority     string // default "localhost"
	Path          string // with query, e.g. "/v1/items?x=1"; default "/"
	Headers       []Header
	SourceAddress string // TCP peer "ip:port", default "127.0.0.1:50000"
	Protocol      string // "HTTP/1.0", "HTTP/1.1", "HTTP/2" or "HTTP/3"; default "HTTP/1.1"
	RequestID     string // x-request-id; when empty and no x-request-id header, Envoy's HCM generates a UUID v4

	// DestinationAddress is the listener address the request arrived on ("ip:port"),
	// default "127.0.0.1:10000".
	DestinationAddress string
	// StartTime is the stream start time (CheckRequest request.time, access-log start_time);
	// default the time the request is processed.
	StartTime time.Time
}

// prepared is a Request after the codec and the HCM: defaults applied, the header map built.
type prepared struct {
	req         Request
	headers     Headers // the request header map, pseudo-headers first
	requestID   string
	source      *corev3.Address
	destination *corev3.Address
}

// errBadRequest marks a Request that Envoy would never pass to a filter.
var errBadRequest = errors.New("bad request")

var protocols = map[string]bool{"HTTP/1.0": true, "HTTP/1.1": true, "HTTP/2": true, "HTTP/3": true}

// prepare applies defaults and builds the header map the way Envoy's codec and
// ConnectionManagerUtility::mutateRequestHeaders leave it before the first filter runs.
func prepare(in *Request) (*prepared, error) {
	if in == nil {
		return nil, fmt.Errorf("%w: nil request", errBadRequest)
	}
	r := *in
	r.Method = withDefault(r.Method, DefaultMethod)
	r.Scheme = withDefault(strings.ToLower(r.Scheme), DefaultScheme)
	r.Path = withDefault(r.Path, DefaultPath)
	r.SourceAddress = withDefault(r.SourceAddress, DefaultSourceAddress)
	r.DestinationAddress = withDefault(r.DestinationAddress, DefaultDestinationAddress)
	r.Protocol = withDefault(r.Protocol, DefaultProtocol)
	if r.StartTime.IsZero() {
		r.StartTime = time.Now()
	}
	if !protocols[r.Protocol] {
		return nil, fmt.Errorf("%w: protocol %q (want HTTP/1.0, HTTP/1.1, HTTP/2 or HTTP/3)", errBadRequest, r.Protocol)
	}
	if !strings.HasPrefix(r.Path, "/") && r.Path != "*" {
		return nil, fmt.Errorf("%w: path %q does not start with /", errBadRequest, r.Path)
	}
	if strings.ContainsAny(r.Method, " \t\r\n") {
		return nil, fmt.Errorf("%w: method %q", errBadRequest, r.Method)
	}
	src, err := socketAddress(r.SourceAddress)
	if err != nil {
		return nil, fmt.Errorf("%w: source address: %w", errBadRequest, err)
	}
	dst, err := socketAddress(r.DestinationAddress)
	if err != nil {
		return nil, fmt.Errorf("%w: destination address: %w", errBadRequest, err)
	}

	var client Headers
	host := ""
	for _, h := range r.Headers {
		name := strings.ToLower(h.Name)
		switch {
		case name == "":
			return nil, fmt.Errorf("%w: empty header name", errBadRequest)
		case strings.HasPrefix(name, ":"):
			return nil, fmt.Errorf("%w: pseudo-header %q in Headers (use the Request fields)", errBadRequest, h.Name)
		case strings.ContainsAny(name, " \t\r\n"):
			return nil, fmt.Errorf("%w: header name %q", errBadRequest, h.Name)
		case name == "host":
			if host == "" {
				host = h.Value
			}
			continue
		}
		client.add(name, h.Value)
	}
	if r.Authority == "" {
		r.Authority = withDefault(host, DefaultAuthority)
	}
	stripConnectionHeaders(&client)

	headers := Headers{
		{Name: ":authority", Value: r.Authority},
		{Name: ":path", Value: r.Path},
		{Name: ":method", Value: r.Method},
		{Name: ":scheme", Value: r.Scheme},
	}
	headers = append(headers, client...)
	if !headers.Has(HeaderForwardedProto) {
		headers.add(HeaderForwardedProto, r.Scheme)
	}
	switch {
	case r.RequestID != "":
		headers.set(HeaderRequestID, r.RequestID)
	case headers.Has(HeaderRequestID):
		r.RequestID = headers.Get(HeaderRequestID)
	default:
		r.RequestID = newUUID()
		headers.add(HeaderRequestID, r.RequestID)
	}
	return &prepared{req: r, headers: headers, requestID: r.RequestID, source: src, destination: dst}, nil
}

// stripConnectionHeaders removes what the HCM removes from every proxied request.
func stripConnectionHeaders(h *Headers) {
	for _, name := range []string{"keep-alive", "proxy-connection", "transfer-encoding"} {
		h.remove(name)
	}
	upgrade := h.Has("upgrade") && hasToken(h.Values("connection"), "upgrade")
	if !upgrade {
		h.remove("connection")
		h.remove("upgrade")
	}
	if te := h.Values("te"); len(te) > 0 {
		h.remove("te")
		if hasToken(te, "trailers") {
			h.add("te", "trailers")
		}
	}
}

func hasToken(values []string, token string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// socketAddress turns "ip:port" into the Address Envoy's addressToProtobufAddress produces.
func socketAddress(hostport string) (*corev3.Address, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", port, err)
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
	}}}, nil
}

func withDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
