// Package envoytest starts a gRPC server on loopback for a client of
// package envoy to call in a test. It is test scaffolding, kept out of
// package envoy so that the levy binary, which ships that client, does not
// link package testing.
package envoytest

import (
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Loopback starts a gRPC server on 127.0.0.1:0 with the services register
// adds, and returns a client connection to it, for a client of package
// envoy to call. Both stop when the test ends.
func Loopback(t testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	return LoopbackWith(t, nil, register)
}

// LoopbackWith is Loopback with a server built with opts (levy's own
// codec, say).
func LoopbackWith(t testing.TB, opts []grpc.ServerOption, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer(opts...)
	register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		<-served
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-served
	})
	return conn
}
