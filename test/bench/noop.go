package bench

import (
	"context"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/levyhq/levy/pkg/authz"
)

// Noop is an ext_authz server that allows every request without looking at
// it: the baseline levy is measured against.
type Noop struct {
	authv3.UnimplementedAuthorizationServer
	resp *authv3.CheckResponse
}

var _ authv3.AuthorizationServer = (*Noop)(nil)

// NewNoop returns a server whose one OK response is built here, once.
func NewNoop() *Noop {
	return &Noop{resp: &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}}
}

// Check implements authv3.AuthorizationServer.
func (n *Noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return n.resp, nil
}

// registerLean registers n as levy serve registers levy
// (authz.RegisterFunc): each request read, with levy's codec, into an
// authz.Request (its headers and path), the rest skipped. It is the strict
// no-op baseline, reading what levy reads as levy reads it; one registered
// with authv3.RegisterAuthorizationServer has protobuf read every field.
func registerLean(g grpc.ServiceRegistrar, n *Noop) {
	authz.RegisterFunc(g, func(context.Context, *authz.Request) (*authv3.CheckResponse, error) { return n.resp, nil })
}

// NoopRateLimit is a RateLimitService server that allows every request
// without looking at its descriptors: the baseline levy's RLS is measured
// against.
type NoopRateLimit struct {
	rlsv3.UnimplementedRateLimitServiceServer
	// resps[n] is the OK response for n descriptors.
	resps []*rlsv3.RateLimitResponse
}

var _ rlsv3.RateLimitServiceServer = (*NoopRateLimit)(nil)

// noopMaxDescriptors is how many descriptors NoopRateLimit has a prebuilt
// response for; Envoy routes rarely send more than a handful.
const noopMaxDescriptors = 16

// NewNoopRateLimit returns a server whose OK responses, one for each number
// of descriptors up to noopMaxDescriptors, are built here, once.
func NewNoopRateLimit() *NoopRateLimit {
	n := &NoopRateLimit{}
	for i := range noopMaxDescriptors + 1 {
		n.resps = append(n.resps, okRateLimit(i))
	}
	return n
}

// okRateLimit is an OK response with n OK statuses.
func okRateLimit(n int) *rlsv3.RateLimitResponse {
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for range n {
		resp.Statuses = append(resp.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK})
	}
	return resp
}

// ShouldRateLimit implements rlsv3.RateLimitServiceServer.
func (n *NoopRateLimit) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if d := len(req.GetDescriptors()); d < len(n.resps) {
		return n.resps[d], nil
	}
	return okRateLimit(len(req.GetDescriptors())), nil
}
