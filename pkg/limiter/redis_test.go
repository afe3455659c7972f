package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/usage"
)

func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	limitertest.Run(t, func(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
		if err := client.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		return limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
	})
}

// One cluster serves every cluster test: starting one takes seconds.
func TestRedisCluster(t *testing.T) {
	cluster := redistest.StartCluster(t)
	t.Run("Suite", func(t *testing.T) { testClusterSuite(t, cluster) })
	t.Run("GivesBackEarlierSlots", func(t *testing.T) { testClusterGivesBack(t, cluster) })
	t.Run("DebitsStayWhenAnotherSlotFailsOrDenies", func(t *testing.T) { testClusterDebitsAcrossSlots(t, cluster) })
	t.Run("BatchesAcrossSlots", func(t *testing.T) { testClusterBatchesAcrossSlots(t, cluster) })
	t.Run("BatchesRequestsThatSpanSlots", func(t *testing.T) { testClusterBatchesRequestsThatSpanSlots(t, cluster) })
	t.Run("SlotMatchesRedis", func(t *testing.T) { testSlotMatchesRedis(t, cluster) })
	t.Run("Ledger", func(t *testing.T) {
		client := cluster.Client(t)
		limitertest.RunLedger(t, func(t *testing.T, clock *limitertest.Clock) (limiter.Limiter, usage.Ledger) {
			client.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
			return limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Clock: clock.Now, Timeout: 5 * time.Second}),
				limiter.NewRedisLedger(client, time.Minute)
		}, true)
	})
}

func testClusterSuite(t *testing.T, cluster *redistest.Cluster) {
	client := cluster.Client(t)
	limitertest.Run(t, func(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
		err := client.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			return m.FlushAll(ctx).Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		return limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Clock: clock.Now, Timeout: 5 * time.Second})
	})
}

// Without a test clock the decision runs on Redis TIME, and one decision
// is one script call, whatever the number of limits in one slot.
func TestRedisUsesStoreClockAndOneCallPerDecision(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client})
	limits := []limiter.Limit{
		{Kind: limiter.Bucket, Name: "rate", Key: "{c:x}:rate", Cost: 1, Requests: 10, Per: time.Second},
		{Kind: limiter.Quota, Name: "quota", Key: "{c:x}:quota", Cost: 1, Max: 100, Unit: plan.Month},
	}
	ctx := context.Background()
	if _, err := l.Decide(ctx, limits); err != nil { // loads the script
		t.Fatal(err)
	}
	before, err := redistest.CommandCalls(ctx, client, "evalsha")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		d, err := l.Decide(ctx, limits)
		if err != nil || !d.OK {
			t.Fatalf("decision %d: %v %v", i, d.OK, err)
		}
		if skew := time.Since(d.Now); skew < -time.Second || skew > time.Second {
			t.Fatalf("decision time %s is not Redis's clock (now %s)", d.Now, time.Now())
		}
	}
	after, _ := redistest.CommandCalls(ctx, client, "evalsha")
	if after-before != 5 {
		t.Fatalf("%d EVALSHA calls for 5 decisions", after-before)
	}
}

// In a cluster, limits in two slots: a denial in the second slot gives
// back what the first slot took.
func testClusterGivesBack(t *testing.T, cluster *redistest.Cluster) {
	client := cluster.Client(t)
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Timeout: 5 * time.Second})
	// Slot a holds a quota, a bucket and a usage ledger; slot b a quota
	// that allows one request.
	a := []limiter.Limit{
		{Kind: limiter.Quota, Name: "a", Key: "{a}:q", Cost: 1, Max: 100, Unit: plan.Month},
		{Kind: limiter.Bucket, Name: "a-rate", Key: "{a}:r", Cost: 1, Requests: 100, Per: time.Hour},
		{Kind: limiter.Ledger, Name: "a-usage", Key: "{a}:u", Cost: 1, WindowSize: time.Hour},
	}
	b := limiter.Limit{Kind: limiter.Quota, Name: "b", Key: "{b}:q", Cost: 1, Max: 1, Unit: plan.Month}
	if limiter.Slot(a[0].Key) == limiter.Slot(b.Key) {
		t.Fatal("test keys share a slot")
	}
	ctx := context.Background()
	both := append(a[:len(a):len(a)], b)
	if d, err := l.Decide(ctx, both); err != nil || !d.OK {
		t.Fatalf("first: %v %v", d.OK, err)
	}
	for i := 0; i < 5; i++ {
		d, err := l.Decide(ctx, both)
		if err != nil || d.OK || d.Denied != 3 {
			t.Fatalf("denial %d: ok=%v denied=%d err=%v", i, d.OK, d.Denied, err)
		}
	}
	// Slot a took 1 for the allowed request, gave back the 5 denied, and
	// takes 1 now.
	d, err := l.Decide(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if q, r, u := d.Statuses[0].Used, d.Statuses[1].Remaining, d.Statuses[2].Used; q != 2 || r != 98 || u != 2 {
		t.Fatalf("after 1 allowed request and 5 denied: quota used %d, bucket remaining %d, ledger used %d; want 2, 98, 2", q, r, u)
	}
}

