package redisstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/usage"
)

// The layout before keyspace.Version, spelled out as levy wrote it: the
// fixture that a deployment's Redis holds when it upgrades.
const (
	oldQuota      = "{c:acme}:units"
	oldRate       = "{c:acme}:rate:pro"
	oldLedger     = "{c:acme}:ledger:api_calls"
	oldLedgers    = "{c:acme}:ledgers"
	oldBoltQuota  = "{c:bolt}:units"
	oldBoltRate   = "{c:bolt}:rate:pro"
	oldBoltLedger = "{c:bolt}:ledger:api_calls"
	oldRule       = "{rl:api.path=/v1}:b:60000000000"
)

func TestMigrateLayoutKeepsCountsAndUnexportedUsage(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		testMigrateLayout(t, redistest.Start(t).Client(), false)
	})
	t.Run("cluster", func(t *testing.T) {
		testMigrateLayout(t, redistest.StartCluster(t).Client(t), true)
	})
}

func testMigrateLayout(t *testing.T, client redis.UniversalClient, cluster bool) {
	ctx := context.Background()
	lim := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: cluster, Timeout: 5 * time.Second})
	ledger := limiter.NewRedisLedger(client, time.Minute)
	quota := func(key string, cost int64) limiter.Limit {
		return limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: key, Cost: cost, Max: 10, Unit: plan.Month}
	}
	rate := func(key string, cost int64) limiter.Limit {
		return limiter.Limit{Kind: limiter.Bucket, Name: "rate", Key: key, Cost: cost, Requests: 5, Per: time.Hour}
	}
	window := func(key string, cost int64) limiter.Limit {
		return limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: key, Cost: cost, WindowSize: time.Minute}
	}
	decide := func(limits ...limiter.Limit) limiter.Decision {
		t.Helper()
		d, err := lim.Decide(ctx, limits)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	terms := usage.Terms{Meter: "api_calls"}
	newLedger, newBoltLedger := usage.LedgerKey("acme", terms), usage.LedgerKey("bolt", terms)

	// acme: only an older levy wrote it: 7 of 10, 2 of 5 tokens, 5 units.
	decide(quota(oldQuota, 7), rate(oldRate, 2), window(oldLedger, 5))
	// bolt: a rolling update; both wrote. The older levy's state (4 of the
	// quota, 3 tokens, 5 units it exported) and the new (3, 1, 2 units).
	decide(quota(oldBoltQuota, 4), rate(oldBoltRate, 3), window(oldBoltLedger, 5))
	decide(quota(usage.QuotaKey("bolt"), 3), rate(keyspace.Rate("bolt", "pro"), 1), window(newBoltLedger, 2))
	due, err := ledger.Due(ctx, time.Now().Add(time.Hour))
	if err != nil || len(due) != 1 {
		t.Fatalf("before: due %+v, %v; want the new bolt window", due, err)
	}
	var oldBolt usage.Window
	if ws, err := ledgerWindows(ctx, client, oldBoltLedger); err != nil || len(ws) != 1 {
		t.Fatalf("old bolt window: %v %v", ws, err)
	} else {
		oldBolt = usage.Window{Key: oldBoltLedger, Start: time.Unix(ws[0], 0), Units: 5}
	}
	// the older levy exported its 5 units
	if err := ledger.Commit(ctx, oldBolt, 5, []usage.Window{oldBolt}); err != nil {
		t.Fatal(err)
	}
	client.Set(ctx, oldRule, "1", time.Hour)

	pass, err := redisstore.MigrateLayout(ctx, client)
	if err != nil || pass.Moved == 0 || pass.Skipped != 0 {
		t.Fatalf("MigrateLayout = %+v, %v", pass, err)
	}
	if again, err := redisstore.MigrateLayout(ctx, client); err != nil || again.Moved != 0 {
		t.Fatalf("a second MigrateLayout = %+v, %v; want nothing left", again, err)
	}
	if left := legacyKeys(ctx, t, client); len(left) > 0 {
		t.Fatalf("old keys left: %v", left)
	}

	checks := []struct {
		name            string
		limit           limiter.Limit
		used, remaining int64
	}{
		{"acme quota", quota(usage.QuotaKey("acme"), 0), 7, 3},
		{"acme bucket", rate(keyspace.Rate("acme", "pro"), 0), 0, 3},
		{"bolt quota summed", quota(usage.QuotaKey("bolt"), 0), 7, 3},
		{"bolt bucket, the more spent", rate(keyspace.Rate("bolt", "pro"), 0), 0, 2},
	}
	for _, c := range checks {
		s := decide(c.limit).Statuses[0]
		if s.Used != c.used || s.Remaining != c.remaining {
			t.Errorf("%s: used %d remaining %d, want %d and %d", c.name, s.Used, s.Remaining, c.used, c.remaining)
		}
	}
	if ttl := client.PTTL(ctx, usage.QuotaKey("acme")).Val(); ttl <= 0 {
		t.Errorf("the moved quota counter lost its expiry: %v", ttl)
	}
	if n := client.Exists(ctx, keyspace.State+oldRule).Val(); n != 1 {
		t.Errorf("the RLS rule's bucket was not moved")
	}
	if m := client.SMembers(ctx, keyspace.Ledgers("acme")).Val(); len(m) != 1 || m[0] != newLedger {
		t.Errorf("acme's ledgers = %v, want [%s]", m, newLedger)
	}

	// What Stripe has not got is due, once: acme's 5 units, bolt's 2.
	due, err = ledger.Due(ctx, time.Now().Add(time.Hour))
	if err != nil || len(due) != 2 {
		t.Fatalf("after: due %+v, %v; want acme's and bolt's windows", due, err)
	}
	want := map[string][2]int64{newLedger: {5, 0}, newBoltLedger: {7, 5}} // units, accounted
	for _, w := range due {
		if got := [2]int64{w.Units, w.Accounted}; got != want[w.Key] {
			t.Errorf("%s: units and accounted %v, want %v", w.Key, got, want[w.Key])
		}
		if err := ledger.Commit(ctx, w, w.Units-w.Accounted, []usage.Window{w}); err != nil {
			t.Fatal(err)
		}
	}
	if due, err := ledger.Due(ctx, time.Now().Add(time.Hour)); err != nil || len(due) != 0 {
		t.Fatalf("exported again: %+v, %v", due, err)
	}
	ws, err := ledger.Windows(ctx, "bolt", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil || len(ws) != 1 || ws[0].Billed != 7 || ws[0].Events != 2 {
		t.Fatalf("bolt's windows %+v, %v: want one, billed 7 in 2 events", ws, err)
	}
}

// ledgerWindows is the window starts of ledger's index.
func ledgerWindows(ctx context.Context, client redis.UniversalClient, ledger string) ([]int64, error) {
	var out []int64
	err := client.ZRange(ctx, ledger, 0, -1).ScanSlice(&out)
	return out, err
}

// legacyKeys lists the keys of the old layout on every master.
func legacyKeys(ctx context.Context, t *testing.T, client redis.UniversalClient) []string {
	t.Helper()
	var mu sync.Mutex
	var out []string
	scan := func(ctx context.Context, c *redis.Client) error {
		for _, p := range keyspace.LegacyPatterns {
			keys, err := c.Keys(ctx, p).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			out = append(out, keys...)
			mu.Unlock()
		}
		return nil
	}
	var err error
	if cc, ok := client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, scan)
	} else {
		err = scan(ctx, client.(*redis.Client))
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}
