// Package limitertest is the behaviour suite every limiter.Limiter must
// pass: the local store and Redis run the same tables, so they cannot drift.
package limitertest

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
)

// Clock is a settable clock for step tables.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts a clock at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// Factory returns a fresh, empty limiter driven by clock.
type Factory func(t *testing.T, clock *Clock) limiter.Limiter

// Start is where suite clocks start: mid-month, mid-day.
var Start = time.Date(2026, time.March, 14, 15, 9, 26, 0, time.UTC)

// Run runs the whole suite.
func Run(t *testing.T, newLimiter Factory) {
	t.Run("BucketSteps", func(t *testing.T) { testBucketSteps(t, newLimiter) })
	t.Run("DeniedRequestConsumesNothing", func(t *testing.T) { testAllOrNothing(t, newLimiter) })
	t.Run("SharedKeyCountsTwice", func(t *testing.T) { testSharedKey(t, newLimiter) })
	t.Run("HardQuotaResetsAtCalendarMonth", func(t *testing.T) { testHardQuota(t, newLimiter) })
	t.Run("SoftQuotaCountsOverageUpToCap", func(t *testing.T) { testSoftQuota(t, newLimiter) })
	t.Run("ZeroCostChecksWithoutConsuming", func(t *testing.T) { testZeroCost(t, newLimiter) })
	t.Run("ParallelNeverExceedsBucket", func(t *testing.T) { testParallel(t, newLimiter) })
	t.Run("LoweredLimitDoesNotDenyForTheOldDepth", func(t *testing.T) { testLoweredLimit(t, newLimiter) })
	t.Run("ShadowLimitReportsButNeverDenies", func(t *testing.T) { testShadow(t, newLimiter) })
	t.Run("CostBeyondCapacityNeverPasses", func(t *testing.T) { testHugeCost(t, newLimiter) })
	t.Run("ZeroCostCheckIsOverWhenNothingIsLeft", func(t *testing.T) { testZeroCostOver(t, newLimiter) })
	t.Run("DebitIsRecordedPastTheLimit", func(t *testing.T) { testDebit(t, newLimiter) })
	t.Run("QuotaModeDeniesOnlyWhenTheWholeGroupIsOver", func(t *testing.T) { testQuotaMode(t, newLimiter) })
	t.Run("DebtOutlivesALoweredLimit", func(t *testing.T) { testDebtOutlivesALoweredLimit(t, newLimiter) })
	t.Run("PeekAnswersAsACheckAndTakesNothing", func(t *testing.T) { testPeekAnswersAsACheck(t, newLimiter) })
	t.Run("PeekRollsNoPeriod", func(t *testing.T) { testPeekRollsNoPeriod(t, newLimiter) })
	t.Run("AddCountsPastEveryBound", func(t *testing.T) { testAddCountsPastEveryBound(t, newLimiter) })
}

// The suite's keys are levy's own, built by keyspace as the servers build
// them, never free-form strings: the local store renames every key of the
// unversioned layout ("{c:ID}:units", "{rl:MATCH}:q:day") to its levy:1:
// name each time it opens its file, so an old-shaped test key would move
// under any case that reopened one. ruleQuota gives a consumer a second
// quota in its slot, named as the RLS names a rule's quota.
func ruleQuota(consumer, rule string, unit plan.Unit) string {
	return keyspace.Rule(rule, consumer, []byte(keyspace.RuleQuota+string(unit)))
}

// ofLayout fails t for a limit whose key is not of levy's current layout.
func ofLayout(t *testing.T, limits []limiter.Limit) {
	t.Helper()
	for _, l := range limits {
		if !strings.HasPrefix(l.Key, keyspace.State) {
			t.Fatalf("limit %s has key %q, not of levy's layout %q: build it with keyspace", l.Name, l.Key, keyspace.State)
		}
	}
}

func bucket(key string, requests int64, per time.Duration, burst int64) limiter.Limit {
	return limiter.Limit{Kind: limiter.Bucket, Name: "rate", Key: key, Cost: 1, Requests: requests, Per: per, Burst: burst}
}

