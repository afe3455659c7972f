package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/test/envoy"
)

const (
	// callers is how many calls are in flight at once.
	callers = 32
	// conns is how many gRPC connections the callers share, round robin.
	conns = 4
)

// BenchmarkCheck measures Check on the no-op server and on levy with the
// same harness, client and request; see the package doc.
func BenchmarkCheck(b *testing.B) {
	env := newEnv(b)
	for _, t := range env.targets {
		b.Run(t.name, func(b *testing.B) {
			b.ReportAllocs()
			b.ResetTimer()
			res, err := run(t, env.req, callers, b.N)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(res.calls)/res.elapsed.Seconds(), "checks/s")
			b.ReportMetric(res.hist.quantile(0.50).Seconds()*1e6, "p50-us")
			b.ReportMetric(res.hist.quantile(0.99).Seconds()*1e6, "p99-us")
			b.ReportMetric(res.cpu.Seconds()*1e6/float64(res.calls), "cpu-us/check")
		})
	}
}

// TestBenchHarnessAllows runs the benchmark harness briefly against both
// servers: every call must be allowed and counted.
func TestBenchHarnessAllows(t *testing.T) {
	env := newEnv(t)
	const n = 200
	for _, tg := range env.targets {
		res, err := run(tg, env.req, callers, n)
		if err != nil {
			t.Fatalf("%s: %v", tg.name, err)
		}
		if res.calls != n || res.hist.count() != n {
			t.Fatalf("%s: %d calls, %d latencies recorded, want %d", tg.name, res.calls, res.hist.count(), n)
		}
		if p50, p99 := res.hist.quantile(0.5), res.hist.quantile(0.99); p50 <= 0 || p99 < p50 {
			t.Fatalf("%s: p50 %v, p99 %v", tg.name, p50, p99)
		}
	}
	// The levy answer is levy's allow, not a stand-in.
	resp, err := env.targets[1].clients[0].Check(context.Background(), env.req)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, h := range resp.GetOkResponse().GetHeaders() {
		got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	if got["x-consumer-id"] != "bench" || got["x-consumer-plan"] != "bench" {
		t.Fatalf("levy allow headers %v, want consumer bench on plan bench", got)
	}
	if rm := resp.GetOkResponse().GetHeadersToRemove(); len(rm) != 1 || rm[0] != "x-api-key" {
		t.Fatalf("levy removes %v, want [x-api-key]", rm)
	}
}

// target is one server under test and its clients.
type target struct {
	name    string
	clients []authv3.AuthorizationClient
	conns   []*grpc.ClientConn
	// check validates one response.
	check func(*authv3.CheckResponse) error
}

// env is both servers, their clients and the request they are sent.
type env struct {
	targets []*target // noop, then levy
	req     *authv3.CheckRequest
}

// benchConfig is levy's config for the benchmark: one consumer whose plan
// never denies within a run (a rate of 1e12/s, a quota of 1e15 a month).
const benchConfig = `
store:
  type: local
  data_dir: %s
dev_mode: true
keys:
  headers: [x-api-key]
  prefix: levy
plans:
  bench:
    model: tiered
    rate: {requests: 1000000000000, per: 1s}
    quota: {requests: 1000000000000000, period: month}
    costs:
      /v1/search: 5
consumers:
  - id: bench
    plan: bench
    keys:
      - id: bench-key
        key: %s
`

func newEnv(tb testing.TB) *env {
	tb.Helper()
	key, err := apikey.Generate("levy")
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	cfg, err := config.Parse(fmt.Appendf(nil, benchConfig, dir, key), "bench.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}

	db, err := localstore.Open(cfg.Store.DataDir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	lim, err := limiter.NewLocal(limiter.LocalConfig{Counters: db})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := lim.Close(); err != nil {
			tb.Error(err)
		}
	})
	snap, err := snapshot(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	levy := authz.New(authz.Config{Snapshot: snap, Limiter: lim, Log: infoLogger()})

	e := &env{req: checkRequest(tb, key)}
	e.targets = []*target{
		{name: "noop", check: isAllow},
		{name: "levy", check: isAllow},
	}
	for i, srv := range []authv3.AuthorizationServer{NewNoop(), levy} {
		addr := serve(tb, srv)
		for range conns {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { conn.Close() })
			e.targets[i].clients = append(e.targets[i].clients, authv3.NewAuthorizationClient(conn))
			e.targets[i].conns = append(e.targets[i].conns, conn)
		}
		// Connect every connection and, for levy, take the key's first
		// decision, so that the measured calls find everything in memory.
		for _, c := range e.targets[i].clients {
			resp, err := c.Check(context.Background(), e.req)
			if err == nil {
				err = e.targets[i].check(resp)
			}
			if err != nil {
				tb.Fatalf("%s: warm-up: %v", e.targets[i].name, err)
			}
		}
	}
	return e
}

// snapshot builds the authz snapshot the way pkg/server does, without demo
// consumers.
func snapshot(cfg *config.Config) (*authz.Snapshot, error) {
	catalog, err := cfg.Catalog()
	if err != nil {
		return nil, err
	}
	consumers, keys := cfg.Directory()
	return &authz.Snapshot{
		Catalog:          catalog,
		Directory:        apikey.NewIndex(consumers, keys),
		Hasher:           cfg.Hasher(),
		KeyHeaders:       cfg.Keys.Headers,
		Bearer:           cfg.Keys.BearerEnabled(),
		ConsumerHeader:   cfg.Headers.ConsumerID,
		PlanHeader:       cfg.Headers.Plan,
		CredentialHeader: cfg.Headers.CredentialID,
	}, nil
}

// infoLogger is levy serve's default logger (JSON at info) with its output
// thrown away: what levy pays for logging on the allow path.
func infoLogger() *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "ts"
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
}

