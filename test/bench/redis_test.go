package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// The environment the Redis benchmarks read; see the package doc.
const (
	// envRedisAddr is an external Redis (host:port) to decide on instead
	// of a redis-server started for the run.
	envRedisAddr = "LEVY_BENCH_REDIS_ADDR"
	// envRedisFlush=1 empties that external Redis (FLUSHALL) once, first.
	envRedisFlush = "LEVY_BENCH_REDIS_FLUSH"
	// envPeerRLS is the gRPC host:port of an envoyproxy/ratelimit server
	// deciding on the same Redis, measured as the peer-* sub-benchmarks.
	envPeerRLS = "LEVY_BENCH_PEER_RLS"
	// envPeerPID is that server's process id, to add its CPU time to
	// cpu-us/call; without it the peer's cpu-us/call is not reported.
	envPeerPID = "LEVY_BENCH_PEER_PID"
	// envLevyRLS and envLevyPID make BenchmarkRedisVersusPeer measure a levy
	// serve process at that gRPC host:port (deciding on the same Redis,
	// with the rules of rateLimitConfig) instead of levy in this process,
	// as the peer is measured.
	envLevyRLS = "LEVY_BENCH_LEVY_RLS"
	envLevyPID = "LEVY_BENCH_LEVY_PID"
)

// BenchmarkCheckRedis is BenchmarkCheck with levy deciding on Redis, as
// levy serve --store redis does.
func BenchmarkCheckRedis(b *testing.B) { benchCheck(b, redisStore(b)) }

// BenchmarkShouldRateLimitRedis is BenchmarkShouldRateLimit with levy
// deciding on Redis, and with the peer RLS on the same Redis when
// LEVY_BENCH_PEER_RLS names one.
func BenchmarkShouldRateLimitRedis(b *testing.B) { benchRateLimit(b, redisStore(b)) }

// BenchmarkCheckRedisCluster is BenchmarkCheck with levy deciding on a
// Redis Cluster, as levy serve --store redis --redis-cluster does, of one
// master and of three (sub-benchmarks masters=1 and masters=3).
func BenchmarkCheckRedisCluster(b *testing.B) {
	for _, m := range clusterMasters {
		b.Run(fmt.Sprintf("masters=%d", m), func(b *testing.B) { benchCheck(b, redisClusterStore(b, m)) })
	}
}

// BenchmarkShouldRateLimitRedisCluster is BenchmarkShouldRateLimit with
// levy deciding on a Redis Cluster of one master and of three.
func BenchmarkShouldRateLimitRedisCluster(b *testing.B) {
	for _, m := range clusterMasters {
		b.Run(fmt.Sprintf("masters=%d", m), func(b *testing.B) { benchRateLimit(b, redisClusterStore(b, m)) })
	}
}

// clusterMasters is the sizes of the clusters the cluster benchmarks
// start: one master, whose figures differ from a standalone Redis's by
// what cluster mode costs (a script call per hash slot, not per batch),
// and three, redis-cli's smallest cluster, whose Redis CPU is summed over
// the masters.
var clusterMasters = []int{1, 3}

// BenchmarkRedisVersusPeer measures levy and the peer RLS (LEVY_BENCH_PEER_RLS)
// on the same Redis in alternating slices of one run, ten of each, so that
// a noisy machine slows both alike: the figure to read is x-peer, levy's
// calls/s over the peer's. It is skipped without a peer.
func BenchmarkRedisVersusPeer(b *testing.B) {
	env, levy, peer := versusTargets(b)
	levyH2, peerH2 := viaH2(b, levy, env.reqs), viaH2(b, peer, env.reqs)
	for _, r := range env.reqs {
		b.Run(r.name+"/grpc-go", func(b *testing.B) { versus(b, levy, peer, r.msgs) })
		b.Run(r.name+"/h2", func(b *testing.B) { versus(b, levyH2, peerH2, r.msgs) })
	}
}

