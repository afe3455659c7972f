package alert_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/consumerlimits"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// roundTrips counts what a go-redis client sends: a command or a
// pipeline is one round trip to a standalone Redis (a new connection's
// handshake aside).
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n != "hello" && n != "client" { // a new connection's handshake
			r.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if n := cmds[0].Name(); n != "hello" && n != "client" {
			r.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// A scan of 2,500 consumers on Redis reads their usage a thousand a Peek
// and queues a batch's alerts in one call: its round trips (counted on
// the client, lease included) grow with the batches, not the consumers.
func TestScanRoundTripsGrowWithBatchesNotConsumers(t *testing.T) {
	f := newFixture(t)
	client := redistest.Start(t).Client()
	defer client.Close()
	trips := &roundTrips{}
	client.AddHook(trips)
	lim := limiter.NewRedis(limiter.RedisConfig{Client: client, Timeout: 10 * time.Second})
	defer lim.Close()
	ctx := context.Background()

	const n = 2500
	cs := make([]*apikey.Consumer, n)
	for i := range cs {
		cs[i] = &apikey.Consumer{ID: fmt.Sprintf("c%04d", i), Plan: "pro"}
	}
	// Three consumers, in three batches, past 80%; one of them at 100%.
	p, _ := f.cat.Get("pro")
	used := map[int]int64{7: 850, 1234: 1000, 2400: 900}
	for i, u := range used {
		if err := lim.Add(ctx, []limiter.Limit{consumerlimits.For(cs[i], p, u, 0).Quota}); err != nil {
			t.Fatal(err)
		}
	}
	a, reg := f.alerterWith(t, redisstore.Alerts{Client: client}, func(c *alert.Config) {
		c.Usage = lim
		c.Consumers = func(ctx context.Context, fn func(*apikey.Consumer) error) error {
			for _, c := range cs {
				if err := fn(c); err != nil {
					return err
				}
			}
			return nil
		}
		c.Lease, c.Holder = redisstore.NewLease(client, "usage-alerts"), "a"
	})

	// batches Peeks, 3 outbox calls (a batch with a crossing), a lease.
	const batches = (n + 999) / 1000
	want := int64(batches + 3 + 1)
	for scan := range 2 {
		before := trips.n.Load()
		scanned, err := a.ScanIfHolder(ctx)
		if err != nil || !scanned {
			t.Fatalf("scan %d: scanned %v, %v", scan, scanned, err)
		}
		got := trips.n.Load() - before
		// The first scan also loads each script once (a NOSCRIPT, then
		// the script itself): the Peek, the outbox's and the lease's.
		if scan == 0 && got > want+3 || scan == 1 && got != want {
			t.Errorf("scan %d of %d consumers: %d round trips, want %d (+3 script loads the first time)", scan, n, got, want)
		}
	}
	for th, wantFired := range map[string]float64{"80": 3, "100": 1} {
		if v := counter(t, reg, th, alert.OutcomeFired); v != wantFired {
			t.Errorf("fired at %s%%: %v, want %v", th, v, wantFired)
		}
	}
	if q, err := (redisstore.Alerts{Client: client}).Queued(ctx); err != nil || q != 4 {
		t.Errorf("queued %d (%v), want 4", q, err)
	}
}

// Two replicas on one Redis: the one holding the scan's lease scans, the
// other does not; when the holder stops (releasing it) or dies (letting
// it lapse), the other takes over.
func TestOneReplicaScansAtATime(t *testing.T) {
	f := newFixture(t)
	client := redistest.Start(t).Client()
	defer client.Close()
	store := redisstore.Alerts{Client: client}
	replica := func(name string, every time.Duration) *alert.Alerter {
		a, _ := f.alerterWith(t, store, func(c *alert.Config) {
			c.Lease, c.Holder, c.ScanEvery = redisstore.NewLease(client, "usage-alerts"), name, every
		})
		return a
	}
	ctx := context.Background()
	scans := func(a *alert.Alerter) bool {
		t.Helper()
		scanned, err := a.ScanIfHolder(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return scanned
	}

	// a holds the lease and runs, renewing it, until it stops and
	// releases it.
	a, b := replica("a", time.Hour), replica("b", time.Hour)
	if !scans(a) {
		t.Fatal("a did not take the free lease")
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.Run(runCtx) }()
	if scans(b) {
		t.Fatal("b scanned while a holds the lease")
	}
	stop()
	<-done
	if !scans(b) {
		t.Fatal("b did not take over the lease a released when it stopped")
	}

	// b dies holding it: c takes over once it lapses (3 scan intervals).
	c := replica("c", 100*time.Millisecond)
	b2 := replica("b", 100*time.Millisecond)
	if !scans(b2) || scans(c) {
		t.Fatal("b (renewing) and c do not see the lease as b holds it")
	}
	start := time.Now()
	await.Until(t, 5*time.Second, func() bool { return scans(c) }, "c to take over the lease b let lapse")
	if waited := time.Since(start); waited < 200*time.Millisecond {
		t.Errorf("c took the lease %v after b's last renewal, before it lapsed (300ms)", waited)
	}
}

// BenchmarkScan100k scans 100,000 consumers on Redis, none of them past a
// threshold: a thousand a Peek, and a Peek each (as scans did before). On
// a three-master cluster (cluster/batch=1000) each consumer's quota has a
// slot of its own, and round-trips/op counts one for each master a Peek's
// pipeline reaches.
func BenchmarkScan100k(b *testing.B) {
	f := newFixture(b)
	cs := make([]*apikey.Consumer, 100_000)
	for i := range cs {
		cs[i] = &apikey.Consumer{ID: fmt.Sprintf("c%06d", i), Plan: "pro"}
	}
	trips := &roundTrips{}
	standalone := redistest.Start(b).Client()
	standalone.AddHook(trips)
	b.Cleanup(func() { standalone.Close() })
	for _, bb := range []struct {
		name    string
		cluster bool
		batch   int
	}{
		{"redis/batch=1000", false, 1000},
		{"redis/batch=1", false, 1},
		{"cluster/batch=1000", true, 1000},
	} {
		b.Run(bb.name, func(b *testing.B) {
			var client redis.UniversalClient = standalone
			if bb.cluster {
				cc := redistest.StartCluster(b).Client(b)
				cc.OnNewNode(func(node *redis.Client) { node.AddHook(trips) })
				client = cc
			}
			lim := limiter.NewRedis(limiter.RedisConfig{Client: client, Cluster: bb.cluster, Timeout: 10 * time.Second})
			b.Cleanup(func() { lim.Close() })
			a, _ := f.alerterWith(b, redisstore.Alerts{Client: client}, func(c *alert.Config) {
				c.Usage, c.Batch = lim, bb.batch
				c.Consumers = func(ctx context.Context, fn func(*apikey.Consumer) error) error {
					for _, c := range cs {
						if err := fn(c); err != nil {
							return err
						}
					}
					return nil
				}
			})
			trips.n.Store(0)
			for b.Loop() {
				if err := a.Scan(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(trips.n.Load())/float64(b.N), "round-trips/op")
		})
	}
}
