package redisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/apikey/storetest"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDirectory(t *testing.T) {
	srv := redistest.Start(t)
	storetest.Run(t, func(t *testing.T) apikey.Store {
		c, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr})
		t.Cleanup(func() { c.Close() })
		if err := c.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		return redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, Log: zaptest.NewLogger(t)})
	})
}

func TestDirectoryOnCluster(t *testing.T) {
	cluster := redistest.StartCluster(t)
	storetest.Run(t, func(t *testing.T) apikey.Store {
		c, _ := redisstore.NewClient(redisstore.Options{ClusterAddrs: cluster.Addrs(), Timeout: time.Second})
		t.Cleanup(func() { c.Close() })
		for i := 0; i < 3; i++ { // flush each master
			cluster.Nodes[i].Client().FlushAll(context.Background())
		}
		return redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c})
	})
}

// A second replica's cache sees a revocation and a plan change once its
// entries are older than the TTL, and serves what it had while Redis is away.
func TestOtherReplicaSeesChangesWithinTTLAndServesStaleWhenRedisIsDown(t *testing.T) {
	srv := redistest.Start(t)
	clock := limitertest.NewClock(time.Now())
	newDir := func() *redisstore.Directory {
		c, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr})
		t.Cleanup(func() { c.Close() })
		return redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, TTL: 500 * time.Millisecond, Clock: clock.Now})
	}
	a, b := newDir(), newDir()
	ctx := context.Background()
	a.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "free"})
	a.PutKey(ctx, &apikey.Key{ID: "k", Hash: "h", ConsumerID: "acme"})
	if _, c, err := b.Lookup(ctx, "h"); err != nil || c.Plan != "free" {
		t.Fatalf("b: %+v %v", c, err)
	}
	a.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "pro"})
	a.RevokeKey(ctx, "k")
	if k, _, _ := b.Lookup(ctx, "h"); k.Revoked {
		t.Fatal("b saw the revocation before its TTL: the cache is not used")
	}
	clock.Advance(500 * time.Millisecond)
	k, c, err := b.Lookup(ctx, "h")
	if err != nil || !k.Revoked || c.Plan != "pro" {
		t.Fatalf("b after the TTL: %+v %+v %v", k, c, err)
	}

	srv.Kill()
	clock.Advance(time.Hour)
	if k, _, err := b.Lookup(ctx, "h"); err != nil || !k.Revoked {
		t.Fatalf("stale entry not served while Redis is down: %v", err)
	}
	if _, _, err := b.Lookup(ctx, "never-seen"); err == nil || errors.Is(err, apikey.ErrUnknown) {
		t.Fatalf("an uncached key with Redis down: %v, want a store error (not 'unknown')", err)
	}
}

// On a cluster, a master that is down stops only its own hash slots: a
// failed call marks it down at once, the pings keep it down while it is
// away and mark it up when it is back, and levy stays ready meanwhile.
func TestHealthOnClusterStopsOnlyTheDeadMastersSlots(t *testing.T) {
	cluster := redistest.StartCluster(t, "--cluster-require-full-coverage", "no")
	client, _ := redisstore.NewClient(redisstore.Options{ClusterAddrs: cluster.Addrs(), Timeout: 200 * time.Millisecond})
	defer client.Close()
	ctx := context.Background()
	slots, err := client.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	dead := cluster.Nodes[0].Addr
	var onDead, onLive uint16
	for _, r := range slots {
		if r.Nodes[0].Addr == dead {
			onDead = uint16(r.Start)
		} else {
			onLive = uint16(r.Start)
		}
	}
	h := redisstore.StartHealth(client, "replica", 100*time.Millisecond, zaptest.NewLogger(t))
	defer h.Stop()
	if !h.Ready() || !h.SlotReady(onDead) || !h.SlotReady(onLive) {
		t.Fatalf("every master up: ready %v, slots %v %v", h.Ready(), h.SlotReady(onDead), h.SlotReady(onLive))
	}
	// A Redis error reply is no sign of a dead node.
	h.SlotFailed(onLive, redis.Nil)
	if !h.SlotReady(onLive) {
		t.Fatal("a Redis error reply marked the slot's master down")
	}

	cluster.Nodes[0].Kill()
	h.SlotFailed(onDead, context.DeadlineExceeded) // as a decision's call would
	if h.SlotReady(onDead) || !h.SlotReady(onLive) || !h.Ready() {
		t.Fatalf("after a failed call to the dead master: its slot ready %v, a live one's %v, ready %v",
			h.SlotReady(onDead), h.SlotReady(onLive), h.Ready())
	}
	// Pings that find it away keep it down; the others stay up.
	pings := h.Pings()
	waitUntil(t, func() bool { return h.Pings() >= pings+3 })
	if h.SlotReady(onDead) || !h.SlotReady(onLive) || !h.Ready() {
		t.Fatalf("after pings with the master dead: its slot ready %v, a live one's %v, ready %v",
			h.SlotReady(onDead), h.SlotReady(onLive), h.Ready())
	}

	cluster.Nodes[0].Restart()
	waitUntil(t, func() bool { return h.SlotReady(onDead) })
	if !h.SlotReady(onLive) || !h.Ready() {
		t.Fatal("the master is back, and a live slot or readiness is not")
	}
}