// versusTargets is the RLS env on Redis with the two servers the versus
// benchmarks compare: levy, in this process or the levy serve at
// LEVY_BENCH_LEVY_RLS, and the peer. b is skipped, before any Redis is
// started, when there is no peer.
func versusTargets(b *testing.B) (e *env, levy, peer *target) {
	b.Helper()
	if os.Getenv(envPeerRLS) == "" {
		b.Skip(peerUnset)
	}
	e = newRateLimitEnv(b, redisStore(b))
	levy, peer = e.named("levy"), e.peers[0]
	if addr := os.Getenv(envLevyRLS); addr != "" {
		levy = externalTarget(b, "levy", addr, levy, e.reqs)
	}
	return e, levy, peer
}

// versusRounds is how many slices of calls each server gets, alternately.
const versusRounds = 10

// versus runs b.N calls of req, half on each of a and c in alternating
// slices (each first in every other round), and reports each one's calls/s, p99 and CPU per call, and a's
// calls/s over c's.
func versus(b *testing.B, a, c *target, reqs []proto.Message) {
	n := max(b.N/(2*versusRounds), callers)
	redisCPU := map[*target]time.Duration{} // the Redis CPU of each one's slices
	sum := alternate(b, a, c, func(t *target) (result, error) {
		var before redisStats
		if t.redis != nil {
			before = readRedisStats(b, t.redis)
		}
		res, err := run(t, reqs, callers, n)
		if t.redis != nil {
			redisCPU[t] += readRedisStats(b, t.redis).since(before).cpu
		}
		return res, err
	})
	for i, t := range []*target{a, c} {
		b.ReportMetric(sum[i].rate(), t.name+"-calls/s")
		b.ReportMetric(sum[i].hist.quantile(0.99).Seconds()*1e6, t.name+"-p99-us")
		if sum[i].cpu >= 0 {
			b.ReportMetric(sum[i].cpu.Seconds()*1e6/float64(sum[i].calls), t.name+"-cpu-us/call")
		}
		if t.register == nil {
			b.ReportMetric(sum[i].callers.Seconds()*1e6/float64(sum[i].calls), t.name+"-callers-cpu-us/call")
		}
		if t.redis != nil {
			b.ReportMetric(redisCPU[t].Seconds()*1e6/float64(sum[i].calls), t.name+"-redis-cpu-us/call")
		}
	}
	b.ReportMetric(sum[0].rate()/sum[1].rate(), "x-"+c.name)
}

// alternate runs slice on a and on c in turn, versusRounds times each, and
// sums each one's results, a's at [0]. b's timer runs across the slices
// only.
func alternate(b *testing.B, a, c *target, slice func(*target) (result, error)) [2]result {
	var sum [2]result
	b.ResetTimer()
	for round := range versusRounds {
		// Whichever runs first in a round gains a little (two identical
		// servers measured 1.02-1.04), so they take turns.
		for k := range 2 {
			i := (round + k) % 2
			res, err := slice([]*target{a, c}[i])
			if err != nil {
				b.Fatal(err)
			}
			sum[i].add(res)
		}
	}
	b.StopTimer()
	return sum
}

// redisTimeout is levy's store.timeout on Redis in the benchmarks, for
// its client as for its decisions. levy's default, 50ms, is a production
// deadline; with 32 callers, levy and Redis sharing a few busy cores, a
// scheduling stall now and then outlasts it and the run fails on a 503
// (envoyproxy/ratelimit's REDIS_TIMEOUT is 10s). The benchmarks measure
// throughput and latency, so they give levy a deadline no run reaches.
const redisTimeout = time.Second

// flushOnce makes LEVY_BENCH_REDIS_FLUSH empty the external Redis once per
// run, not once per benchmark.
var (
	flushOnce sync.Once
	flushErr  error
)