// In a cluster, a debit stays taken when another slot of its request
// fails or denies: it was spent, whatever the caller hears (Envoy neither
// reads nor retries apply_on_stream_done).
func testClusterDebitsAcrossSlots(t *testing.T, cluster *redistest.Cluster) {
	client := cluster.Client(t)
	ctx := context.Background()
	if err := client.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	spent := limiter.Limit{Kind: limiter.Bucket, Name: "tokens", Key: "{a}:tokens", Cost: 30, Requests: 10, Per: time.Minute, Debit: true}
	closed := limiter.Limit{Kind: limiter.Quota, Name: "b", Key: "{b}:q", Cost: 1, Max: 0, Unit: plan.Month}
	if limiter.Slot(spent.Key) == limiter.Slot(closed.Key) {
		t.Fatal("test keys share a slot")
	}
	var down atomic.Bool
	down.Store(true)
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Timeout: 5 * time.Second,
		Available: func(slot uint16) bool { return !down.Load() || slot != limiter.Slot(closed.Key) }})
	left := func() int64 {
		t.Helper()
		check := spent
		check.Cost, check.Debit = 0, false
		d, err := l.Decide(ctx, []limiter.Limit{check})
		if err != nil {
			t.Fatal(err)
		}
		return d.Statuses[0].Remaining
	}
	if _, err := l.Decide(ctx, []limiter.Limit{spent, closed}); !errors.Is(err, limiter.ErrStoreDown) {
		t.Fatalf("with slot b away: %v, want ErrStoreDown", err)
	}
	if n := left(); n != 0 {
		t.Fatalf("after a failed decision the debited bucket has %d left, want 0: the debit of 30 was spent", n)
	}
	down.Store(false)
	d, err := l.Decide(ctx, []limiter.Limit{spent, closed})
	if err != nil || d.OK || d.Denied != 0 {
		t.Fatalf("with slot b back: ok=%v denied=%d err=%v, want denied by the debit that did not fit", d.OK, d.Denied, err)
	}
	if n := left(); n != 0 {
		t.Fatalf("after a denied decision the debited bucket has %d left, want 0: the debit stays", n)
	}
}

