package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ratelimitv3common "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/rls"
	"github.com/levyhq/levy/pkg/server"
	"github.com/levyhq/levy/test/envoy"
)

const stormRules = `
domain: storm
descriptors:
  - key: k
    rate_limit: {unit: second, requests_per_unit: 1000000000}
`

// stormRequest is a RateLimitRequest of n descriptors, each of entries
// entries, the first matching the storm domain's rule (a limit of its own).
func stormRequest(n, entries int, tag string) *rlsv3.RateLimitRequest {
	req := &rlsv3.RateLimitRequest{Domain: "storm"}
	for i := range n {
		d := &ratelimitv3common.RateLimitDescriptor{}
		d.Entries = append(d.Entries, &ratelimitv3common.RateLimitDescriptor_Entry{Key: "k", Value: fmt.Sprintf("%s-%d", tag, i)})
		for j := 1; j < entries; j++ {
			d.Entries = append(d.Entries, &ratelimitv3common.RateLimitDescriptor_Entry{Key: "remote_address", Value: "10.0.0.1"})
		}
		req.Descriptors = append(req.Descriptors, d)
	}
	return req
}

// latencies is what one client saw: every call's time, and the calls that
// failed.
type latencies struct {
	d      []time.Duration
	failed int
}

func (l latencies) quantile(q float64) time.Duration {
	s := slices.Clone(l.d)
	slices.Sort(s)
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

func (l latencies) String() string {
	return fmt.Sprintf("%d calls, %d failed, p50 %s p99 %s max %s", len(l.d), l.failed, l.quantile(0.5), l.quantile(0.99), l.quantile(1))
}

// No request can hurt others: while one client hammers RateLimitService
// with requests of the most descriptors and entries allowed and with
// requests far over the caps (100,000 descriptors), another client's
// ext_authz and RateLimitService decisions keep succeeding, at a latency
// within a generous multiple of the same client's alone a moment before.
func TestOversizedRequestsDoNotHoldUpOthers(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	if err := os.Mkdir(rules, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rules, "storm.yaml"), []byte(stormRules), 0o600); err != nil {
		t.Fatal(err)
	}
	p := serve(t, "--data-dir", filepath.Join(dir, "data"), "--ratelimit-dir", rules)
	key := p.demoKey(t, "pro")

	victimConn := dial(t, p.grpcAddr)
	authz := envoy.NewAuthzClient(victimConn, envoy.AuthzConfig{Timeout: 10 * time.Second})
	victimRLS := rlsv3.NewRateLimitServiceClient(victimConn)
	one := stormRequest(1, 1, "victim")
	victim := func(n int) latencies {
		var out latencies
		for i := range n {
			start := time.Now()
			ok := false
			if i%2 == 0 {
				o, err := authz.Check(context.Background(), &envoy.Request{Path: "/", Headers: []envoy.Header{{Name: "x-api-key", Value: key}}})
				ok = err == nil && o.RPCError == nil && (o.Status == 200 || o.Status == 429)
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := victimRLS.ShouldRateLimit(ctx, one)
				cancel()
				ok = err == nil && resp.GetOverallCode() == rlsv3.RateLimitResponse_OK
			}
			out.d = append(out.d, time.Since(start))
			if !ok {
				out.failed++
			}
		}
		return out
	}
	victim(50) // warm up
	base := victim(400)
	t.Logf("alone:       %s", base)

	// The storm: two callers send the largest requests allowed (64
	// descriptors of 32 entries, 64 limits each), two send 100,000
	// descriptors, each on its own connection.
	maxReq := stormRequest(rls.MaxDescriptors, rls.MaxEntries, "max")
	hugeReq := stormRequest(100_000, 1, "huge")
	t.Logf("request sizes: max allowed %d bytes, 100k descriptors %d bytes", proto.Size(maxReq), proto.Size(hugeReq))
	if proto.Size(maxReq) > server.MaxRecvMsgBytes/4 {
		t.Fatalf("the largest allowed request (%d bytes) is near the message size limit %d", proto.Size(maxReq), server.MaxRecvMsgBytes)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var maxCalls, hugeCalls atomic.Int64
	var hugeCodes sync.Map
	for i := range 4 {
		c := rlsv3.NewRateLimitServiceClient(dial(t, p.grpcAddr))
		req, calls := maxReq, &maxCalls
		if i%2 == 1 {
			req, calls = hugeReq, &hugeCalls
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.ShouldRateLimit(ctx, req)
				cancel()
				calls.Add(1)
				if req == hugeReq {
					hugeCodes.Store(status.Code(err), true)
				} else if err != nil {
					t.Errorf("a request of the largest allowed size: %v", err)
					return
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the storm build
	storm := victim(400)
	close(stop)
	wg.Wait()
	t.Logf("under storm: %s", storm)
	t.Logf("storm calls: %d of the largest allowed, %d of 100k descriptors", maxCalls.Load(), hugeCalls.Load())
	hugeCodes.Range(func(k, _ any) bool {
		if c := k.(codes.Code); c != codes.ResourceExhausted {
			t.Errorf("a request of 100k descriptors answered %s, want ResourceExhausted (refused by its size, unread)", c)
		}
		return true
	})
	if storm.failed > 0 {
		t.Fatalf("%d of the other client's decisions failed during the storm", storm.failed)
	}
	// Generous: two cores shared with the storm's own clients. Before the
	// caps, one 100k-descriptor request held every decision for seconds.
	bound := 20*base.quantile(0.99) + 100*time.Millisecond
	if p99 := storm.quantile(0.99); p99 > bound {
		t.Fatalf("under storm p99 %s, over the bound %s (20x the p99 alone + 100ms)", p99, bound)
	}
}