// redisStore is Redis for levy to decide on: a redis-server started for tb
// on a free port, or the one at LEVY_BENCH_REDIS_ADDR. levy's client is
// built by redisstore.NewClient as levy serve builds it; a second client,
// with a longer timeout, reads the server's statistics.
func redisStore(tb testing.TB) *store {
	tb.Helper()
	addr := os.Getenv(envRedisAddr)
	external := addr != ""
	if !external {
		// make bench on a machine without Redis still measures the local
		// store; the tests of the harness need Redis, as make test does.
		if _, err := exec.LookPath("redis-server"); err != nil {
			if _, bench := tb.(*testing.B); bench {
				tb.Skipf("redis-server is not installed (apt-get install redis-server), or set %s to a Redis to measure on", envRedisAddr)
			}
		}
		addr = redistest.Start(tb).Addr
	}
	client, _ := redisstore.NewClient(redisstore.Options{Addr: addr, Timeout: redisTimeout})
	admin, _ := redisstore.NewClient(redisstore.Options{Addr: addr, Timeout: 10 * time.Second})
	tb.Cleanup(func() {
		client.Close()
		admin.Close()
	})
	ctx := context.Background()
	if err := admin.Ping(ctx).Err(); err != nil {
		tb.Fatalf("redis at %s: %v", addr, err)
	}
	if external && os.Getenv(envRedisFlush) == "1" {
		flushOnce.Do(func() { flushErr = admin.FlushAll(ctx).Err() })
		if flushErr != nil {
			tb.Fatalf("FLUSHALL %s: %v", addr, flushErr)
		}
	}
	return &store{redis: client, servers: redisServers{admin}}
}

// redisClusterStore is a Redis Cluster of masters started for tb, without
// replicas, for levy to decide on: levy's client is built by
// redisstore.NewClient from the masters' addresses, as levy serve
// --redis-cluster builds it, and a client of each master reads its
// statistics. tb is skipped when redis-server (or, for three masters or
// more, redis-cli) is not installed.
func redisClusterStore(tb testing.TB, masters int) *store {
	tb.Helper()
	need := []string{"redis-server"}
	if masters >= 3 {
		need = append(need, "redis-cli") // redistest creates the cluster with redis-cli --cluster create
	}
	for _, cmd := range need {
		if _, err := exec.LookPath(cmd); err != nil {
			tb.Skipf("%s is not installed: a Redis Cluster is started with it (apt-get install redis-server)", cmd)
		}
	}
	c := redistest.StartClusterOf(tb, masters)
	client, cluster := redisstore.NewClient(redisstore.Options{ClusterAddrs: c.Addrs(), Timeout: redisTimeout})
	tb.Cleanup(func() { client.Close() })
	st := &store{redis: client, cluster: cluster}
	for _, n := range c.Nodes {
		st.servers = append(st.servers, n.Client())
	}
	return st
}

// peerUnset is why what measures the peer is skipped without one.
const peerUnset = envPeerRLS + " is not set: set it to the gRPC host:port of an envoyproxy/ratelimit server " +
	"deciding on the Redis at " + envRedisAddr + ", with the rules in the package doc, to compare levy with it"

// peerTarget is the envoyproxy/ratelimit server at LEVY_BENCH_PEER_RLS,
// whose Redis commands are counted on st; a skipped target when the
// variable is not set.
func peerTarget(tb testing.TB, st *store) *target {
	tb.Helper()
	addr := os.Getenv(envPeerRLS)
	if addr == "" {
		return &target{name: "peer", skip: peerUnset}
	}
	if os.Getenv(envRedisAddr) == "" {
		tb.Fatalf("%s is set but %s is not: the peer's Redis commands are counted on the Redis the benchmark decides on", envPeerRLS, envRedisAddr)
	}
	t := &target{name: "peer", addr: addr, redis: st.servers}
	setServerPID(tb, t, envPeerPID)
	return t
}

// setServerPID has t report its server's CPU time when the variable env
// names the server's process.
func setServerPID(tb testing.TB, t *target, env string) {
	tb.Helper()
	v := os.Getenv(env)
	if v == "" {
		return
	}
	pid, err := strconv.Atoi(v)
	if err != nil {
		tb.Fatalf("%s: %v", env, err)
	}
	if _, err := processCPUOf(pid); err != nil {
		tb.Fatalf("%s: %v", env, err)
	}
	t.serverCPU = func() (time.Duration, error) { return processCPUOf(pid) }
}