func quota(key string, max int64, unit plan.Unit) limiter.Limit {
	return limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: key, Cost: 1, Max: max, Unit: unit}
}

func decide(t *testing.T, l limiter.Limiter, limits ...limiter.Limit) limiter.Decision {
	t.Helper()
	ofLayout(t, limits)
	d, err := l.Decide(context.Background(), limits)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	return d
}

func testBucketSteps(t *testing.T, newLimiter Factory) {
	// 10 per minute, burst 3: one token every 6s, at most 3 banked.
	steps := []struct {
		name      string
		advance   time.Duration
		wantOK    bool
		remaining int64
		retry     time.Duration // when denied
	}{
		{"full bucket", 0, true, 2, 0},
		{"second", 0, true, 1, 0},
		{"third empties it", 0, true, 0, 0},
		{"fourth at once is denied", 0, false, 0, 6 * time.Second},
		{"still denied a bit later", 5 * time.Second, false, 0, time.Second},
		{"one token after 6s", time.Second, true, 0, 0},
		{"and only one", 0, false, 0, 6 * time.Second},
		{"idle refills to burst, not beyond", time.Hour, true, 2, 0},
		{"second after idle", 0, true, 1, 0},
		{"third after idle", 0, true, 0, 0},
		{"fourth after idle denied", 0, false, 0, 6 * time.Second},
	}
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	lim := bucket(keyspace.Rate("steps", "test"), 10, time.Minute, 3)
	for _, st := range steps {
		clock.Advance(st.advance)
		d := decide(t, l, lim)
		got := d.Statuses[0]
		if d.OK != st.wantOK || got.Remaining != st.remaining {
			t.Fatalf("%s: ok=%v remaining=%d, want ok=%v remaining=%d", st.name, d.OK, got.Remaining, st.wantOK, st.remaining)
		}
		if !st.wantOK && got.RetryAfter != st.retry {
			t.Fatalf("%s: retry after %s, want %s", st.name, got.RetryAfter, st.retry)
		}
		if got.Limit != 10 {
			t.Fatalf("%s: limit %d, want 10", st.name, got.Limit)
		}
	}
}

func testAllOrNothing(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	wide := bucket(keyspace.Rate("aon", "wide"), 100, time.Second, 100)
	narrow := bucket(keyspace.Rate("aon", "narrow"), 1, time.Hour, 1)
	q := quota(keyspace.Quota("aon"), 50, plan.Month)
	if d := decide(t, l, wide, narrow, q); !d.OK {
		t.Fatal("first request denied")
	}
	for i := 0; i < 20; i++ {
		d := decide(t, l, wide, narrow, q)
		if d.OK || d.Denied != 1 {
			t.Fatalf("request %d: ok=%v denied=%d, want denied by the narrow bucket", i, d.OK, d.Denied)
		}
	}
	// A denied request reports what the others still have, untouched.
	if d := decide(t, l, wide, narrow, q); d.Statuses[0].Remaining != 99 || d.Statuses[2].Remaining != 49 || !d.Statuses[0].OK {
		t.Fatalf("denied request reports wide remaining %d (want 99), quota remaining %d (want 49)", d.Statuses[0].Remaining, d.Statuses[2].Remaining)
	}
	// The 21 denied requests took nothing from the wide bucket or the quota.
	d := decide(t, l, wide, q)
	if d.Statuses[0].Remaining != 98 || d.Statuses[1].Used != 2 {
		t.Fatalf("after denials: wide remaining %d (want 98), quota used %d (want 2)", d.Statuses[0].Remaining, d.Statuses[1].Used)
	}
}