// In a cluster, concurrent requests of many consumers (many slots, every
// node) are decided in pipelined batches, one script call per slot: each
// consumer's bucket still admits exactly its size, on nodes that have
// forgotten the script.
func testClusterBatchesAcrossSlots(t *testing.T, cluster *redistest.Cluster) {
	client := cluster.Client(t)
	ctx := context.Background()
	err := client.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		if err := m.FlushAll(ctx).Err(); err != nil {
			return err
		}
		return m.ScriptFlush(ctx).Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Timeout: 5 * time.Second})
	const consumers, each, size = 24, 8, 5
	slots := map[uint16]bool{}
	var allowed [consumers]atomic.Int32
	var wg sync.WaitGroup
	for c := range consumers {
		key := fmt.Sprintf("{c:consumer-%d}:rate", c)
		slots[limiter.Slot(key)] = true
		for range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := l.Decide(ctx, []limiter.Limit{{Kind: limiter.Bucket, Name: "rate", Key: key, Cost: 1, Requests: size, Per: time.Hour}})
				if err != nil {
					t.Error(err)
					return
				}
				if d.OK {
					allowed[c].Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if len(slots) < 3 {
		t.Fatalf("%d slots: the test wants consumers on several nodes", len(slots))
	}
	for c := range consumers {
		if n := allowed[c].Load(); n != size {
			t.Errorf("consumer %d: %d of %d requests allowed, want %d", c, n, each, size)
		}
	}
}

// Requests whose limits span slots (a global descriptor and a consumer's)
// are batched like the others, each slot's share with that slot's batch,
// and stay exact: a global bucket of 30 admits exactly 30 of 40 concurrent
// requests, and each consumer's bucket keeps only what its admitted
// requests took (the denied ones' takings, decided at the same time in
// another slot, are given back, one call each).
func testClusterBatchesRequestsThatSpanSlots(t *testing.T, cluster *redistest.Cluster) {
	client := cluster.Client(t)
	ctx := context.Background()
	scripts := func() int64 {
		var mu sync.Mutex
		var n int64
		err := client.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			info, err := m.Info(ctx, "commandstats").Result()
			for _, cmd := range []string{"evalsha", "eval"} {
				if _, rest, ok := strings.Cut(info, "cmdstat_"+cmd+":calls="); ok {
					v, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
					mu.Lock()
					n += v
					mu.Unlock()
				}
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := client.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Timeout: 5 * time.Second})
	const consumers, each, global = 4, 10, 30
	bucket := func(key string, size int64) limiter.Limit {
		return limiter.Limit{Kind: limiter.Bucket, Name: key, Key: key, Cost: 1, Requests: size, Per: time.Hour}
	}
	g := bucket("{rl:global}:ip", global)
	before := scripts()
	// Hold the masters' writes a moment, so that the requests queue and
	// batch (deterministically) while the first call waits.
	if err := client.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return m.Do(ctx, "CLIENT", "PAUSE", 300, "ALL").Err()
	}); err != nil {
		t.Fatal(err)
	}
	var allowed [consumers]atomic.Int32
	var wg sync.WaitGroup
	for c := range consumers {
		own := bucket(fmt.Sprintf("{c:spanning-%d}:rate", c), 1000)
		if limiter.Slot(own.Key) == limiter.Slot(g.Key) {
			t.Fatal("test keys share a slot")
		}
		for range each {
			wg.Go(func() {
				d, err := l.Decide(ctx, []limiter.Limit{g, own})
				if err != nil {
					t.Error(err)
					return
				}
				if d.OK {
					allowed[c].Add(1)
				}
			})
		}
	}
	wg.Wait()
	calls := scripts() - before
	total := int32(0)
	for c := range consumers {
		total += allowed[c].Load()
		own := bucket(fmt.Sprintf("{c:spanning-%d}:rate", c), 1000)
		own.Cost = 0
		d, err := l.Decide(ctx, []limiter.Limit{own})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := d.Statuses[0].Remaining, 1000-int64(allowed[c].Load()); got != want {
			t.Errorf("consumer %d: %d admitted, its bucket has %d left, want %d", c, allowed[c].Load(), got, want)
		}
	}
	if total != global {
		t.Errorf("%d of %d requests admitted by a global bucket of %d", total, consumers*each, global)
	}
	// Unbatched, each request takes a call per slot, and each denied one
	// a give-back besides: 90 calls.
	if calls >= consumers*each {
		t.Errorf("%d script calls for %d requests spanning 2 slots, %d of them denied: not batched", calls, consumers*each, consumers*each-global)
	}
}

