package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/rls"
	"github.com/levyhq/levy/pkg/server"
)

// envCaller set to h2 makes every benchmark call its servers through the
// lean caller (h2.go) instead of grpc-go.
const envCaller = "LEVY_BENCH_CALLER"

const (
	// callers is how many calls are in flight at once.
	callers = 32
	// conns is how many gRPC connections the callers share, round robin.
	conns = 4
)

// BenchmarkCheck measures Check on the no-op server and on levy with the
// same harness, client and request; see the package doc.
func BenchmarkCheck(b *testing.B) { benchCheck(b, localStore()) }

// BenchmarkShouldRateLimit measures ShouldRateLimit on the no-op RLS server
// and on levy's, for a request of one descriptor and one of three.
func BenchmarkShouldRateLimit(b *testing.B) { benchRateLimit(b, localStore()) }

func benchCheck(b *testing.B, st *store) {
	env := newCheckEnv(b, st)
	for _, t := range env.targets {
		b.Run(t.name, func(b *testing.B) { measure(b, t, env.reqs[0].msgs, "check") })
	}
}

// benchRateLimit runs each request on every target, then on every peer,
// so that the figures compared are taken within seconds of each other.
func benchRateLimit(b *testing.B, st *store) {
	env := newRateLimitEnv(b, st)
	for _, r := range env.reqs {
		for _, t := range env.all() {
			b.Run(t.name+"-"+r.name, func(b *testing.B) { measure(b, t, r.msgs, "call") })
		}
	}
}

