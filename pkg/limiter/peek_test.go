package limiter_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// peekLimits are a bucket, an hourly quota and a ledger of one consumer,
// and a quota nobody decided yet.
func peekLimits() []limiter.Limit {
	return []limiter.Limit{
		{Kind: limiter.Bucket, Name: "rate", Key: "{c:p}:rate", Cost: 1, Requests: 10, Per: time.Minute, Burst: 3},
		{Kind: limiter.Quota, Name: "quota", Key: "{c:p}:quota", Cost: 1, Max: 100, Unit: plan.Hour},
		{Kind: limiter.Ledger, Name: "usage", Key: "{c:p}:ledger:api_calls", Cost: 1, WindowSize: time.Minute},
		{Kind: limiter.Quota, Name: "fresh", Key: "{c:p}:fresh", Cost: 1, Max: 100, Unit: plan.Day},
	}
}

// peekLater peeks at limits now and at times when a write would show: a
// bucket's refill, a quota's next period, a ledger's next window.
func peekLater(t *testing.T, s limiter.Store, clock *limitertest.Clock, limits []limiter.Limit) {
	t.Helper()
	for _, step := range []time.Duration{0, 10 * time.Second, time.Minute, time.Hour, 40 * 24 * time.Hour} {
		clock.Advance(step)
		if _, err := s.Peek(context.Background(), limits); err != nil {
			t.Fatal(err)
		}
	}
}

// A Peek writes nothing to Redis: no key is created, changed or deleted,
// and no expiry is touched, even when the clock has moved past a bucket's
// refill, a quota's period and a ledger's window.
func TestRedisPeekWritesNothing(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	clock := limitertest.NewClock(limitertest.Start)
	r := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
	limits := peekLimits()
	for range 2 {
		if _, err := r.Decide(context.Background(), limits[:3]); err != nil {
			t.Fatal(err)
		}
	}
	before := redisState(t, client)
	peekLater(t, r, clock, limits)
	if after := redisState(t, client); after != before {
		t.Fatalf("Redis after the peeks:\n%s\nbefore:\n%s", after, before)
	}
}

// redisState is every key of client's Redis, its value and its absolute
// expiry.
func redisState(t *testing.T, client *redis.Client) string {
	t.Helper()
	ctx := context.Background()
	keys, err := client.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, k := range slices.Sorted(slices.Values(keys)) {
		dump, err := client.Dump(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		expiry, err := client.Do(ctx, "PEXPIRETIME", k).Int64()
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(k + " " + strconv.Quote(dump) + " " + time.UnixMilli(expiry).UTC().Format(time.RFC3339Nano) + "\n")
	}
	return b.String()
}

// A Peek writes nothing to the local store's file, and keeps in memory
// no counter it read from it.
func TestLocalPeekWritesNothing(t *testing.T) {
	dir := t.TempDir()
	clock := limitertest.NewClock(limitertest.Start)
	l, _ := openDisk(t, dir, limiter.LocalConfig{Clock: clock.Now, CounterIdle: time.Second,
		PruneEvery: time.Hour}) // no sweep of ended counters during the test
	limits := peekLimits()
	for range 2 {
		if _, err := l.Decide(context.Background(), limits[:3]); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(time.Minute)
	for range 2 { // the first saves the counter, the second drops it from memory
		if err := l.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.Counters(); n != 0 {
		t.Fatalf("%d counters in memory after they went idle, want 0", n)
	}
	before := readFile(t, filepath.Join(dir, "levy.db"))
	peekLater(t, l, clock, limits)
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := l.Counters(); n != 0 {
		t.Fatalf("%d counters in memory after the peeks, want 0", n)
	}
	if after := readFile(t, filepath.Join(dir, "levy.db")); !bytes.Equal(after, before) {
		t.Fatal("the peeks changed the store's file")
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