// A cluster node that dies fails the decisions of its slots, and only
// those: the other nodes' slots, batched with them, are still decided
// (on a cluster that serves what it has: cluster-require-full-coverage
// no). When the node is back, so are its slots.
func TestRedisClusterNodeDownFailsOnlyItsSlots(t *testing.T) {
	cluster := redistest.StartCluster(t, "--cluster-require-full-coverage", "no")
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs(), MaxRetries: -1,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	defer client.Close()
	ctx := context.Background()
	// Health as levy serve wires it: a failed call marks its slot's master
	// down, and the pings mark it up again.
	health := redisstore.StartHealth(client, "test", 100*time.Millisecond, zaptest.NewLogger(t))
	defer health.Stop()
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Timeout: time.Second,
		Available: health.SlotReady, Failed: health.SlotFailed})
	slots, err := client.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	owner := func(key string) string {
		s := int(limiter.Slot(key))
		for _, r := range slots {
			if s >= r.Start && s <= r.End {
				return r.Nodes[0].Addr
			}
		}
		t.Fatalf("no node owns slot %d", s)
		return ""
	}
	const consumers = 30
	decideAll := func() []error {
		errs := make([]error, consumers)
		var wg sync.WaitGroup
		for c := range consumers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprintf("{c:consumer-%d}:rate", c)
				_, errs[c] = l.Decide(ctx, []limiter.Limit{{Kind: limiter.Bucket, Name: "rate", Key: key, Cost: 1, Requests: 100, Per: time.Hour}})
			}()
		}
		wg.Wait()
		return errs
	}
	// Every node up: a health ping that timed out on a loaded machine marks
	// a node down until the next one answers, so await a round where all
	// decide.
	await.NoError(t, 10*time.Second, func() error {
		for c, err := range decideAll() {
			if err != nil {
				return fmt.Errorf("consumer %d: %w", c, err)
			}
		}
		return nil
	}, "every consumer decided with every node up")
	dead := cluster.Nodes[0].Addr
	cluster.Nodes[0].Kill()
	start := time.Now()
	errs := decideAll()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("decisions with a node down took %s", took)
	}
	var failed, decided int
	for c, err := range errs {
		onDead := owner(fmt.Sprintf("{c:consumer-%d}:rate", c)) == dead
		switch {
		case onDead && err == nil:
			t.Errorf("consumer %d lives on the dead node, yet was decided", c)
		case !onDead && err != nil:
			t.Errorf("consumer %d lives on a live node, yet: %v", c, err)
		case onDead:
			failed++
		default:
			decided++
		}
	}
	if failed == 0 || decided == 0 {
		t.Fatalf("%d failed, %d decided: the test wants consumers on the dead node and on live ones", failed, decided)
	}
	// Now the dead node is known: its consumers fail at once, without a
	// call, and the others are still decided by Redis; levy stays ready.
	for c, err := range decideAll() {
		onDead := owner(fmt.Sprintf("{c:consumer-%d}:rate", c)) == dead
		if onDead && !errors.Is(err, limiter.ErrStoreDown) || !onDead && err != nil {
			t.Errorf("consumer %d (on the dead node: %v), with the node known to be down: %v", c, onDead, err)
		}
	}
	if !health.Ready() {
		t.Error("one master of three down, and health says Redis is not ready")
	}
	cluster.Nodes[0].Restart()
	await.NoError(t, 15*time.Second, func() error { return errors.Join(decideAll()...) }, "every consumer decided once the node is back")
}