// waitUntil polls cond until it holds, for at most 20 seconds.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	await.Until(t, 20*time.Second, cond, "the condition")
}

// A deleted consumer's keys and a revoked key stop working on a replica
// that follows invalidations at once, not at its cache TTL (an hour here),
// on a standalone Redis and on a Cluster (where PUBLISH reaches every
// node's subscribers).
func TestOtherReplicaDropsDeletedConsumerAtOnce(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		srv := redistest.Start(t)
		dropsAtOnce(t, redisstore.Options{Addr: srv.Addr, Timeout: time.Second})
	})
	t.Run("cluster", func(t *testing.T) {
		cluster := redistest.StartCluster(t)
		dropsAtOnce(t, redisstore.Options{ClusterAddrs: cluster.Addrs(), Timeout: time.Second})
	})
}

func dropsAtOnce(t *testing.T, opts redisstore.Options) {
	clock := limitertest.NewClock(time.Now())
	newDir := func() *redisstore.Directory {
		c, _ := redisstore.NewClient(opts)
		t.Cleanup(func() { c.Close() })
		return redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, TTL: time.Hour, Clock: clock.Now, Log: zaptest.NewLogger(t)})
	}
	a, b := newDir(), newDir()
	stop := b.Follow()
	defer stop()
	ctx := context.Background()
	a.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "free"})
	a.PutKey(ctx, &apikey.Key{ID: "k1", Hash: "h1", ConsumerID: "acme"})
	a.PutKey(ctx, &apikey.Key{ID: "k2", Hash: "h2", ConsumerID: "acme"})
	eventually := func(what string, ok func() bool) {
		t.Helper()
		await.Until(t, 2*time.Second, ok, what+" seen by the other replica (its TTL is an hour)")
	}
	eventually("keys", func() bool { _, _, err := b.Lookup(ctx, "h1"); return err == nil })
	if _, _, err := b.Lookup(ctx, "h2"); err != nil {
		t.Fatal(err)
	}
	a.RevokeKey(ctx, "k2")
	eventually("revocation", func() bool { k, _, err := b.Lookup(ctx, "h2"); return err == nil && k.Revoked })
	if err := a.DeleteConsumer(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	eventually("deletion", func() bool {
		_, _, err := b.Lookup(ctx, "h1")
		_, found := b.Consumer("acme")
		return errors.Is(err, apikey.ErrUnknown) && !found
	})
}