func testSharedKey(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	b := bucket(keyspace.Rate("shared", "test"), 3, time.Hour, 3)
	// One request naming the same bucket twice takes two tokens...
	if d := decide(t, l, b, b); !d.OK || d.Statuses[1].Remaining != 1 {
		t.Fatalf("double: ok=%v remaining=%d, want ok remaining 1", d.OK, d.Statuses[1].Remaining)
	}
	// ...and is denied whole when only one is left.
	if d := decide(t, l, b, b); d.OK || d.Denied != 1 {
		t.Fatalf("double with one token: ok=%v denied=%d", d.OK, d.Denied)
	}
	if d := decide(t, l, b); !d.OK || d.Statuses[0].Remaining != 0 {
		t.Fatalf("single after denied double: ok=%v remaining=%d", d.OK, d.Statuses[0].Remaining)
	}
}

func testHardQuota(t *testing.T, newLimiter Factory) {
	clock := NewClock(time.Date(2028, time.February, 29, 23, 0, 0, 0, time.UTC))
	l := newLimiter(t, clock)
	q := quota(keyspace.Quota("hard"), 3, plan.Month)
	for i := int64(1); i <= 3; i++ {
		d := decide(t, l, q)
		if !d.OK || d.Statuses[0].Used != i || d.Statuses[0].Remaining != 3-i {
			t.Fatalf("request %d: ok=%v used=%d remaining=%d", i, d.OK, d.Statuses[0].Used, d.Statuses[0].Remaining)
		}
	}
	d := decide(t, l, q)
	if d.OK {
		t.Fatal("fourth request allowed past a hard quota of 3")
	}
	if want := time.Hour; d.Statuses[0].RetryAfter != want || d.Statuses[0].Reset != want {
		t.Fatalf("retry after %s reset %s, want %s (March 1st)", d.Statuses[0].RetryAfter, d.Statuses[0].Reset, want)
	}
	clock.Advance(time.Hour - time.Nanosecond)
	if d := decide(t, l, q); d.OK {
		t.Fatal("allowed one nanosecond before the month ends")
	}
	clock.Advance(time.Nanosecond)
	if d := decide(t, l, q); !d.OK || d.Statuses[0].Used != 1 {
		t.Fatalf("March 1st: ok=%v used=%d, want a fresh quota", d.OK, d.Statuses[0].Used)
	}
	// An expensive request that would cross the quota is denied whole.
	big := q
	big.Cost = 3
	if d := decide(t, l, big); d.OK || d.Statuses[0].Remaining != 2 {
		t.Fatalf("cost 3 with 2 left: ok=%v remaining=%d", d.OK, d.Statuses[0].Remaining)
	}
}

func testSoftQuota(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	q := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: keyspace.Quota("soft"), Cost: 4, Max: 10, Unit: plan.Month, Soft: true, Cap: 20}
	wantOverage := []int64{0, 0, 2, 6, 10}
	for i, want := range wantOverage {
		d := decide(t, l, q)
		if !d.OK || d.Statuses[0].Overage != want || d.Statuses[0].Used != int64(4*(i+1)) {
			t.Fatalf("request %d: ok=%v used=%d overage=%d, want overage %d", i+1, d.OK, d.Statuses[0].Used, d.Statuses[0].Overage, want)
		}
	}
	if d := decide(t, l, q); d.OK {
		t.Fatalf("allowed past the cap: used %d", d.Statuses[0].Used)
	}
	counter := q
	counter.Key, counter.Max, counter.Cap = keyspace.Quota("counter"), 0, 0
	for i := 0; i < 5; i++ {
		if d := decide(t, l, counter); !d.OK || d.Statuses[0].Remaining != -1 {
			t.Fatalf("an uncapped counter denied or reported remaining %d", d.Statuses[0].Remaining)
		}
	}
	if d := decide(t, l, counter); d.Statuses[0].Used != 24 {
		t.Fatalf("counter used %d, want 24", d.Statuses[0].Used)
	}
}

