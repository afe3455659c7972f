package redisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/apikey/storetest"
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