// A master that stops answering mid-batch (paused) fails its own slots'
// decisions at the store timeout, and only those: the other masters'
// slots, pipelined in the same batches, are decided, and health hears of
// the paused master's slots alone. What the paused master's scripts took
// for callers who saw the timeout is given back when its replies come.
func TestRedisClusterPausedMasterFailsOnlyItsSlots(t *testing.T) {
	cluster := redistest.StartCluster(t)
	const timeout, replyWait = 200 * time.Millisecond, 5 * time.Second
	client, _ := redisstore.NewClient(redisstore.Options{ClusterAddrs: cluster.Addrs(), Timeout: time.Second, ReadTimeout: replyWait})
	t.Cleanup(func() { client.Close() })
	reg := prometheus.NewRegistry()
	var mu sync.Mutex
	failed := map[uint16]bool{}
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: true, Timeout: timeout, ReplyWait: replyWait,
		Registerer: reg, Log: zaptest.NewLogger(t),
		Failed: func(slot uint16, err error) { mu.Lock(); failed[slot] = true; mu.Unlock() }})
	ctx := context.Background()
	const consumers = 30
	bucket := func(c int, cost int64) []limiter.Limit {
		key := fmt.Sprintf("{c:paused-%d}:rate", c)
		return []limiter.Limit{{Kind: limiter.Bucket, Name: "rate", Key: key, Cost: cost, Requests: 100, Per: time.Hour}}
	}
	paused := cluster.Nodes[0]
	onPaused := map[int]bool{}
	pausedSlots := map[uint16]bool{}
	for c := range consumers {
		m, err := client.(*redis.ClusterClient).MasterForKey(ctx, bucket(c, 0)[0].Key)
		if err != nil {
			t.Fatal(err)
		}
		if m.Options().Addr == paused.Addr {
			onPaused[c], pausedSlots[limiter.Slot(bucket(c, 0)[0].Key)] = true, true
		}
	}
	if len(onPaused) == 0 || len(onPaused) == consumers {
		t.Fatalf("%d of %d consumers on the paused master: the test wants some on each side", len(onPaused), consumers)
	}
	decideAll := func(cost int64) []error {
		errs := make([]error, consumers)
		var wg sync.WaitGroup
		for c := range consumers {
			wg.Go(func() { _, errs[c] = l.Decide(ctx, bucket(c, cost)) })
		}
		wg.Wait()
		return errs
	}
	// Every master has the script, so that the paused one's calls are
	// the decisions themselves.
	if err := errors.Join(decideAll(0)...); err != nil {
		t.Fatal(err)
	}
	paused.Pause()
	errs := decideAll(1)
	paused.Resume() // well within the cluster's node timeout (2s)
	for c, err := range errs {
		if onPaused[c] && !errors.Is(err, context.DeadlineExceeded) || !onPaused[c] && err != nil {
			t.Errorf("consumer %d (on the paused master: %v): %v", c, onPaused[c], err)
		}
	}
	mu.Lock()
	for slot := range failed {
		if !pausedSlots[slot] {
			t.Errorf("health heard of slot %d, on a live master", slot)
		}
	}
	if len(failed) != len(pausedSlots) {
		t.Errorf("health heard of %d slots; the paused master's consumers have %d", len(failed), len(pausedSlots))
	}
	mu.Unlock()
	await.Until(t, 10*time.Second, func() bool { return lateCounts(t, reg)["refunded"] == float64(len(onPaused)) },
		"the paused master's late decisions given back")
	for c := range consumers {
		d, err := l.Decide(ctx, bucket(c, 0))
		if err != nil {
			t.Fatal(err)
		}
		want := int64(99)
		if onPaused[c] {
			want = 100 // the caller saw a timeout: not charged
		}
		if d.Statuses[0].Remaining != want {
			t.Errorf("consumer %d (on the paused master: %v): %d left, want %d", c, onPaused[c], d.Statuses[0].Remaining, want)
		}
	}
}

func testSlotMatchesRedis(t *testing.T, cluster *redistest.Cluster) {
	client := cluster.Client(t)
	for _, key := range []string{"foo", "{user1000}.following", "{user1000}.followers", "{}x", "bar{}", "{c:acme}:rate:pro", "a{b}c{d}", "{", "}{x}"} {
		want, err := client.ClusterKeySlot(context.Background(), key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := limiter.Slot(key); int64(got) != want {
			t.Errorf("Slot(%q) = %d, Redis says %d", key, got, want)
		}
	}
}

// With the store down, each replica enforces its share of the rate and
// counts usage; when the store is back the usage is added, none lost.
func TestFallbackEnforcesShareAndReconcilesUsage(t *testing.T) {
	srv := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1, DialTimeout: 100 * time.Millisecond})
	defer client.Close()
	local, err := limiter.NewLocal(limiter.LocalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	var failures int
	f := limiter.NewFallback(limiter.FallbackConfig{
		Primary:        limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Timeout: time.Second}),
		Local:          local,
		Share:          func() int { return 4 },
		ReconcileEvery: time.Hour, // driven by hand below
		OnError:        func(error) { failures++ },
		Log:            zaptest.NewLogger(t),
		Ledger:         limiter.NewRedisLedger(client, time.Minute),
	})
	defer f.Close()
	ctx := context.Background()
	limits := []limiter.Limit{
		{Kind: limiter.Bucket, Name: "rate", Key: "{c:f}:rate", Cost: 1, Requests: 40, Per: time.Hour},
		{Kind: limiter.Quota, Name: "quota", Key: "{c:f}:quota", Cost: 2, Max: 1000, Unit: plan.Month},
		{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey("f", usage.Terms{Meter: "api_calls"}), Cost: 2, WindowSize: time.Minute},
	}
	if d, err := f.Decide(ctx, limits); err != nil || !d.OK {
		t.Fatalf("with Redis up: %v %v", d.OK, err)
	}
	srv.Kill()
	allowed := 0
	for i := 0; i < 30; i++ {
		d, err := f.Decide(ctx, limits)
		if err != nil {
			t.Fatalf("fallback returned an error: %v", err)
		}
		if d.OK {
			allowed++
		}
	}
	if allowed != 10 || failures != 30 {
		t.Fatalf("with Redis down: %d allowed (want 10, a quarter of 40), %d store errors seen", allowed, failures)
	}
	f.Reconcile(ctx) // Redis still down: the usage stays owed
	if f.Owed() != 2 {
		t.Fatalf("owed %d counters and windows, want 2", f.Owed())
	}
	srv.Restart()
	// The client's pool may keep answering with the last dial error for
	// up to a second after Redis returns.
	await.Until(t, 5*time.Second, func() bool { f.Reconcile(ctx); return f.Owed() == 0 }, "the owed usage to be reconciled once Redis is back")
	// 1 request before the outage was lost with Redis's memory (no
	// persistence in this test); the 10 during it were added back.
	d, err := f.Decide(ctx, limits[1:2])
	if err != nil || d.Statuses[0].Used != 22 {
		t.Fatalf("quota used %d after reconcile, want 20 + 2 (%v)", d.Statuses[0].Used, err)
	}
	// The outage's usage reached the ledger, where the exporter bills it.
	ws, err := limiter.NewRedisLedger(client, time.Minute).Windows(ctx, "f", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	var units int64
	for _, w := range ws {
		units += w.Units
	}
	if err != nil || units != 20 {
		t.Fatalf("ledger units %d after reconcile, want the outage's 20 (%v)", units, err)
	}
}

func TestLedgerOnRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	limitertest.RunLedger(t, func(t *testing.T, clock *limitertest.Clock) (limiter.Limiter, usage.Ledger) {
		client.FlushAll(context.Background())
		return limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second}),
			limiter.NewRedisLedger(client, time.Minute)
	}, true)
}

// A consumer's windows are found through its set of ledgers, without a
// scan; a ledger written before levy kept that set joins it at the next
// export pass.
func TestRedisLedgerFindsAConsumersWindowsWithoutAScan(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	ctx := context.Background()
	ledger := limiter.NewRedisLedger(client, time.Minute)
	start := time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)
	key := usage.LedgerKey("old", usage.Terms{Meter: "api_calls"})
	// As an older levy wrote it: the window and its index, no set.
	w := key + ":" + strconv.FormatInt(start.Unix(), 10)
	if err := client.HSet(ctx, w, "u", 7, "z", 60).Err(); err != nil {
		t.Fatal(err)
	}
	client.ZAdd(ctx, key, redis.Z{Score: float64(start.Unix()), Member: start.Unix()})
	if ws, err := ledger.Windows(ctx, "old", start, start.Add(time.Hour)); err != nil || len(ws) != 0 {
		t.Fatalf("before the export pass: %+v %v", ws, err)
	}
	if due, err := ledger.Due(ctx, start.Add(time.Hour)); err != nil || len(due) != 1 {
		t.Fatalf("due %+v %v", due, err)
	}
	ws, err := ledger.Windows(ctx, "old", start, start.Add(time.Hour))
	if err != nil || len(ws) != 1 || ws[0].Units != 7 {
		t.Fatalf("after the export pass: %+v %v", ws, err)
	}
}

// Units a replica counted while it could not reach Redis belong to the
// window they were counted in, even when another replica exported that
// window meanwhile: a correction of that window, in its billing period,
// not usage of the window after (at a month's end, the next month's).
func TestUnitsCountedDuringAnOutageCorrectTheirExportedWindow(t *testing.T) {
	ctx, _, led, key := redisLedger(t, time.Minute)
	last := time.Date(2026, 3, 31, 23, 59, 0, 0, time.UTC) // March's last window
	if err := led.AddUnits(ctx, key, last, time.Minute, 4, ""); err != nil {
		t.Fatal(err)
	}
	ws, err := led.Due(ctx, last.Add(time.Hour))
	if err != nil || len(ws) != 1 {
		t.Fatalf("due %+v %v", ws, err)
	}
	if err := led.Commit(ctx, ws[0], 4, ws); err != nil { // exported by another replica
		t.Fatal(err)
	}
	// The partitioned replica reconciles what it counted in that window.
	if err := led.AddUnits(ctx, key, last, time.Minute, 3, ""); err != nil {
		t.Fatal(err)
	}
	march, err := led.Windows(ctx, "f", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC))
	if err != nil || len(march) != 1 || march[0].Units != 7 || !march[0].Due() || march[0].Accounted != 4 {
		t.Fatalf("March's windows %+v %v: want the last one at 7 units, due again as a correction of 4", march, err)
	}
	april, err := led.Windows(ctx, "f", time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC))
	if err != nil || len(april) != 0 {
		t.Fatalf("April's windows %+v %v: want none", april, err)
	}
}

