package limiter_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
)

// TestStoresAgreeOnRandomRequests gives the local store, Redis and Redis
// Cluster the same random requests on the same clock, and wants the same
// decisions from all three, to the microsecond: every kind of limit
// (buckets with and without burst, hard, soft and capped quotas of every
// unit, anchored or not, ledgers), costs from zero to MaxCost, debits,
// quota-mode groups, shadow limits, and requests that name one state
// twice or span hash slots. LEVY_AGREE_SEED replays a seed (printed on a
// failure); LEVY_AGREE_STEPS runs more steps than the default.
func TestStoresAgreeOnRandomRequests(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LEVY_AGREE_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("LEVY_AGREE_SEED: %v", err)
		}
		seed = v
	}
	steps := 3000
	if s := os.Getenv("LEVY_AGREE_STEPS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("LEVY_AGREE_STEPS: %v", err)
		}
		steps = v
	}
	stores := limitertest.Stores(t)
	clock := limitertest.NewClock(time.Date(2027, time.January, 29, 22, 59, 0, 0, time.UTC))
	limiters := make([]limiter.Limiter, len(stores))
	for i, s := range stores {
		limiters[i] = s.New(t, clock)
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	states := randomStates(rng)
	var history []string // the last few steps, for the failure message
	var seen coverage
	ctx := context.Background()
	for step := range steps {
		clock.Advance(randomAdvance(rng))
		req := randomRequest(rng, states)
		var got []string
		for i, l := range limiters {
			d, err := l.Decide(ctx, req)
			if err != nil {
				t.Fatalf("seed %d, step %d: %s: %v", seed, step, stores[i].Name, err)
			}
			got = append(got, describe(d))
			if i == 0 {
				seen.add(req, d)
			}
		}
		history = append(history, fmt.Sprintf("step %d at %s: %s\n  -> %s", step, clock.Now().Format(time.RFC3339Nano), describeRequest(req), got[0]))
		if len(history) > 8 {
			history = history[1:]
		}
		for i := 1; i < len(got); i++ {
			if got[i] != got[0] {
				t.Fatalf("seed %d (LEVY_AGREE_SEED=%d to replay), step %d: the stores disagree\n%s: %s\n%s: %s\nlast steps:\n%s",
					seed, seed, step, stores[0].Name, got[0], stores[i].Name, got[i], strings.Join(history, "\n"))
			}
		}
	}
	t.Logf("seed %d, %d steps: %+v", seed, steps, seen)
	if steps >= 1000 && !seen.all() {
		t.Fatalf("seed %d: the requests missed a case the test is for: %+v", seed, seen)
	}
}

// coverage counts the cases the random requests are meant to reach.
type coverage struct {
	Allowed, Denied, SpanSlots, DebitOver, DebitTakenOnDenial, QuotaModeOverAllowed, QuotaModeDenied, ZeroCostOver int
}

func (c *coverage) add(req []limiter.Limit, d limiter.Decision) {
	if d.OK {
		c.Allowed++
	} else {
		c.Denied++
	}
	group := false
	for i := range req {
		l, st := &req[i], &d.Statuses[i]
		if limiter.Slot(l.Key) != limiter.Slot(req[0].Key) {
			c.SpanSlots++
		}
		switch {
		case l.Debit && l.Cost > 0 && !st.OK:
			c.DebitOver++
		case l.Debit && l.Cost > 0 && !d.OK:
			c.DebitTakenOnDenial++
		case l.QuotaMode && !l.Shadow && !st.OK && d.OK:
			c.QuotaModeOverAllowed++
		case l.Cost == 0 && !st.OK:
			c.ZeroCostOver++
		}
		group = group || l.QuotaMode && !l.Shadow && l.Kind != limiter.Ledger
	}
	if group && !d.OK && req[d.Denied].QuotaMode {
		c.QuotaModeDenied++
	}
}

func (c *coverage) all() bool {
	return c.Allowed > 0 && c.Denied > 0 && c.SpanSlots > 0 && c.DebitOver > 0 && c.DebitTakenOnDenial > 0 &&
		c.QuotaModeOverAllowed > 0 && c.QuotaModeDenied > 0 && c.ZeroCostOver > 0
}

