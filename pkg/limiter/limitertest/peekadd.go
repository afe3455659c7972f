package limitertest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// store is what the Peek and Add cases need of a limiter: every store has
// them (limiter.Store).
func store(t *testing.T, l limiter.Limiter) limiter.Store {
	t.Helper()
	s, ok := l.(limiter.Store)
	if !ok {
		t.Fatalf("%T has no Peek and Add", l)
	}
	return s
}

func peek(t *testing.T, s limiter.Store, limits ...limiter.Limit) limiter.Reading {
	t.Helper()
	ofLayout(t, limits)
	r, err := s.Peek(context.Background(), limits)
	if err != nil {
		t.Fatalf("Peek: %v", err)
	}
	return r
}

func add(t *testing.T, s limiter.Store, limits ...limiter.Limit) {
	t.Helper()
	ofLayout(t, limits)
	if err := s.Add(context.Background(), limits); err != nil {
		t.Fatalf("Add: %v", err)
	}
}

func ledger(key string, cost int64) limiter.Limit {
	return limiter.Limit{Kind: limiter.Ledger, Name: "usage", Key: key, Cost: cost, WindowSize: time.Minute}
}

// A Peek answers for each limit what a check of it alone that takes
// nothing answers, whatever the limit's cost, and takes nothing itself.
func testPeekAnswersAsACheck(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	s := store(t, l)
	b := bucket(keyspace.Rate("peek", "test"), 10, time.Minute, 3)
	q := quota(keyspace.Quota("peek"), 5, plan.Month)
	soft := limiter.Limit{Kind: limiter.Quota, Name: "soft", Key: ruleQuota("peek", "soft", plan.Day), Cost: 1, Max: 1, Soft: true, Cap: 3, Unit: plan.Day}
	u := ledger(usage.LedgerKey("peek", LedgerTerms), 2)
	steps := []struct {
		name    string
		advance time.Duration
		decide  int // requests decided before the peek
	}{
		{"untouched", 0, 0},
		{"after two requests", 0, 2},
		{"the bucket empty, the soft quota over", time.Second, 2},
		{"a token later", 6 * time.Second, 0},
		{"the next day", 24 * time.Hour, 0},
		{"the next month", 31 * 24 * time.Hour, 1},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		for range st.decide {
			decide(t, l, b, q, soft, u)
		}
		got := peek(t, s, b, q, soft, u)
		again := peek(t, s, b, q, soft, u)
		for i, lim := range []limiter.Limit{b, q, soft, u} {
			want := decide(t, l, check(lim)).Statuses[0]
			if got.Statuses[i] != want || again.Statuses[i] != want {
				t.Fatalf("%s: %s peeked %+v, then %+v; a check says %+v", st.name, lim.Name, got.Statuses[i], again.Statuses[i], want)
			}
		}
		if !got.Now.Equal(clock.Now()) {
			t.Fatalf("%s: read at %v, the clock says %v", st.name, got.Now, clock.Now())
		}
	}
}

// A Peek in a later period sees an empty counter and leaves the stored
// one as it was: the period is not rolled over by a read.
func testPeekRollsNoPeriod(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	s := store(t, l)
	q := quota(keyspace.Quota("roll"), 5, plan.Month)
	for range 3 {
		decide(t, l, q)
	}
	clock.Set(time.Date(2026, time.April, 1, 0, 0, 1, 0, time.UTC))
	if r := peek(t, s, q); r.Statuses[0].Used != 0 || !r.Statuses[0].PeriodStart.Equal(time.Date(2026, time.April, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("April peeked %+v, want 0 used in April", r.Statuses[0])
	}
	clock.Set(Start.Add(time.Hour))
	if used := peek(t, s, q).Statuses[0].Used; used != 3 {
		t.Fatalf("back in March the counter says %d, want the 3 counted before the peek", used)
	}
}

// Add adds every limit's cost whatever its bounds: a hard quota past its
// maximum, a ledger window; shadow and quota-mode limits alike. A limit
// of cost 0 adds nothing. A bucket is no counter: Add refuses it, and
// adds nothing else of the call.
func testAddCountsPastEveryBound(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	s := store(t, l)
	q := quota(keyspace.Quota("add"), 2, plan.Month)
	u := ledger(usage.LedgerKey("add", LedgerTerms), 4)
	shadowQuota := shadow(quota(ruleQuota("add", "shadow", plan.Day), 1, plan.Day))
	add(t, s, withCost(q, 5), u, withCost(shadowQuota, 2))
	add(t, s, quotaMode(withCost(q, 1)), withCost(u, 0))
	err := s.Add(context.Background(), []limiter.Limit{withCost(q, 7), bucket(keyspace.Rate("add", "test"), 1, time.Hour, 0)})
	if !errors.Is(err, limiter.ErrBadLimit) {
		t.Fatalf("Add of a bucket: %v, want ErrBadLimit", err)
	}
	r := peek(t, s, q, u, shadowQuota)
	if got := r.Statuses[0]; got.Used != 6 || got.OK || got.Remaining != 0 {
		t.Fatalf("hard quota of 2 after adding 5 and 1: %+v, want 6 used and over", got)
	}
	if got := r.Statuses[1]; got.Used != 4 {
		t.Fatalf("ledger window after adding 4 and 0: %+v, want 4", got)
	}
	if got := r.Statuses[2]; got.Used != 2 {
		t.Fatalf("shadow quota after adding 2: %+v, want 2", got)
	}
	if d := decide(t, l, q); d.OK {
		t.Fatal("a request allowed past a quota that additions filled")
	}
}