// serve starts a gRPC server with levy serve's options on 127.0.0.1:0.
func serve(tb testing.TB, srv authv3.AuthorizationServer) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := grpc.NewServer(
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(10000),
	)
	authv3.RegisterAuthorizationServer(g, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Serve(lis)
	}()
	tb.Cleanup(func() {
		g.Stop()
		<-done
	})
	return lis.Addr().String()
}

// checkRequest is what Envoy sends for an SDK's GET with an API key.
func checkRequest(tb testing.TB, key string) *authv3.CheckRequest {
	tb.Helper()
	req := envoy.BuildCheckRequest(&envoy.Request{
		Method:        "GET",
		Scheme:        "https",
		Authority:     "api.example.com",
		Path:          "/v1/items?limit=20&cursor=eyJpZCI6NDJ9",
		Protocol:      "HTTP/2",
		SourceAddress: "203.0.113.7:51234",
		RequestID:     "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
		Headers: []envoy.Header{
			{Name: "x-api-key", Value: key},
			{Name: "user-agent", Value: "example-sdk-python/2.14.0 python/3.12.4 linux/x86_64"},
			{Name: "accept", Value: "application/json"},
			{Name: "accept-encoding", Value: "gzip, deflate, br"},
			{Name: "accept-language", Value: "en-US,en;q=0.9"},
			{Name: "x-forwarded-for", Value: "198.51.100.23, 203.0.113.7"},
			{Name: "x-forwarded-proto", Value: "https"},
			{Name: "x-envoy-external-address", Value: "198.51.100.23"},
			{Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			{Name: "cache-control", Value: "no-cache"},
		},
	}, 1)
	if req == nil {
		tb.Fatal("envoy.BuildCheckRequest refused the request")
	}
	return req
}

// isAllow accepts an OK CheckResponse with an OK HTTP response.
func isAllow(resp *authv3.CheckResponse) error {
	if code := resp.GetStatus().GetCode(); code != 0 {
		return fmt.Errorf("status code %d (%s), want 0 (allow)", code, resp.GetStatus().GetMessage())
	}
	if resp.GetOkResponse() == nil {
		return errors.New("an allow without an ok_response")
	}
	return nil
}

// result is one run of the harness.
type result struct {
	calls   int64
	elapsed time.Duration
	// cpu is the CPU time the whole process (clients and server) used.
	cpu  time.Duration
	hist *histogram
}

const checkMethod = "/envoy.service.auth.v3.Authorization/Check"

// run makes n calls of req on t from workers concurrent callers, each
// taking the next connection round robin, and validates every response. It
// stops at the first failure and returns it.
func run(t *target, req *authv3.CheckRequest, workers, n int) (result, error) {
	ctx := context.Background()
	var (
		next     atomic.Int64
		failed   atomic.Bool
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	hists := make([]histogram, workers) // one per caller: no sharing per call
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		failed.Store(true)
	}
	cpu0 := processCPU()
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := &hists[w]
			for !failed.Load() {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				c := t.conns[i%int64(len(t.conns))]
				var w wireResponse
				t0 := time.Now()
				err := c.Invoke(ctx, checkMethod, req, &w, grpc.ForceCodecV2(wireCodec{}))
				h.record(time.Since(t0))
				if err == nil {
					err = w.allowed()
				}
				if err != nil {
					fail(fmt.Errorf("%s: call %d: %w", t.name, i, err))
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	if firstErr != nil {
		return result{}, firstErr
	}
	total := &histogram{}
	for i := range hists {
		total.merge(&hists[i])
	}
	return result{calls: int64(n), elapsed: elapsed, cpu: cpu, hist: total}, nil
}

// processCPU is the user and system CPU time this process has used. Unlike
// checks/s it hardly moves when other processes compete for the CPUs.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// histogram is a log-linear latency histogram in nanoseconds, as HDR
// histograms are: values below 2^subBits ns are exact, above that every
// power of two has 2^subBits buckets (under 1.6% error). Recording is an
// index computation and an increment, with no allocation or lock.
type histogram struct {
	counts [(64 - subBits + 1) << subBits]uint64
}

const subBits = 6

func bucketOf(v uint64) int {
	if v < 1<<subBits {
		return int(v)
	}
	shift := bits.Len64(v) - subBits - 1
	return (shift+1)<<subBits | int(v>>shift&(1<<subBits-1))
}

// bucketTop is the largest value that falls in bucket i.
func bucketTop(i int) uint64 {
	if i < 1<<subBits {
		return uint64(i)
	}
	shift := i>>subBits - 1
	mant := uint64(i&(1<<subBits-1)) | 1<<subBits
	return (mant+1)<<shift - 1
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(uint64(max(d, 0)))]++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

func (h *histogram) count() int64 {
	var n uint64
	for _, c := range h.counts {
		n += c
	}
	return int64(n)
}

// quantile returns the upper bound of the bucket holding the q-quantile.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.count()
	if n == 0 {
		return 0
	}
	rank := uint64(max(1, math.Ceil(q*float64(n))))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(bucketTop(i))
		}
	}
	return time.Duration(bucketTop(len(h.counts) - 1))
}

func TestHistogram(t *testing.T) {
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 1000, 12345, 999_999, 1 << 40, 1<<63 - 1} {
		i := bucketOf(v)
		if top := bucketTop(i); top < v || i > 0 && bucketTop(i-1) >= v {
			t.Fatalf("%d: bucket %d holds (%d, %d]", v, i, bucketTop(i-1), top)
		}
		if top := bucketTop(i); float64(top-v) > float64(v)/(1<<subBits) {
			t.Fatalf("%d: bucket top %d is too far off", v, top)
		}
	}
	var h histogram
	for v := 1; v <= 1000; v++ {
		h.record(time.Duration(v) * time.Microsecond)
	}
	if p50, p99 := h.quantile(0.5), h.quantile(0.99); p50 < 500*time.Microsecond || p50 > 508*time.Microsecond ||
		p99 < 990*time.Microsecond || p99 > 1006*time.Microsecond {
		t.Fatalf("p50 %v, p99 %v, want about 500µs and 990µs", p50, p99)
	}
}
