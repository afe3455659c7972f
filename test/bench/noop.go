package bench

import (
	"context"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
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
