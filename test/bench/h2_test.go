package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/envoyclient"
)

// answering is a RateLimitService that answers every call with resp, or err.
type answering struct {
	rlsv3.UnimplementedRateLimitServiceServer
	resp *rlsv3.RateLimitResponse
	err  error
}

func (a *answering) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return a.resp, a.err
}

// TestLeanCallerCountsAllowsAndReportsFailures checks that the lean caller fails a run on
// what Envoy would not count as an allow: a gRPC error, and an OK call
// whose answer is OVER_LIMIT. Big requests and responses, which need the
// server's window updates and several DATA frames, are counted like small
// ones.
func TestLeanCallerCountsAllowsAndReportsFailures(t *testing.T) {
	defer func(was string) { callTimeout = was }(callTimeout)
	callTimeout = "60S"
	small := envoyclient.BuildRateLimitRequest("bench", []envoyclient.Descriptor{{Entries: [][2]string{{"remote_address", "10.0.0.1"}}}}, 0)
	// Larger than the server's first 64 KiB connection window after a few
	// calls, and a response over one 16 KiB frame.
	var many []envoyclient.Descriptor
	for range 400 {
		many = append(many, envoyclient.Descriptor{Entries: [][2]string{{"generic_key", strings.Repeat("v", 100)}}})
	}
	big := envoyclient.BuildRateLimitRequest("bench", many, 0)
	over := okRateLimit(1)
	over.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
	for _, tc := range []struct {
		name    string
		server  *answering
		req     *rlsv3.RateLimitRequest
		wantErr string
	}{
		{"ok", &answering{resp: okRateLimit(1)}, small, ""},
		{"big ok", &answering{resp: okRateLimit(2000)}, big, ""},
		{"grpc error", &answering{err: status.Error(codes.Unavailable, "store down")}, small, `grpc-status "14": store down`},
		{"over limit", &answering{resp: over}, small, "overall_code 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := &target{name: "t", method: rateLimitMethod, check: (*wireResponse).rateLimitOK}
			tg.addr = serve(t, func(s grpc.ServiceRegistrar) { rlsv3.RegisterRateLimitServiceServer(s, tc.server) })
			for range conns {
				c, err := dialH2(tg.addr, tg.method)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.conn.Close() })
				tg.h2 = append(tg.h2, c)
			}
			const n = 500
			res, err := run(tg, []proto.Message{tc.req}, callers, n)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if res.calls != n || res.hist.count() != n {
					t.Fatalf("%d calls, %d latencies, want %d", res.calls, res.hist.count(), n)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want one with %q", err, tc.wantErr)
			}
		})
	}
}

// counting is a RateLimitService that counts the calls of each first
// descriptor value and answers OK.
type counting struct {
	rlsv3.UnimplementedRateLimitServiceServer
	mu    sync.Mutex
	calls map[string]int
}

func (c *counting) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[req.GetDescriptors()[0].GetEntries()[0].GetValue()]++
	return okRateLimit(1), nil
}

// The lean caller sends the run's requests in turn across its
// connections, as grpc-go's callers do, so that the calls in flight are
// different consumers' (on Redis, different keys): each request is sent
// equally often. Each connection counting on its own sent the first
// requests on every connection at once, and more often than the last.
func TestLeanCallerSendsRequestsInTurnAcrossConnections(t *testing.T) {
	srv := &counting{calls: map[string]int{}}
	tg := &target{name: "t", method: rateLimitMethod, check: (*wireResponse).rateLimitOK}
	tg.addr = serve(t, func(s grpc.ServiceRegistrar) { rlsv3.RegisterRateLimitServiceServer(s, srv) })
	for range conns {
		c, err := dialH2(tg.addr, tg.method)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.conn.Close() })
		tg.h2 = append(tg.h2, c)
	}
	const kinds, each = 100, 10
	var reqs []proto.Message
	for i := range kinds {
		addr := envoyclient.Descriptor{Entries: [][2]string{{"remote_address", fmt.Sprint(i)}}}
		reqs = append(reqs, envoyclient.BuildRateLimitRequest("bench", []envoyclient.Descriptor{addr}, 0))
	}
	if _, err := run(tg, reqs, callers, kinds*each); err != nil {
		t.Fatal(err)
	}
	for i := range kinds {
		if got := srv.calls[fmt.Sprint(i)]; got != each {
			t.Fatalf("request %d sent %d times, want %d: %v", i, got, each, srv.calls)
		}
	}
}
