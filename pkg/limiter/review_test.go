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

// A consumer moves from a plan with a daily quota to one with a monthly
// quota (the quota counter, usage.QuotaKey, is the consumer's, not the
// plan's). A request admitted under the old plan, in the day's period,
// is settled a moment later with units its upstream reported. adjust.lua
// takes the counter's period (the month, which started before the day)
// for an older one ("q[1] < start") and overwrites it with the day's
// period and the reported units: the month's count is gone, and the next
// decision starts the month from zero again. The local store keeps the
// periods apart and leaves the month's count alone.
func TestReviewLateSettlementAfterAPlanChangeKeepsTheNewPeriodsCount(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	stores := map[string]func(t *testing.T, clock *limitertest.Clock) (limiter.Limiter, usage.Ledger){
		"local": func(t *testing.T, clock *limitertest.Clock) (limiter.Limiter, usage.Ledger) {
			l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return l, l
		},
		"redis": func(t *testing.T, clock *limitertest.Clock) (limiter.Limiter, usage.Ledger) {
			client.FlushAll(context.Background())
			return limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second}),
				limiter.NewRedisLedger(client, time.Minute)
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clock := limitertest.NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
			lim, led := open(t, clock)
			terms := limitertest.LedgerTerms
			ledger := limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey("acme", terms), Cost: 1, WindowSize: time.Minute}
			daily := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: usage.QuotaKey("acme"), Cost: 1, Max: 100, Unit: "day"}
			monthly := daily
			monthly.Unit = "month"
			d, err := lim.Decide(ctx, []limiter.Limit{daily, ledger})
			if err != nil || !d.OK {
				t.Fatal(d.OK, err)
			}
			dayStart, window := d.Statuses[0].PeriodStart, d.Statuses[1].PeriodStart
			// The plan changes: five requests on the monthly quota.
			for i := 0; i < 5; i++ {
				if d, err := lim.Decide(ctx, []limiter.Limit{monthly, ledger}); err != nil || !d.OK {
					t.Fatal(d.OK, err)
				}
			}
			// The first request's access log: its upstream reported 3
			// units more than it cost.
			err = led.Adjust(ctx, []usage.Adjustment{{Key: ledger.Key, Start: window, Quota: daily.Key, QuotaStart: dayStart,
				Consumer: "acme", Terms: terms, At: window, Units: 3, Reported: 3}})
			if err != nil {
				t.Fatal(err)
			}
			if used := limitertest.Usage(t, lim, monthly); used != 5 {
				t.Fatalf("the month's count is %d after a settlement of the day's period; want 5", used)
			}
		})
	}
}