// measure runs b.N calls of req on t and reports the harness's figures,
// naming them after what one call is ("check" gives checks/s and
// cpu-us/check), and, when t decides on Redis, the commands Redis ran and
// the CPU it used per call. It returns the calls/s it reports.
func measure(b *testing.B, t *target, reqs []proto.Message, what string) float64 {
	if t.skip != "" {
		b.Skip(t.skip)
	}
	var before redisStats
	if t.redis != nil {
		before = readRedisStats(b, t.redis)
	}
	commitsBefore := readCommitStats(b, t.commits)
	b.ReportAllocs()
	b.ResetTimer()
	res, err := run(t, reqs, callers, b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	rate := float64(res.calls) / res.elapsed.Seconds()
	b.ReportMetric(rate, what+"s/s")
	b.ReportMetric(res.hist.quantile(0.50).Seconds()*1e6, "p50-us")
	b.ReportMetric(res.hist.quantile(0.99).Seconds()*1e6, "p99-us")
	if res.cpu >= 0 {
		b.ReportMetric(res.cpu.Seconds()*1e6/float64(res.calls), "cpu-us/"+what)
	}
	if t.redis != nil {
		d := readRedisStats(b, t.redis).since(before)
		n := float64(res.calls)
		if t.scripts {
			b.ReportMetric(float64(d.scripts())/n, "redis-cmds/op")
		}
		b.ReportMetric(float64(d.all())/n, "redis-all-cmds/op")
		b.ReportMetric(d.cpu.Seconds()*1e6/n, "redis-cpu-us/op")
	}
	if t.commits != nil {
		readCommitStats(b, t.commits).since(commitsBefore).report(b, res.elapsed)
	}
	return rate
}

// runBriefly runs the harness with n calls of each request on each target
// and peer not skipped, through grpc-go and through the lean caller, and
// paced through grpc-go: every call must pass the target's check and be
// counted.
func runBriefly(t *testing.T, env *env, n int) {
	t.Helper()
	var lean []*target // the same servers through the lean caller
	for _, tg := range env.measured() {
		if len(tg.h2) == 0 {
			lean = append(lean, viaH2(t, tg, env.reqs))
		}
	}
	for _, r := range env.reqs {
		for _, tg := range append(env.measured(), lean...) {
			res, err := run(tg, r.msgs, callers, n)
			if err != nil {
				t.Fatalf("%s %s: %v", tg.name, r.name, err)
			}
			if res.calls != int64(n) || res.hist.count() != int64(n) {
				t.Fatalf("%s %s: %d calls, %d latencies recorded, want %d", tg.name, r.name, res.calls, res.hist.count(), n)
			}
			if p50, p99 := res.hist.quantile(0.5), res.hist.quantile(0.99); p50 <= 0 || p99 < p50 {
				t.Fatalf("%s %s: p50 %v, p99 %v", tg.name, r.name, p50, p99)
			}
		}
		for _, tg := range env.measured() {
			res, err := runAt(viaGRPC(tg), r.msgs, pacedCallers, n, 10_000)
			if err != nil {
				t.Fatalf("%s %s paced: %v", tg.name, r.name, err)
			}
			if res.calls != int64(n) || res.hist.count() != int64(n) || res.late.count() != int64(n) {
				t.Fatalf("%s %s paced: %d calls, %d latencies and %d send times recorded, want %d",
					tg.name, r.name, res.calls, res.hist.count(), res.late.count(), n)
			}
		}
	}
}

// TestBenchHarnessAllows runs the benchmark harness briefly against both
// servers, levy on each store: every call must be allowed and counted.
func TestBenchHarnessAllows(t *testing.T) { forStores(t, testBenchHarnessAllows) }

func testBenchHarnessAllows(t *testing.T, st *store) {
	env := newCheckEnv(t, st)
	runBriefly(t, env, 200)
	// The levy answers are levy's allows, each for the consumer whose key
	// the request carries, not a stand-in.
	for _, i := range []int{0, benchConsumers - 1} {
		resp, err := authv3.NewAuthorizationClient(env.named("levy").conns[0]).Check(context.Background(), env.reqs[0].msgs[i].(*authv3.CheckRequest))
		if err != nil {
			t.Fatal(err)
		}
		if err := isAllow(resp); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, h := range resp.GetOkResponse().GetHeaders() {
			got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		if want := fmt.Sprintf("bench%d", i); got["x-consumer-id"] != want || got["x-consumer-plan"] != "bench" {
			t.Fatalf("levy allow headers %v, want consumer %s on plan bench", got, want)
		}
		if rm := resp.GetOkResponse().GetHeadersToRemove(); len(rm) != 1 || rm[0] != "x-api-key" {
			t.Fatalf("levy removes %v, want [x-api-key]", rm)
		}
	}
}

// TestRateLimitHarnessAllows runs the harness briefly against both RLS
// servers, levy on each store (and the peer, when there is one), then
// decodes a full answer from each: one OK status per descriptor, and from
// levy a current limit on every one, the last taken from acme's plan.
func TestRateLimitHarnessAllows(t *testing.T) { forStores(t, testRateLimitHarnessAllows) }

func testRateLimitHarnessAllows(t *testing.T, st *store) {
	env := newRateLimitEnv(t, st)
	runBriefly(t, env, 200)
	for _, r := range env.reqs {
		req := r.msgs[0].(*rlsv3.RateLimitRequest)
		for _, tg := range env.measured() {
			resp, err := rlsv3.NewRateLimitServiceClient(tg.conns[0]).ShouldRateLimit(context.Background(), req)
			if err != nil {
				t.Fatalf("%s %s: %v", tg.name, r.name, err)
			}
			if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
				t.Fatalf("%s %s: overall code %v", tg.name, r.name, resp.GetOverallCode())
			}
			sts := resp.GetStatuses()
			if len(sts) != len(req.GetDescriptors()) {
				t.Fatalf("%s %s: %d statuses for %d descriptors", tg.name, r.name, len(sts), len(req.GetDescriptors()))
			}
			for i, st := range sts {
				if st.GetCode() != rlsv3.RateLimitResponse_OK {
					t.Fatalf("%s %s: status %d is %v", tg.name, r.name, i, st.GetCode())
				}
				if tg.name == "noop" {
					continue
				}
				// The peer's rules must match every descriptor with the
				// same limit, or it would answer OK without deciding.
				want := rateLimitWant[req.GetDescriptors()[i].GetEntries()[0].GetKey()]
				lim := st.GetCurrentLimit()
				if lim == nil || lim.GetRequestsPerUnit() != want.rpu || lim.GetUnit() != want.unit {
					t.Fatalf("%s %s: status %d has current limit %v, want %d per %v", tg.name, r.name, i, lim, want.rpu, want.unit)
				}
				if st.GetLimitRemaining() == 0 || st.GetDurationUntilReset() == nil {
					t.Fatalf("%s %s: status %d: %v", tg.name, r.name, i, st)
				}
			}
		}
	}
}

// rateLimitWant is the current limit levy reports for each descriptor of
// the benchmark, by its first key. The consumer's is acme's plan route rate,
// not the rule's own. The peer's rules (see the package doc) give the same.
var rateLimitWant = map[string]struct {
	rpu  uint32
	unit rlsv3.RateLimitResponse_RateLimit_Unit
}{
	"remote_address": {4_000_000_000, rlsv3.RateLimitResponse_RateLimit_SECOND},
	"generic_key":    {4_000_000_000, rlsv3.RateLimitResponse_RateLimit_MINUTE},
	"consumer":       {1_000_000_000, rlsv3.RateLimitResponse_RateLimit_SECOND},
}

// target is one server under test: its connections, the method the
// callers invoke and how they check a response without decoding it.
type target struct {
	name  string
	conns []*grpc.ClientConn
	// h2, when set, is the lean caller's connections (h2.go), which run
	// calls through instead of conns.
	h2     []*h2Conn
	method string
	check  func(*wireResponse) error
	// register serves the target in this process; when nil, the target is
	// another process's server at addr.
	register func(grpc.ServiceRegistrar)
	// opts is the gRPC server options of a target served in this process;
	// nil is levy serve's (server.GRPCOptions).
	opts []grpc.ServerOption
	addr string
	// serverCPU, for a server in another process, is that process's CPU
	// time; nil when it is not known, and cpu-us is then not reported.
	serverCPU func() (time.Duration, error)
	// redis, when set, is the Redis servers the server decides on: measure
	// reports the commands they ran and the CPU they used per call.
	redis redisServers
	// scripts says the server decides with Lua scripts (levy): measure
	// also reports its EVALSHA and EVAL calls per call.
	scripts bool
	// commits, when set, is the registry of the local store's write-behind
	// metrics: measure reports its commits and loss window.
	commits *prometheus.Registry
	// skip, when set, is why the target is not measured.
	skip string
	// nconns, when set, is how many connections the callers share instead
	// of conns.
	nconns int
}

// request is what the callers send, named for sub-benchmarks: call i
// sends msgs[i%len(msgs)] (many consumers' keys, many clients' addresses).
type request struct {
	name string
	msgs []proto.Message
}

// env is both servers of one API, their connections and the requests they
// are sent, and servers of the same API in other processes to compare with.
type env struct {
	targets []*target // noop, then levy
	peers   []*target
	reqs    []request
}

// all is the targets, then the peers.
func (e *env) all() []*target {
	return append(e.targets[:len(e.targets):len(e.targets)], e.peers...)
}

// named is the target or peer called name, or nil.
func (e *env) named(name string) *target {
	for _, t := range e.all() {
		if t.name == name {
			return t
		}
	}
	return nil
}

// measured is the targets and peers that are not skipped.
func (e *env) measured() []*target {
	var out []*target
	for _, t := range e.all() {
		if t.skip == "" {
			out = append(out, t)
		}
	}
	return out
}

// benchConfig is levy's config for the ext_authz benchmark, without its
// benchConsumers consumers: a plan that never denies within a run (a rate of 1e12/s, a quota of 1e15 a
// month).
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
    quota: {requests: 1000000000000, period: month}
    costs:
      /v1/search: 5
consumers:
`

// benchConsumers is how many consumers, each with its own key, the Check
// benchmarks' callers send requests for, in turn.
const benchConsumers = 200

// benchAddresses is how many client addresses the RateLimitService
// benchmarks' requests come from, in turn: a descriptor value each, so
// 1,000 buckets (a limit that a run never reaches).
const benchAddresses = 1000

// rateLimitConfig is levy's config for the RLS benchmark: rules for what
// Envoy's remote_address, generic_key and metadata actions send, all far
// above what a run can use (requests_per_unit is a uint32, so 4e9), and
// consumer acme on a plan whose items route allows 1e9 a second.
const rateLimitConfig = `
store:
  type: local
  data_dir: %s
plans:
  partner:
    model: tiered
    routes:
      items: {rate: {requests: 1000000000, per: 1s}}
consumers:
  - {id: acme, plan: partner}
ratelimit:
  domains:
    - domain: bench
      descriptors:
        - key: remote_address
          rate_limit: {unit: second, requests_per_unit: 4000000000}
        - key: generic_key
          value: items
          rate_limit: {unit: minute, requests_per_unit: 4000000000, name: items}
        - key: consumer
          descriptors:
            - key: route
              rate_limit: {unit: second, requests_per_unit: 4000000000, from_plan: true}
`

// newCheckEnv is the no-op and levy ext_authz servers, levy deciding on
// st, and a CheckRequest with the key of levy's one consumer.
func newCheckEnv(tb testing.TB, st *store) *env {
	tb.Helper()
	consumers, reqs := benchCheckConsumers(tb)
	cfg, lim, commits := levyConfig(tb, st, benchConfig+consumers)
	snap, err := snapshot(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	levy := authz.New(authz.Config{Snapshot: snap, Limiter: lim, Log: infoLogger()})
	return newEnv(tb, checkMethod, (*wireResponse).allowed, []request{{msgs: reqs}},
		&target{name: "noop", register: func(s grpc.ServiceRegistrar) { registerLean(s, NewNoop()) }},
		// The no-op server as one is usually written: grpc-go's defaults,
		// requests decoded by protobuf. noop above is the stricter
		// baseline: levy serve's gRPC options, its codec included.
		&target{name: "noop-plain", opts: []grpc.ServerOption{},
			register: func(s grpc.ServiceRegistrar) { authv3.RegisterAuthorizationServer(s, NewNoop()) }},
		&target{name: "levy", register: func(s grpc.ServiceRegistrar) { authz.Register(s, levy) },
			redis: st.servers, scripts: true, commits: commits})
}

// benchCheckConsumers is the consumers list of benchConfig: benchConsumers
// consumers, each with its own key, and so its own bucket, quota and
// ledger window (what levy decides in production, where one consumer's
// requests rarely share a batch with its own); and a CheckRequest for
// each key.
func benchCheckConsumers(tb testing.TB) (string, []proto.Message) {
	tb.Helper()
	var consumers strings.Builder
	var reqs []proto.Message
	for i := range benchConsumers {
		key, err := apikey.Generate("levy")
		if err != nil {
			tb.Fatal(err)
		}
		fmt.Fprintf(&consumers, "  - id: bench%d\n    plan: bench\n    keys:\n      - id: bench%d-key\n        key: %s\n", i, i, key)
		reqs = append(reqs, checkRequest(tb, key))
	}
	return consumers.String(), reqs
}

// newRateLimitEnv is the no-op and levy RLS servers, levy deciding on st,
// and the requests Envoy sends for one descriptor (the client address) and
// for three (the address, a generic key and the consumer's route). On a
// standalone Redis, the peer RLS (see peerTarget) is measured too.
func newRateLimitEnv(tb testing.TB, st *store) *env {
	tb.Helper()
	cfg, lim, commits := levyConfig(tb, st, rateLimitConfig)
	rules, err := server.RateLimitRules(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	a, err := snapshot(cfg) // its catalog and consumers, as levy serve reads them
	if err != nil {
		tb.Fatal(err)
	}
	levy := rls.New(rls.Config{
		Snapshot: &rls.Snapshot{Rules: rules, Catalog: a.Catalog, Consumers: a.Directory, Shadow: cfg.RateLimit.ShadowMode},
		Limiter:  lim,
		Log:      infoLogger(),
	})
	items := envoyclient.Descriptor{Entries: [][2]string{{"generic_key", "items"}}}
	route := envoyclient.Descriptor{Entries: [][2]string{{"consumer", "acme"}, {"route", "items"}}}
	reqs := []request{{name: "1desc"}, {name: "3desc"}}
	for i := range benchAddresses {
		addr := envoyclient.Descriptor{Entries: [][2]string{{"remote_address", fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)}}}
		reqs[0].msgs = append(reqs[0].msgs, envoyclient.BuildRateLimitRequest("bench", []envoyclient.Descriptor{addr}, 0))
		reqs[1].msgs = append(reqs[1].msgs, envoyclient.BuildRateLimitRequest("bench", []envoyclient.Descriptor{addr, items, route}, 0))
	}
	targets := []*target{
		{name: "noop", register: func(s grpc.ServiceRegistrar) { rlsv3.RegisterRateLimitServiceServer(s, NewNoopRateLimit()) }},
		{name: "levy", register: func(s grpc.ServiceRegistrar) { rlsv3.RegisterRateLimitServiceServer(s, levy) },
			redis: st.servers, scripts: true, commits: commits},
	}
	if st.redis != nil && !st.cluster { // the peer is compared on a standalone Redis only
		targets = append(targets, peerTarget(tb, st))
	}
	return newEnv(tb, rateLimitMethod, (*wireResponse).rateLimitOK, reqs, targets...)
}

// levyConfig parses and validates a config whose first argument is its data
// directory (a temporary one) and opens levy's limiter on st, with the
// registry of its write-behind metrics on the local store.
func levyConfig(tb testing.TB, st *store, text string, args ...any) (*config.Config, limiter.Limiter, *prometheus.Registry) {
	tb.Helper()
	cfg, err := config.Parse(fmt.Appendf(nil, text, append([]any{tb.TempDir()}, args...)...), "bench.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	lim, commits := st.limiter(tb, cfg)
	return cfg, lim, commits
}

// store is where levy keeps its counters: the local store, as levy serve
// --store local, or Redis, as --store redis, with --redis-cluster for a
// Redis Cluster.
type store struct {
	// redis is levy's Redis client, nil for the local store.
	redis redis.UniversalClient
	// cluster says redis is a Redis Cluster's client.
	cluster bool
	// servers reads the statistics of the Redis servers levy decides on.
	servers redisServers
}

// localStore is levy's local store, in a temporary directory per config.
func localStore() *store { return &store{} }

// limiter opens levy's limiter for cfg on s as levy serve does: the local
// limiter over a localstore in cfg's data directory, with its metrics on
// the registry returned, or the Redis limiter with a store timeout of
// redisTimeout (and no registry).
func (s *store) limiter(tb testing.TB, cfg *config.Config) (limiter.Limiter, *prometheus.Registry) {
	tb.Helper()
	if s.redis != nil {
		return limitertest.NewRedis(tb, limiter.RedisConfig{Client: s.redis, Cluster: s.cluster, Timeout: redisTimeout}), nil
	}
	db, err := localstore.Open(cfg.Store.DataDir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	reg := prometheus.NewRegistry()
	lim, err := limiter.NewLocal(limiter.LocalConfig{Counters: db, Registerer: reg})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := lim.Close(); err != nil {
			tb.Error(err)
		}
	})
	return lim, reg
}

// newEnv serves the targets of one API that run in this process, dials
// every target not skipped, and warms every connection up with every
// request. The targets served here are the env's targets, the others its
// peers.
func newEnv(tb testing.TB, method string, check func(*wireResponse) error, reqs []request, targets ...*target) *env {
	tb.Helper()
	e := &env{reqs: reqs}
	for _, t := range targets {
		t.method, t.check = method, check
		if t.register != nil {
			t.addr = serveWith(tb, t.opts, t.register)
			e.targets = append(e.targets, t)
		} else {
			e.peers = append(e.peers, t)
		}
		if t.skip == "" {
			dial(tb, t, reqs)
			if os.Getenv(envCaller) == "h2" {
				*t = *viaH2(tb, t, reqs)
			}
		}
	}
	return e
}

// dial opens t's connections to t.addr, connects every one and, for levy,
// takes the first decision of every request, so that the measured calls
// find everything in memory.
func dial(tb testing.TB, t *target, reqs []request) {
	tb.Helper()
	n := conns
	if t.nconns > 0 {
		n = t.nconns
	}
	for range n {
		conn, err := grpc.NewClient(t.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { conn.Close() })
		t.conns = append(t.conns, conn)
	}
	for _, r := range reqs {
		for i, msg := range r.msgs { // every consumer's key known, every script loaded
			if err := t.call(context.Background(), t.conns[i%len(t.conns)], msg); err != nil {
				tb.Fatalf("%s: warm-up: %v", t.name, err)
			}
		}
	}
}

// viaH2 is t called through the lean caller (h2.go) on connections of
// its own, warmed up with every request: the same server, measured with
// less of the callers' CPU in its figures.
func viaH2(tb testing.TB, t *target, reqs []request) *target {
	tb.Helper()
	v := *t
	for range conns {
		c, err := dialH2(t.addr, t.method)
		if err != nil {
			tb.Fatalf("%s: %v", t.name, err)
		}
		tb.Cleanup(func() { c.conn.Close() })
		v.h2 = append(v.h2, c)
	}
	for _, r := range reqs {
		if _, err := run(&v, r.msgs, len(v.h2), len(v.h2)); err != nil {
			tb.Fatalf("%s: warm-up: %v", t.name, err)
		}
	}
	return &v
}

// call makes one call on c and checks the response.
func (t *target) call(ctx context.Context, c *grpc.ClientConn, req proto.Message) error {
	var w wireResponse
	if err := c.Invoke(ctx, t.method, req, &w, grpc.ForceCodecV2(wireCodec{})); err != nil {
		return err
	}
	return t.check(&w)
}

// snapshot builds the authz snapshot as levy serve does, without demo
// consumers or a run-time store.
func snapshot(cfg *config.Config) (*authz.Snapshot, error) {
	return server.AuthzSnapshot(cfg, nil, nil, nil)
}

// infoLogger is levy serve's default logger (JSON at info) with its output
// thrown away: what levy pays for logging on the allow path.
func infoLogger() *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "ts"
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(io.Discard), zapcore.InfoLevel))
}

// serve starts a gRPC server with levy serve's options on 127.0.0.1:0 and
// registers a service on it.
func serve(tb testing.TB, register func(grpc.ServiceRegistrar)) string {
	tb.Helper()
	return serveWith(tb, nil, register)
}

// serveWith is serve with the server options opts, or levy serve's when
// opts is nil.
func serveWith(tb testing.TB, opts []grpc.ServerOption, register func(grpc.ServiceRegistrar)) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	if opts == nil {
		opts = server.GRPCOptions()
	}
	g := grpc.NewServer(opts...)
	register(g)
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
	req := envoyclient.BuildCheckRequest(&envoyclient.Request{
		Method:        "GET",
		Scheme:        "https",
		Authority:     "api.example.com",
		Path:          "/v1/items?limit=20&cursor=eyJpZCI6NDJ9",
		Protocol:      "HTTP/2",
		SourceAddress: "203.0.113.7:51234",
		RequestID:     "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
		Headers: []envoyclient.Header{
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
	// cpu is the CPU time the callers and the server used: the whole
	// process, plus the server's when it runs in another (-1 if unknown).
	cpu time.Duration
	// callers is the CPU time of this process alone: the callers', and
	// the server's when it runs here.
	callers time.Duration
	hist    *histogram
	// late, for paced calls (runAt), is how late they were sent; nil for
	// a closed loop.
	late *histogram
}

// add sums o into r: calls, time and CPU (unknown if either's is), and
// latencies (and how late paced calls were sent).
func (r *result) add(o result) {
	if r.hist == nil {
		r.hist = &histogram{}
	}
	r.calls += o.calls
	r.elapsed += o.elapsed
	r.callers += o.callers
	if r.cpu >= 0 && o.cpu >= 0 {
		r.cpu += o.cpu
	} else {
		r.cpu = -1
	}
	r.hist.merge(o.hist)
	if o.late != nil {
		if r.late == nil {
			r.late = &histogram{}
		}
		r.late.merge(o.late)
	}
}

// rate is r's calls a second.
func (r result) rate() float64 { return float64(r.calls) / r.elapsed.Seconds() }

const (
	checkMethod     = "/envoy.service.auth.v3.Authorization/Check"
	rateLimitMethod = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
)

// run makes n calls of req on t from workers concurrent callers, each
// taking the next connection round robin (with the lean caller, each
// connection keeps its share of the calls in flight), and checks every
// response. It stops at the first failure and returns it.
func run(t *target, reqs []proto.Message, workers, n int) (result, error) {
	return runAt(t, reqs, workers, n, 0)
}

// runAt is run with the calls sent at rate calls a second, an open loop
// (see callLoop): grpc-go callers only, as the lean caller keeps its calls
// in flight however fast they come back. A rate of 0 is run's closed
// loop. With a rate, workers only bounds how many calls are in flight: it
// must be more than the server holds at that rate, or calls wait for a
// free caller (which their latency still counts, from their due time).
func runAt(t *target, reqs []proto.Message, workers, n int, rate float64) (result, error) {
	var (
		next     atomic.Int64
		failed   atomic.Bool
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		failed.Store(true)
	}
	// take claims the next call, i; false when all n are claimed or a call
	// has failed.
	take := func() (int64, bool) {
		if failed.Load() {
			return 0, false
		}
		i := next.Add(1)
		return i, i <= int64(n)
	}
	var msgs [][]byte // reqs as the lean caller sends them
	if len(t.h2) > 0 {
		if rate > 0 {
			return result{}, fmt.Errorf("%s: the lean caller does not pace its calls", t.name)
		}
		for _, req := range reqs {
			msg, err := grpcMessage(req)
			if err != nil {
				return result{}, err
			}
			msgs = append(msgs, msg)
		}
		workers = max(workers/len(t.h2), 1) * len(t.h2)
	}
	hists := make([]histogram, workers) // one per caller: no sharing per call
	var lates []histogram               // how late paced calls were sent, likewise
	if rate > 0 {
		lates = make([]histogram, workers)
	}
	own0 := processCPU()
	cpu0, err := t.cpuTime()
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	if len(t.h2) > 0 {
		for k, c := range t.h2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := &hists[k]
				var w wireResponse
				err := c.drive(msgs, workers/len(t.h2), take,
					func(d time.Duration, resp []byte, err error) bool {
						h.record(d)
						if w.b = resp; err == nil {
							err = t.check(&w)
						}
						if err != nil {
							fail(fmt.Errorf("%s: %w", t.name, err))
						}
						return err == nil
					})
				if err != nil {
					fail(fmt.Errorf("%s: connection %d: %w", t.name, k, err))
				}
			}()
		}
	} else {
		ctx := context.Background()
		var pace *pacer
		if rate > 0 {
			pace = &pacer{start: start, rate: rate}
		}
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				call := func(i int64) error {
					c := t.conns[i%int64(len(t.conns))]
					var w wireResponse
					if err := c.Invoke(ctx, t.method, reqs[i%int64(len(reqs))], &w, grpc.ForceCodecV2(wireCodec{})); err != nil {
						return err
					}
					return t.check(&w)
				}
				record := func(_, d time.Duration) { hists[w].record(d) }
				if pace != nil {
					record = func(late, d time.Duration) {
						lates[w].record(late)
						hists[w].record(d)
					}
				}
				if err := callLoop(wallClock{}, pace, take, call, record); err != nil {
					fail(fmt.Errorf("%s: %w", t.name, err))
				}
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, err := t.cpuTime()
	own := processCPU() - own0
	if firstErr != nil {
		return result{}, firstErr
	}
	if err != nil {
		return result{}, err
	}
	cpu := cpu1 - cpu0
	if cpu0 < 0 {
		cpu = -1
	}
	res := result{calls: int64(n), elapsed: elapsed, cpu: cpu, callers: own, hist: &histogram{}}
	for i := range hists {
		res.hist.merge(&hists[i])
	}
	if lates != nil {
		res.late = &histogram{}
		for i := range lates {
			res.late.merge(&lates[i])
		}
	}
	return res, nil
}

// cpuTime is the CPU time the callers and t's server have used so far:
// this process's, plus the server's process's when the server runs
// elsewhere; -1 when that is not known.
func (t *target) cpuTime() (time.Duration, error) {
	if t.register != nil {
		return processCPU(), nil
	}
	if t.serverCPU == nil {
		return -1, nil
	}
	s, err := t.serverCPU()
	if err != nil {
		return 0, fmt.Errorf("%s: CPU time: %w", t.name, err)
	}
	return processCPU() + s, nil
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

func TestWireRateLimitOK(t *testing.T) {
	for _, tc := range []struct {
		resp *rlsv3.RateLimitResponse
		ok   bool
	}{
		{okRateLimit(3), true},
		{&rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OVER_LIMIT, Statuses: okRateLimit(1).Statuses, RawBody: []byte("{}")}, false},
		{&rlsv3.RateLimitResponse{Statuses: okRateLimit(1).Statuses}, false}, // UNKNOWN
	} {
		b, err := proto.Marshal(tc.resp)
		if err != nil {
			t.Fatal(err)
		}
		if err := (&wireResponse{b: b}).rateLimitOK(); (err == nil) != tc.ok {
			t.Fatalf("%v: %v, want ok %v", tc.resp, err, tc.ok)
		}
	}
	if err := (&wireResponse{b: []byte{0x08}}).rateLimitOK(); err == nil {
		t.Fatal("a truncated overall_code passed")
	}
}