// randomStates is the set of states the requests name: each key is one
// bucket, quota or ledger with fixed parameters, as a configuration
// would have it, over four hash tags (four slots of the cluster).
func randomStates(rng *rand.Rand) []limiter.Limit {
	tags := []string{"{c:a}", "{c:b}", "{c:c}", "{global}"}
	pick := func(vs ...int64) int64 { return vs[rng.IntN(len(vs))] }
	var out []limiter.Limit
	for i := range 24 {
		key := fmt.Sprintf("%s:%d", tags[rng.IntN(len(tags))], i)
		switch i % 3 {
		case 0:
			out = append(out, limiter.Limit{Kind: limiter.Bucket, Name: "rate", Key: key,
				Requests: pick(1, 2, 3, 7, 10, 60, 1000), Per: time.Duration(pick(1, 7, 60, 3600)) * time.Second,
				Burst: pick(0, 0, 1, 3, 20)})
		case 1:
			q := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: key,
				Unit: []plan.Unit{plan.Hour, plan.Day, plan.Week, plan.Month, plan.Year}[rng.IntN(5)], Max: pick(0, 2, 5, 20, 100, 1000)}
			if rng.IntN(2) == 0 {
				// a billing cycle's anchor, in another month and time of day
				q.Anchor = time.Date(2026, time.Month(1+rng.IntN(12)), 1+rng.IntN(31), rng.IntN(24), rng.IntN(60), rng.IntN(60), 0, time.UTC)
			}
			switch rng.IntN(3) {
			case 1:
				q.Soft = true
			case 2:
				q.Soft, q.Cap = true, q.Max+pick(1, 5, 20)
			}
			out = append(out, q)
		default:
			if rng.IntN(2) == 0 {
				out = append(out, limiter.Limit{Kind: limiter.Ledger, Name: "usage", Key: key + ":ledger",
					WindowSize: time.Duration(pick(60, 3600)) * time.Second})
			} else {
				out = append(out, limiter.Limit{Kind: limiter.Bucket, Name: "ip", Key: key,
					Requests: pick(5, 100), Per: time.Duration(pick(1, 60)) * time.Second, Burst: pick(0, 50)})
			}
		}
	}
	return out
}

// randomAdvance is how far the clock moves before a step: mostly within a
// bucket's refill (to the nanosecond, which the stores count in
// microseconds), sometimes across quota periods.
func randomAdvance(rng *rand.Rand) time.Duration {
	switch n := rng.IntN(100); {
	case n < 30:
		return 0
	case n < 70:
		return time.Duration(rng.Int64N(int64(2 * time.Second)))
	case n < 90:
		return time.Duration(rng.Int64N(int64(2 * time.Minute)))
	case n < 98:
		return time.Duration(rng.Int64N(int64(3 * time.Hour)))
	default:
		return time.Duration(rng.Int64N(int64(40 * 24 * time.Hour)))
	}
}

// randomRequest is one to four of states, each with a cost and flags.
func randomRequest(rng *rand.Rand, states []limiter.Limit) []limiter.Limit {
	req := make([]limiter.Limit, 1+rng.IntN(4))
	for i := range req {
		l := states[rng.IntN(len(states))]
		if i > 0 && rng.IntN(8) == 0 {
			l = req[rng.IntN(i)] // the same state twice
		}
		switch n := rng.IntN(100); {
		case n < 20:
			l.Cost = 0
		case n < 75:
			l.Cost = 1
		case n < 93:
			l.Cost = 2 + rng.Int64N(6)
		case n < 98:
			l.Cost = 10 + rng.Int64N(1000)
		default:
			l.Cost = limiter.MaxCost
		}
		l.Debit = rng.IntN(7) == 0
		l.Shadow = rng.IntN(10) == 0
		l.QuotaMode = rng.IntN(4) == 0
		req[i] = l
	}
	return req
}

// describe is everything a decision says, times as unix nanoseconds.
func describe(d limiter.Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ok=%v denied=%d now=%d", d.OK, d.Denied, d.Now.UnixNano())
	for _, s := range d.Statuses {
		fmt.Fprintf(&b, " [ok=%v limit=%d rem=%d reset=%d retry=%d used=%d over=%d start=%d]",
			s.OK, s.Limit, s.Remaining, s.Reset, s.RetryAfter, s.Used, s.Overage, periodStart(s.PeriodStart))
	}
	return b.String()
}

func periodStart(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func describeRequest(req []limiter.Limit) string {
	var parts []string
	for _, l := range req {
		s := fmt.Sprintf("%s cost=%d", l.Key, l.Cost)
		switch l.Kind {
		case limiter.Bucket:
			s += fmt.Sprintf(" bucket %d/%s burst %d", l.Requests, l.Per, l.Burst)
		case limiter.Quota:
			s += fmt.Sprintf(" quota max=%d soft=%v cap=%d per %s anchor %s", l.Max, l.Soft, l.Cap, l.Unit, l.Anchor.Format(time.RFC3339))
		default:
			s += fmt.Sprintf(" ledger %s", l.WindowSize)
		}
		for _, f := range []struct {
			on   bool
			name string
		}{{l.Debit, "debit"}, {l.Shadow, "shadow"}, {l.QuotaMode, "quota-mode"}} {
			if f.on {
				s += " " + f.name
			}
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}
