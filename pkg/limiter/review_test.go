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

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/keyspace"
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
		time.Sleep(s.delay) // the subject: a reply that arrives late
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

// lostTwice runs script calls on Redis and then reports the first n
// of them failed, as a read timeout after Redis ran them does.
type lostTwice struct{ n atomic.Int32 }

var errLostTwice = errors.New("i/o timeout (the reply was lost; Redis ran the call)")

func (h *lostTwice) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *lostTwice) lose(cmd redis.Cmder) {
	if (cmd.Name() == "evalsha" || cmd.Name() == "eval") && cmd.Err() == nil && h.n.Add(-1) >= 0 {
		cmd.SetErr(errLostTwice)
	}
}

func (h *lostTwice) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := next(ctx, cmd); err != nil {
			return err
		}
		h.lose(cmd)
		return cmd.Err()
	}
}

func (h *lostTwice) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			h.lose(c)
		}
		if err == nil {
			for _, c := range cmds {
				if c.Err() != nil {
					return c.Err()
				}
			}
		}
		return err
	}
}

// A settled request without a fingerprint (no x-request-id, or one of the
// requests the Receiver keeps without theirs past MaxPendingRequests) gets
// a one-off fingerprint in adjustCalls, so that a retry of the same call
// does not apply it twice. But RedisLedger.Adjust makes a new one-off
// fingerprint on every call: when the pipeline's call and its immediate
// retry both lose their replies (Redis ran them), the adjustment is handed
// back (PartialError.Failed), the Receiver keeps it for the next flush,
// and that flush applies the units again under a new fingerprint. The
// upstream's 3 reported units are billed (and moved on the quota) twice.
func TestReviewRetriedSettlementWithoutFingerprintAppliesOnce(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	lost := &lostTwice{}
	client.AddHook(lost)
	ctx := context.Background()
	clock := limitertest.NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
	lim := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
	led := limiter.NewRedisLedger(client, time.Minute)
	terms := limitertest.LedgerTerms
	key := usage.LedgerKey("acme", terms)
	d, err := lim.Decide(ctx, []limiter.Limit{{Kind: limiter.Ledger, Name: "ledger", Key: key, Cost: 1, WindowSize: time.Minute}})
	if err != nil || !d.OK {
		t.Fatal(d.OK, err)
	}
	window := d.Statuses[0].PeriodStart
	adj := usage.Adjustment{Key: key, Start: window, Consumer: "acme", Terms: terms, At: window, Units: 3, Reported: 3,
		Requests: []usage.Settled{{Units: 3}}}
	// Loads the adjust script, on a window of another consumer.
	led.Adjust(ctx, []usage.Adjustment{{Key: usage.LedgerKey("warmup", terms), Start: window, Consumer: "warmup", Terms: terms, At: window, Units: 1, Reported: 1}})
	lost.n.Store(2) // the pipeline's call and its retry
	err = led.Adjust(ctx, []usage.Adjustment{adj})
	var partial *usage.PartialError
	if !errors.As(err, &partial) || len(partial.Failed) != 1 {
		t.Fatalf("Adjust with both replies lost: %v, want the adjustment handed back", err)
	}
	// The Receiver's next flush.
	if err := led.Adjust(ctx, partial.Failed); err != nil {
		t.Fatal(err)
	}
	u, err := client.HGet(ctx, key+":"+strconv.FormatInt(window.Unix(), 10), "u").Int64()
	if err != nil {
		t.Fatal(err)
	}
	if u != 1+3 {
		t.Fatalf("window units %d, want 4 (1 admitted + 3 reported once)", u)
	}
}

// A debit is a cost already spent (Envoy's apply_on_stream_done, an LLM's
// token count): DESIGN.md says it "cannot be refused: it is recorded". Its
// store call ran, but its reply came after the store timeout: settle hands
// it to the refunder like a check (tookBy takes debits too), and the
// give-back takes it out again. With on_store_error: deny (the default:
// no Fallback counts it instead) and Envoy ignoring the stream-done call's
// answer, every debit whose reply is slower than store.timeout (50 ms) is
// lost: a Redis latency spike gives away tokens.
func TestReviewLateDebitStaysRecorded(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	clock := limitertest.NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
	slow := &lateOnce{inner: client, clock: clock, delay: 300 * time.Millisecond}
	reg := prometheus.NewRegistry()
	l := limitertest.NewRedis(t, limiter.RedisConfig{Client: slow, Clock: clock.Now, Timeout: 50 * time.Millisecond,
		ReplyWait: 3 * time.Second, Registerer: reg, Log: zaptest.NewLogger(t)})
	ctx := context.Background()
	tokens := limiter.Limit{Kind: limiter.Quota, Name: "tokens", Key: keyspace.Rule("tokens", "", []byte(keyspace.RuleQuota+"day")), Max: 1000, Unit: "day", Debit: true}
	if _, err := l.Decide(ctx, []limiter.Limit{tokens}); err != nil { // loads the script
		t.Fatal(err)
	}
	spent := tokens
	spent.Cost = 700
	slow.armed.Store(true)
	if _, err := l.Decide(ctx, []limiter.Limit{spent}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("late debit: %v, want a timeout", err)
	}
	// The late reply is accounted for once its outcome is counted: at
	// once when nothing is given back, after the give-back when one is.
	await.Until(t, 10*time.Second, func() bool {
		var n float64
		for _, v := range lateCounts(t, reg) {
			n += v
		}
		return n > 0
	}, "the late reply to be accounted for")
	t.Logf("late decisions: %v", lateCounts(t, reg))
	if used := limitertest.Usage(t, l, tokens); used != 700 {
		t.Fatalf("%d of the 700 tokens spent are recorded; a debit cannot be refused", used)
	}
}