func testZeroCost(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	b := bucket(keyspace.Rate("zero", "test"), 2, time.Hour, 2)
	peek := b
	peek.Cost = 0
	for i := 0; i < 5; i++ {
		if d := decide(t, l, peek); !d.OK || d.Statuses[0].Remaining != 2 {
			t.Fatalf("peek %d: ok=%v remaining=%d", i, d.OK, d.Statuses[0].Remaining)
		}
	}
	decide(t, l, b)
	decide(t, l, b)
	if d := decide(t, l, b); d.OK {
		t.Fatal("third request allowed on a bucket of 2")
	}
}

func testParallel(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start) // frozen: no refill during the test
	l := newLimiter(t, clock)
	b := bucket(keyspace.Rate("par", "test"), 100, time.Hour, 100)
	q := quota(keyspace.Quota("par"), 1000, plan.Month)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := l.Decide(context.Background(), []limiter.Limit{b, q})
			if err != nil {
				errs <- err
				return
			}
			if d.OK {
				allowed.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Decide: %v", err)
	}
	if got := allowed.Load(); got != 100 {
		t.Fatalf("%d of 1000 parallel requests allowed on a bucket of 100", got)
	}
	if d := decide(t, l, quota(keyspace.Quota("par"), 1000, plan.Month)); d.Statuses[0].Used != 101 {
		t.Fatalf("quota used %d after 100 allowed (+1 now), want 101: denied requests were counted", d.Statuses[0].Used)
	}
}

func testLoweredLimit(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	big := bucket(keyspace.Rate("lower", "test"), 100, time.Second, 100)
	for i := 0; i < 100; i++ {
		decide(t, l, big)
	}
	// The operator lowers the limit to 10/s: the drained bucket counts as
	// an empty small one, so the next token comes after 100ms, not after
	// the old bucket's full second.
	small := bucket(keyspace.Rate("lower", "test"), 10, time.Second, 10)
	if d := decide(t, l, small); d.OK || d.Statuses[0].RetryAfter != 100*time.Millisecond {
		t.Fatalf("lowered limit: ok=%v retry after %s, want denied for 100ms", d.OK, d.Statuses[0].RetryAfter)
	}
	clock.Advance(100 * time.Millisecond)
	if d := decide(t, l, small); !d.OK {
		t.Fatal("denied after the refill interval of the lowered limit")
	}
}

func testShadow(t *testing.T, newLimiter Factory) {
	clock := NewClock(Start)
	l := newLimiter(t, clock)
	shadow := bucket(keyspace.Rate("shadow", "narrow"), 1, time.Hour, 1)
	shadow.Shadow = true
	wide := bucket(keyspace.Rate("shadow", "wide"), 100, time.Hour, 100)
	for i := 0; i < 5; i++ {
		d := decide(t, l, shadow, wide)
		if !d.OK || d.Denied != -1 {
			t.Fatalf("request %d denied by a shadow limit", i+1)
		}
		if over := i > 0; d.Statuses[0].OK == over {
			t.Fatalf("request %d: shadow status ok=%v, want over=%v", i+1, d.Statuses[0].OK, over)
		}
		if d.Statuses[1].Remaining != int64(99-i) {
			t.Fatalf("request %d: wide remaining %d, want %d", i+1, d.Statuses[1].Remaining, 99-i)
		}
	}
	if hs := (&limiter.Decision{OK: true, Denied: -1, Statuses: []limiter.Status{{Remaining: 0}}}).Headers([]limiter.Limit{shadow}, limiter.XRateLimit|limiter.IETF); hs != nil {
		t.Fatalf("headers for a shadow limit: %v", hs)
	}
}

func testHugeCost(t *testing.T, newLimiter Factory) {
	l := newLimiter(t, NewClock(Start))
	b := bucket(keyspace.Rate("huge", "test"), 1, time.Minute, 1)
	for _, cost := range []int64{2, 4294967295, limiter.MaxCost} {
		b.Cost = cost
		if d := decide(t, l, b); d.OK {
			t.Fatalf("cost %d allowed on a bucket of 1", cost)
		}
	}
	b.Cost = 1
	if d := decide(t, l, b); !d.OK {
		t.Fatal("the refused costs consumed the bucket")
	}
}