// A replica's own invalidations come back to it through the channel it
// follows, after it may have cached fresh lookups: those stay, so that a
// key it looked up just before Redis went away still answers (on_store_error:
// allow serves from that cache). Its first subscription drops nothing either.
func TestOwnInvalidationsKeepWhatWasCachedSince(t *testing.T) {
	srv := redistest.Start(t)
	newDir := func() *redisstore.Directory {
		c, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr, Timeout: time.Second})
		t.Cleanup(func() { c.Close() })
		return redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, TTL: time.Hour, Log: zaptest.NewLogger(t)})
	}
	a, b := newDir(), newDir()
	ctx := context.Background()
	b.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "free"})
	b.PutKey(ctx, &apikey.Key{ID: "k0", Hash: "h0", ConsumerID: "acme"})
	if _, _, err := a.Lookup(ctx, "h0"); err != nil { // cached for an hour
		t.Fatal(err)
	}
	stop := a.Follow()
	defer stop()
	// a follows once it hears b revoke k0
	waitUntil(t, func() bool {
		b.RevokeKey(ctx, "k0")
		k, _, err := a.Lookup(ctx, "h0")
		return err == nil && k.Revoked
	})
	a.PutKey(ctx, &apikey.Key{ID: "k1", Hash: "h1", ConsumerID: "acme"}) // a's own invalidation of h1
	if _, _, err := a.Lookup(ctx, "h1"); err != nil {                    // cached after it
		t.Fatal(err)
	}
	b.PutKey(ctx, &apikey.Key{ID: "k0", Hash: "h0", ConsumerID: "acme"}) // after a's, on the channel
	waitUntil(t, func() bool { k, _, err := a.Lookup(ctx, "h0"); return err == nil && !k.Revoked })
	srv.Kill()
	if k, _, err := a.Lookup(ctx, "h1"); err != nil || k.ID != "k1" {
		t.Fatalf("a key looked up after its own invalidation, with Redis gone: %v, %v", k, err)
	}
}

// Consumers and keys an older levy stored, before the indexes, are listed
// after Backfill, and deleting such a consumer deletes its keys, so that
// a consumer created again with its id does not get them back.
func TestBackfillIndexesWhatAnOlderLevyStored(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		backfills(t, redisstore.Options{Addr: redistest.Start(t).Addr, Timeout: time.Second})
	})
	t.Run("cluster", func(t *testing.T) {
		backfills(t, redisstore.Options{ClusterAddrs: redistest.StartCluster(t).Addrs(), Timeout: time.Second})
	})
}

func backfills(t *testing.T, opts redisstore.Options) {
	c, _ := redisstore.NewClient(opts)
	defer c.Close()
	ctx := context.Background()
	// As levy stored them before: hashes and the key-id lookup only.
	c.HSet(ctx, keyspace.Consumer("old"), "plan", "free", "suspended", "0")
	c.HSet(ctx, keyspace.APIKey("hold"), "id", "kold", "consumer", "old", "revoked", "0")
	c.Set(ctx, keyspace.KeyID("kold"), "hold", 0)
	d := redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, Log: zaptest.NewLogger(t)})
	if page, _ := d.ListConsumers(ctx, apikey.ListQuery{Limit: 10}); len(page.Consumers) != 0 {
		t.Fatalf("listed before the backfill: %+v", page.Consumers)
	}
	if err := d.Backfill(ctx); err != nil {
		t.Fatal(err)
	}
	page, err := d.ListConsumers(ctx, apikey.ListQuery{Limit: 10})
	if err != nil || len(page.Consumers) != 1 || page.Consumers[0].ID != "old" {
		t.Fatalf("after the backfill: %+v %v", page.Consumers, err)
	}
	// Without the hint levy records now: a key with none.
	if keys, err := d.ListKeys(ctx, "old"); err != nil || len(keys) != 1 || keys[0].ID != "kold" || keys[0].Hint != "" {
		t.Fatalf("keys after the backfill: %+v %v", keys, err)
	}
	if err := d.DeleteConsumer(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	d.PutConsumer(ctx, &apikey.Consumer{ID: "old", Plan: "free"})
	if _, _, err := d.Lookup(ctx, "hold"); !errors.Is(err, apikey.ErrUnknown) {
		t.Fatalf("an old key of a deleted and re-created consumer: %v", err)
	}
	// Once per Redis: a second run finds the mark and does nothing.
	c.HSet(ctx, keyspace.Consumer("later"), "plan", "free")
	if err := d.Backfill(ctx); err != nil {
		t.Fatal(err)
	}
	if page, _ := d.ListConsumers(ctx, apikey.ListQuery{Limit: 10}); len(page.Consumers) != 1 {
		t.Fatalf("a second backfill ran: %+v", page.Consumers)
	}
}
