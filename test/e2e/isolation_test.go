package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ratelimitv3common "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/rls"
	"github.com/levyhq/levy/pkg/server"
)

// stormRules is the storm domain: a limit per value of k, and below it a
// chain of rules e1..e31 ending in a limit, so that a descriptor of 32
// entries (the most allowed) has a limit of its own.
func stormRules() string {
	var b strings.Builder
	b.WriteString("domain: storm\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1000000000}\n")
	indent := "    "
	for j := 1; j < rls.MaxEntries; j++ {
		fmt.Fprintf(&b, "%sdescriptors:\n%s  - key: e%d\n", indent, indent, j)
		indent += "    "
	}
	fmt.Fprintf(&b, "%srate_limit: {unit: second, requests_per_unit: 1000000000}\n", indent)
	return b.String()
}

// isolationConfig is the demo's pro plan. Its store timeout is 250ms
// rather than 50: two cores are shared by levy, Redis, the storm's clients
// and other tests, and a 50ms timeout trips on scheduling alone.
const isolationConfig = `
store: {timeout: 250ms}
demo: true
plans:
  pro: {model: tiered, rate: {requests: 100, per: 1s, burst: 200}}
`

// rawCodec sends messages already encoded (*[]byte), so that the storm's
// clients spend no CPU encoding 2 MB requests again and again.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append((*v.(*[]byte))[:0], data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// stormRequest is a RateLimitRequest of n descriptors, each of entries
// entries, the first matching the storm domain's rule (a limit of its own).
func stormRequest(n, entries int, tag string) *rlsv3.RateLimitRequest {
	req := &rlsv3.RateLimitRequest{Domain: "storm"}
	for i := range n {
		d := &ratelimitv3common.RateLimitDescriptor{}
		d.Entries = append(d.Entries, &ratelimitv3common.RateLimitDescriptor_Entry{Key: "k", Value: fmt.Sprintf("%s-%d", tag, i)})
		for j := 1; j < entries; j++ {
			d.Entries = append(d.Entries, &ratelimitv3common.RateLimitDescriptor_Entry{Key: fmt.Sprintf("e%d", j), Value: "10.0.0.1"})
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
	errs   []string // the first few failures
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
	t.Run("local", func(t *testing.T) { testOversizedRequests(t) })
	t.Run("redis", func(t *testing.T) {
		rdb := redistest.Start(t)
		rdb.Client().ConfigSet(context.Background(), "slowlog-log-slower-than", "5000")
		testOversizedRequests(t, "--store", "redis", "--redis-addr", rdb.Addr)
		stats, _ := rdb.Client().Info(context.Background(), "commandstats").Result()
		t.Logf("redis: %s", grepLines(stats, "evalsha"))
		slow, _ := rdb.Client().SlowLogGet(context.Background(), 10).Result()
		for _, s := range slow {
			t.Logf("redis slow log: %s %d args", s.Duration, len(s.Args))
		}
	})
}

func testOversizedRequests(t *testing.T, store ...string) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	if err := os.Mkdir(rules, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rules, "storm.yaml"), []byte(stormRules()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, isolationConfig)
	p := serve(t, append([]string{"--config", cfg, "--data-dir", filepath.Join(dir, "data"), "--ratelimit-dir", rules}, store...)...)
	key := p.demoKey(t, "pro")

	victimConn := dial(t, p.grpcAddr)
	authz := envoyclient.NewAuthzClient(victimConn, envoyclient.AuthzConfig{Timeout: 10 * time.Second})
	victimRLS := rlsv3.NewRateLimitServiceClient(victimConn)
	one := stormRequest(1, 1, "victim")
	victim := func(n int) latencies {
		var out latencies
		for i := range n {
			start := time.Now()
			ok := false
			if i%2 == 0 {
				o, err := authz.Check(context.Background(), &envoyclient.Request{Path: "/", Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
				ok = err == nil && o.RPCError == nil && (o.Status == 200 || o.Status == 429)
				if !ok && len(out.errs) < 5 {
					out.errs = append(out.errs, fmt.Sprintf("ext_authz: %v %v %d %s", err, o.RPCError, o.Status, o.Body))
				}
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := victimRLS.ShouldRateLimit(ctx, one)
				cancel()
				ok = err == nil && resp.GetOverallCode() == rlsv3.RateLimitResponse_OK
				if !ok && len(out.errs) < 5 {
					out.errs = append(out.errs, fmt.Sprintf("RLS: %v %v", err, resp.GetOverallCode()))
				}
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
	maxBytes, err := proto.Marshal(maxReq)
	if err != nil {
		t.Fatal(err)
	}
	hugeBytes, err := proto.Marshal(hugeReq)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		conn := dial(t, p.grpcAddr)
		req, calls := maxBytes, &maxCalls
		if i%2 == 1 {
			req, calls = hugeBytes, &hugeCalls
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp []byte
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := conn.Invoke(ctx, "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", &req, &resp,
					grpc.ForceCodec(rawCodec{}), grpc.MaxCallSendMsgSize(len(hugeBytes)+1))
				cancel()
				calls.Add(1)
				if i%2 == 0 && err == nil && calls.Load() == 1 {
					var r rlsv3.RateLimitResponse
					if err := proto.Unmarshal(resp, &r); err != nil || len(r.GetStatuses()) != rls.MaxDescriptors || r.GetStatuses()[0].GetCurrentLimit() == nil {
						t.Errorf("the largest request is not decided against a limit per descriptor: %v %v", err, &r)
					}
				}
				if i%2 == 1 {
					hugeCodes.Store(status.Code(err), true)
				} else if err != nil {
					t.Errorf("a request of the largest allowed size: %v", err)
					return
				}
			}
		}()
	}
	// The storm is on once both kinds of request have been answered.
	await.Until(t, 10*time.Second, func() bool { return maxCalls.Load() > 0 && hugeCalls.Load() > 0 }, "the storm to build")
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
		t.Fatalf("%d of the other client's decisions failed during the storm: %q", storm.failed, storm.errs)
	}
	// Generous: two cores shared with the storm's own clients. Before the
	// caps, one 100k-descriptor request held every decision for seconds.
	bound := 20*base.quantile(0.99) + 100*time.Millisecond
	if p99 := storm.quantile(0.99); p99 > bound {
		t.Fatalf("under storm p99 %s, over the bound %s (20x the p99 alone + 100ms)", p99, bound)
	}
}
