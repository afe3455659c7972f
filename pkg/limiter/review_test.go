package limiter_test

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/usage"
)

// lateOnce runs one armed script call on Redis and then holds its reply
// back (delay), moving the clock on by advance meanwhile: a decision
// whose reply comes after the store timeout, its script having run at
// the clock's earlier time.
type lateOnce struct {
	inner   limiter.Scripter
	armed   atomic.Bool
	clock   *limitertest.Clock
	advance time.Duration
	delay   time.Duration
}

func (s *lateOnce) Process(ctx context.Context, cmd redis.Cmder) error {
	err := s.inner.Process(ctx, cmd)
	if s.armed.CompareAndSwap(true, false) {
		s.clock.Advance(s.advance)
		time.Sleep(s.delay)
	}
	return err
}

// A late decision is given back in the ledger window the give-back runs
// in, not the one the decision counted in: decide.lua's give_back works
// the window (and a quota's period) out from its own clock. A request
// admitted at 10:00:59.9 whose reply came after the store timeout (the
// caller saw a 503, or the fallback's answer) and whose give-back runs at
// 10:01:00.1 stays counted, and billed, in the 10:00 window: issue item
// 13's "a request the caller saw denied is never charged". (When the
// 10:01 window has units, the give-back takes them from it instead: a
// window, at a month's edge a billing period, that did not hold them.)
func TestReviewLateGiveBackUsesTheDecisionsWindow(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	clock := limitertest.NewClock(time.Date(2026, 3, 31, 23, 59, 59, 900_000_000, time.UTC))
	slow := &lateOnce{inner: client, clock: clock, advance: 200 * time.Millisecond, delay: 300 * time.Millisecond}
	reg := prometheus.NewRegistry()
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: slow, Clock: clock.Now, Timeout: 50 * time.Millisecond,
		ReplyWait: 3 * time.Second, Registerer: reg, Log: zaptest.NewLogger(t)})
	ctx := context.Background()
	key := usage.LedgerKey("acme", limitertest.LedgerTerms)
	ledger := limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: key, Cost: 1, WindowSize: time.Minute}
	// Loads the script; the window 23:59 has 1 unit.
	if d, err := l.Decide(ctx, []limiter.Limit{ledger}); err != nil || !d.OK {
		t.Fatal(d.OK, err)
	}
	slow.armed.Store(true)
	if _, err := l.Decide(ctx, []limiter.Limit{ledger}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("late decision: %v, want a timeout", err)
	}
	waitUntil(t, 5*time.Second, func() bool { return lateCounts(t, reg)["refunded"] == 1 })
	start := time.Date(2026, 3, 31, 23, 59, 0, 0, time.UTC).Unix()
	u, err := client.HGet(ctx, key+":"+strconv.FormatInt(start, 10), "u").Int64()
	if err != nil {
		t.Fatal(err)
	}
	if u != 1 {
		t.Fatalf("the March 23:59 window has %d units; want 1: the late decision's unit was given back (metric: refunded) but stays billed", u)
	}
}