// externalTarget is a server like like in another process, at addr: dialed
// and warmed up as newEnv does, its CPU time read when LEVY_BENCH_LEVY_PID
// is set.
func externalTarget(tb testing.TB, name, addr string, like *target, reqs []request) *target {
	tb.Helper()
	t := &target{name: name, addr: addr, method: like.method, check: like.check, redis: like.redis}
	setServerPID(tb, t, envLevyPID)
	dial(tb, t, reqs)
	return t
}

// processCPUOf is the user and system CPU time process pid has used, from
// /proc/<pid>/stat (Linux), to within a clock tick (10ms).
func processCPUOf(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state (3), ... utime (14), stime (15), in clock ticks.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	const userHZ = 100 // USER_HZ: the unit of /proc times on Linux
	return time.Duration(ticks) * (time.Second / userHZ), nil
}

// redisServers is a client of each Redis server a server under test
// decides on, for their statistics: one standalone server, or every master
// of a cluster (each one's own client: a cluster client would send a
// CLUSTER SLOTS of its own with each read).
type redisServers []redis.UniversalClient

// redisStats is what Redis servers have done so far, from INFO, summed
// over the servers: the calls of each command (commandstats, which counts
// the commands a script runs too) and the CPU time they have used.
type redisStats struct {
	calls map[string]int64
	cpu   time.Duration
	// servers is how many servers were read, one INFO each.
	servers int
}

// readRedisStats reads every server's statistics with one INFO each and
// sums them.
func readRedisStats(tb testing.TB, servers redisServers) redisStats {
	tb.Helper()
	sum := redisStats{calls: map[string]int64{}}
	for _, c := range servers {
		info, err := c.Info(context.Background(), "all").Result()
		if err != nil {
			tb.Fatalf("INFO: %v", err)
		}
		s, err := parseRedisStats(info)
		if err != nil {
			tb.Fatal(err)
		}
		for cmd, n := range s.calls {
			sum.calls[cmd] += n
		}
		sum.cpu += s.cpu
		sum.servers += s.servers
	}
	return sum
}

// parseRedisStats reads one server's INFO.
func parseRedisStats(info string) (redisStats, error) {
	s := redisStats{calls: map[string]int64{}, servers: 1}
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		if stat, ok := strings.CutPrefix(line, "cmdstat_"); ok {
			cmd, fields, _ := strings.Cut(stat, ":")
			for f := range strings.SplitSeq(fields, ",") {
				if v, ok := strings.CutPrefix(f, "calls="); ok {
					n, err := strconv.ParseInt(v, 10, 64)
					if err != nil {
						return s, fmt.Errorf("INFO: %q: %w", line, err)
					}
					s.calls[cmd] = n
				}
			}
			continue
		}
		for _, k := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, k); ok {
				sec, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return s, fmt.Errorf("INFO: %q: %w", line, err)
				}
				s.cpu += time.Duration(sec * float64(time.Second))
			}
		}
	}
	if len(s.calls) == 0 {
		return s, fmt.Errorf("INFO: no commandstats")
	}
	return s, nil
}

// since is what the servers did between before and s, less the INFOs
// that read before (on each server one INFO falls between two reads,
// whether or not a read counts itself).
func (s redisStats) since(before redisStats) redisStats {
	d := redisStats{calls: map[string]int64{}, cpu: s.cpu - before.cpu, servers: s.servers}
	for cmd, n := range s.calls {
		if n -= before.calls[cmd]; n != 0 {
			d.calls[cmd] = n
		}
	}
	if d.calls["info"] -= int64(s.servers); d.calls["info"] == 0 {
		delete(d.calls, "info")
	}
	return d
}