// A backlog of windows (a day of them after a Stripe outage) is accounted
// in bounded script calls, all of them, and the event once.
func TestRedisLedgerAccountsABacklogInChunks(t *testing.T) {
	ctx, _, led, key := redisLedger(t, time.Second)
	start := time.Date(2026, 3, 14, 0, 0, 0, 0, time.UTC)
	const n = 1234
	for i := range n {
		if err := led.AddUnits(ctx, key, start.Add(time.Duration(i)*time.Second), time.Second, 1, ""); err != nil {
			t.Fatal(err)
		}
	}
	due, err := led.Due(ctx, start.Add(time.Hour))
	if err != nil || len(due) != n {
		t.Fatalf("due: %d %v", len(due), err)
	}
	last := due[len(due)-1]
	if err := led.Commit(ctx, last, n, due); err != nil {
		t.Fatal(err)
	}
	if left, err := led.Due(ctx, start.Add(time.Hour)); err != nil || len(left) != 0 {
		t.Fatalf("left due: %d %v", len(left), err)
	}
	ws, _ := led.Windows(ctx, "f", start, start.Add(time.Hour))
	var billed int64
	for _, w := range ws {
		billed += w.Billed
	}
	if len(ws) != n || billed != n || ws[len(ws)-1].Events != 1 {
		t.Fatalf("%d windows, billed %d", len(ws), billed)
	}
}

// lostReplies makes the next pipeline's replies fail after Redis ran its
// commands: a read timeout on a large pipeline (the backlog a receiver
// writes after an outage).
type lostReplies struct{ armed atomic.Bool }

func (h *lostReplies) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *lostReplies) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *lostReplies) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if h.armed.CompareAndSwap(true, false) {
			err = errors.New("i/o timeout")
			for _, c := range cmds {
				c.SetErr(err)
			}
		}
		return err
	}
}

// A settlement whose reply was lost is tried again on its own; the
// requests without an x-request-id (and the units a receiver keeps
// without fingerprints past its bound) must not count twice.
func TestRedisLedgerRetriedAdjustAppliesEachRequestOnce(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	hook := &lostReplies{}
	client.AddHook(hook)
	ctx := context.Background()
	led := limiter.NewRedisLedger(client, time.Minute)
	key := usage.LedgerKey("f", limitertest.LedgerTerms)
	start := time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)
	if err := led.AddUnits(ctx, key, start, time.Minute, 5, ""); err != nil {
		t.Fatal(err)
	}
	// The adjust script is loaded: the pipeline runs it.
	if err := led.Adjust(ctx, []usage.Adjustment{{Key: key, Start: start, Consumer: "f", Terms: limitertest.LedgerTerms, At: start}}); err != nil {
		t.Fatal(err)
	}
	hook.armed.Store(true)
	err := led.Adjust(ctx, []usage.Adjustment{{Key: key, Start: start, Consumer: "f", Terms: limitertest.LedgerTerms, At: start,
		Units: 4, Reported: 5, Refunded: 1,
		Requests: []usage.Settled{{Units: -1}, {Units: 3}, {ID: usage.FingerprintOf("r1", 1), Units: 2}}}})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := led.Windows(ctx, "f", start, start.Add(time.Minute))
	if err != nil || len(ws) != 1 || ws[0].Units != 9 {
		t.Fatalf("windows %+v %v: want 5 units admitted and 4 settled, once", ws, err)
	}
}