// scripts is the EVALSHA and EVAL calls.
func (s redisStats) scripts() int64 { return s.calls["evalsha"] + s.calls["eval"] }

// all is every command's calls, those that scripts ran included.
func (s redisStats) all() int64 {
	var n int64
	for _, c := range s.calls {
		n += c
	}
	return n
}

// forStores runs test with levy on the local store, on Redis and on a
// Redis Cluster of three masters.
func forStores(t *testing.T, test func(*testing.T, *store)) {
	t.Run("local", func(t *testing.T) { test(t, localStore()) })
	forRedis(t, test)
}

// forRedis runs test with levy on Redis and on a Redis Cluster of three
// masters.
func forRedis(t *testing.T, test func(*testing.T, *store)) {
	t.Run("redis", func(t *testing.T) { test(t, redisStore(t)) })
	t.Run("cluster", func(t *testing.T) { test(t, redisClusterStore(t, 3)) })
}

// TestRedisCommandsCounted checks the Redis figures measure reports: levy
// decides a call with one script call (on a cluster, one per hash slot
// the call's limits lie in), Redis counts the commands the script runs
// besides, and the harness's own INFOs are not counted.
func TestRedisCommandsCounted(t *testing.T) { forRedis(t, testRedisCommandsCounted) }

func testRedisCommandsCounted(t *testing.T, st *store) {
	if st.cluster || os.Getenv(envRedisAddr) == "" { // nothing else talks to this one
		before := readRedisStats(t, st.servers)
		if d := readRedisStats(t, st.servers).since(before); d.all() != 0 {
			t.Fatalf("an idle Redis ran %v", d.calls)
		}
	}
	const n = 300
	for _, env := range []*env{newCheckEnv(t, st), newRateLimitEnv(t, st)} {
		levy := env.named("levy")
		for _, r := range env.reqs {
			before := readRedisStats(t, levy.redis)
			if _, err := run(levy, r.msgs, callers, n); err != nil {
				t.Fatal(err)
			}
			d := readRedisStats(t, levy.redis).since(before)
			// At most one script a decision (on a cluster, one a slot: a
			// descriptor's limits share one); concurrent decisions share
			// one.
			most := n
			if req, ok := r.msgs[0].(*rlsv3.RateLimitRequest); ok && st.cluster {
				most = n * len(req.GetDescriptors())
			}
			if d.scripts() < 1 || d.scripts() > int64(most) {
				t.Fatalf("%s %s: %d calls ran %d scripts: %v", levy.method, r.name, n, d.scripts(), d.calls)
			}
			// Counted with their own commands (TIME, GET, SET ...), which
			// decisions of one call on the same keys share.
			if d.all() <= d.scripts() {
				t.Fatalf("%s %s: %d commands in all, with the scripts' own: %v", levy.method, r.name, d.all(), d.calls)
			}
			t.Logf("%s %s: per call: %v", levy.method, r.name, perCall(d.calls, n))
		}
	}
}

func perCall(calls map[string]int64, n int) map[string]float64 {
	out := map[string]float64{}
	for c, k := range calls {
		out[c] = float64(k) / float64(n)
	}
	return out
}

func TestParseRedisStats(t *testing.T) {
	s, err := parseRedisStats("# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250000\r\n# Commandstats\r\n" +
		"cmdstat_evalsha:calls=10,usec=100,usec_per_call=10.00,rejected_calls=0,failed_calls=1\r\n" +
		"cmdstat_client|setinfo:calls=2,usec=1,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_info:calls=3,usec=30,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if s.cpu != 1750*time.Millisecond || s.calls["evalsha"] != 10 || s.calls["client|setinfo"] != 2 || s.calls["info"] != 3 {
		t.Fatalf("%+v", s)
	}
	d := s.since(redisStats{calls: map[string]int64{"evalsha": 4, "info": 2}, cpu: time.Second})
	if d.scripts() != 6 || d.all() != 8 || d.cpu != 750*time.Millisecond {
		t.Fatalf("since: %+v", d)
	}
}