// Units a replica counted during an outage are added once, even when the
// answer to the first attempt is lost and it tries again.
func TestRedisLedgerAddsOutageUnitsOnceAcrossRetries(t *testing.T) {
	ctx, _, led, key := redisLedger(t, time.Minute)
	start := time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)
	for range 2 { // the same attempt twice: its answer was lost the first time
		if err := led.AddUnits(ctx, key, start, time.Minute, 5, "attempt-1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := led.AddUnits(ctx, key, start, time.Minute, 2, "attempt-2"); err != nil {
		t.Fatal(err)
	}
	ws, err := led.Windows(ctx, "f", start, start.Add(time.Minute))
	if err != nil || len(ws) != 1 || ws[0].Units != 7 {
		t.Fatalf("windows %+v %v, want one of 7 units", ws, err)
	}
}

// redisLedger is a Redis ledger of windows of size on a redis-server of its
// own, and consumer f's ledger key under the suite's terms.
func redisLedger(t *testing.T, size time.Duration) (context.Context, *redis.Client, *limiter.RedisLedger, string) {
	t.Helper()
	client := redistest.Start(t).Client()
	return context.Background(), client, limiter.NewRedisLedger(client, size), usage.LedgerKey("f", limitertest.LedgerTerms)
}

// A quota counter on Redis lives until a day after its period ends: the
// expiry is set when a period's first decision takes (and when a
// settlement made the counter, whose end it could not know), not by every
// decision, which would cost one Redis command in seven.
func TestRedisQuotaCounterExpiresADayAfterItsPeriod(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	ctx := context.Background()
	clock := limitertest.NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
	led := limiter.NewRedisLedger(client, time.Minute)
	terms := limitertest.LedgerTerms
	quota := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: usage.QuotaKey("acme"), Cost: 1, Max: 100, Unit: plan.Month}
	ledger := limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey("acme", terms), WindowSize: time.Minute}
	// The script's clock is the test's; Redis expires on its own, so a
	// key's time to live is compared with the test clock's distance to
	// the period's end (plus the minute a test clock adds to buckets is
	// not added to quotas).
	ttlLeft := func() time.Duration {
		t.Helper()
		ttl, err := client.PTTL(ctx, quota.Key).Result()
		if err != nil {
			t.Fatal(err)
		}
		return ttl
	}
	want := func(end time.Time) time.Duration { return end.Sub(clock.Now()) + 24*time.Hour }
	near := func(got, want time.Duration) bool { return got <= want && got > want-5*time.Second }

	// A route free at admission: the settlement makes the counter, with a
	// placeholder expiry, and the next decision that takes sets the real one.
	d, err := l.Decide(ctx, []limiter.Limit{ledger})
	if err != nil || !d.OK {
		t.Fatal(d.OK, err)
	}
	march := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	if err := led.Adjust(ctx, []usage.Adjustment{{Key: ledger.Key, Start: d.Statuses[0].PeriodStart, At: d.Statuses[0].PeriodStart,
		Quota: quota.Key, QuotaStart: march, Consumer: "acme", Terms: terms, Units: 3, Reported: 3}}); err != nil {
		t.Fatal(err)
	}
	if got := ttlLeft(); got < 300*24*time.Hour {
		t.Fatalf("a settled counter's expiry is %s; want the placeholder of a year", got)
	}
	april := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		if d, err := l.Decide(ctx, []limiter.Limit{quota}); err != nil || !d.OK {
			t.Fatal(d.OK, err)
		}
		if got := ttlLeft(); !near(got, want(april)) {
			t.Fatalf("decision %d: the counter expires in %s; want a day after the period, %s", i, got, want(april))
		}
		if n, _ := client.HExists(ctx, quota.Key, "t").Result(); n {
			t.Fatalf("decision %d: the placeholder mark is still there", i)
		}
	}
	if used := limitertest.Usage(t, l, quota); used != 6 {
		t.Fatalf("used %d; want 3 settled and 3 decided", used)
	}
	// The next period's first decision moves the expiry to its own end.
	clock.Set(time.Date(2026, 4, 2, 0, 0, 0, 0, time.UTC))
	if d, err := l.Decide(ctx, []limiter.Limit{quota}); err != nil || !d.OK {
		t.Fatal(d.OK, err)
	}
	if got, w := ttlLeft(), want(time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)); !near(got, w) {
		t.Fatalf("in April the counter expires in %s; want %s", got, w)
	}
}
