package limitertest

import (
	"fmt"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
)

// The step tables below start on the hour, so that an hourly quota's
// retry after is the hour's rest. Their keys are two consumers', a and b,
// whose hash tags {c:a} and {c:b} lie in two slots of a cluster: requests
// that mix them are decided slot by slot there.
var hourStart = time.Date(2026, time.March, 14, 15, 0, 0, 0, time.UTC)

// step is one request of a step table: the clock moves by advance, give
// is decided, and the decision must be wantDenied (-1: allowed) with
// want, one per limit.
type step struct {
	name       string
	advance    time.Duration
	give       []limiter.Limit
	wantDenied int
	want       []want
}

// want is what a step checks of a limit's status.
type want struct {
	ok         bool
	remaining  int64
	used       int64
	retryAfter time.Duration
}

func runSteps(t *testing.T, newLimiter Factory, steps []step) {
	t.Helper()
	if limiter.Slot(keyspace.Quota("a")) == limiter.Slot(keyspace.Quota("b")) {
		t.Fatal("the tables' hash tags share a slot")
	}
	clock := NewClock(hourStart)
	l := newLimiter(t, clock)
	for _, tt := range steps {
		clock.Advance(tt.advance)
		d := decide(t, l, tt.give...)
		var got []want
		for _, st := range d.Statuses {
			got = append(got, want{st.OK, st.Remaining, st.Used, st.RetryAfter})
		}
		if d.OK != (tt.wantDenied < 0) || d.Denied != tt.wantDenied || fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Fatalf("%s: ok=%v denied=%d statuses %+v\nwant ok=%v denied=%d statuses %+v",
				tt.name, d.OK, d.Denied, got, tt.wantDenied < 0, tt.wantDenied, tt.want)
		}
	}
}

func withCost(l limiter.Limit, cost int64) limiter.Limit {
	l.Cost = cost
	return l
}

// check is l as a check that takes nothing.
func check(l limiter.Limit) limiter.Limit { return withCost(l, 0) }

// debit is l as a debit of cost.
func debit(l limiter.Limit, cost int64) limiter.Limit {
	l.Cost, l.Debit = cost, true
	return l
}

func quotaMode(l limiter.Limit) limiter.Limit {
	l.QuotaMode = true
	return l
}

func shadow(l limiter.Limit) limiter.Limit {
	l.Shadow = true
	return l
}

func testZeroCostOver(t *testing.T, newLimiter Factory) {
	rate := bucket(keyspace.Rate("a", "rate"), 2, time.Minute, 2) // a token every 30s
	hard := quota(keyspace.Quota("b"), 2, plan.Hour)
	spend := limiter.Limit{Kind: limiter.Quota, Name: "spend", Key: keyspace.Quota("a"), Cost: 1, Max: 1, Soft: true, Cap: 2, Unit: plan.Hour}
	units := limiter.Limit{Kind: limiter.Quota, Name: "units", Key: ruleQuota("b", "units", plan.Hour), Cost: 1, Soft: true, Unit: plan.Hour}
	rest := time.Hour - 30*time.Second // of the hour, after the step that waits for a token
	runSteps(t, newLimiter, []step{
		{"a full bucket's check passes", 0, []limiter.Limit{check(rate)}, -1, []want{{true, 2, 0, 0}}},
		{"both tokens taken", 0, []limiter.Limit{withCost(rate, 2)}, -1, []want{{true, 0, 0, 0}}},
		{"an empty bucket's check is over until a token is back", 0, []limiter.Limit{check(rate)}, 0, []want{{false, 0, 0, 30 * time.Second}}},
		{"a token back: the check passes", 30 * time.Second, []limiter.Limit{check(rate)}, -1, []want{{true, 1, 0, 0}}},
		{"a hard quota used up", 0, []limiter.Limit{withCost(hard, 2)}, -1, []want{{true, 0, 2, 0}}},
		{"its check is over until the period ends", 0, []limiter.Limit{check(hard)}, 0, []want{{false, 0, 2, rest}}},
		{"a capped soft quota at its cap", 0, []limiter.Limit{withCost(spend, 2)}, -1, []want{{true, 0, 2, 0}}},
		{"its check is over", 0, []limiter.Limit{check(spend)}, 0, []want{{false, 0, 2, rest}}},
		{"an uncapped soft quota counts", 0, []limiter.Limit{withCost(units, 5)}, -1, []want{{true, -1, 5, 0}}},
		{"and its check never is over", 0, []limiter.Limit{check(units)}, -1, []want{{true, -1, 5, 0}}},
		{"a check that is over denies the request, which takes nothing", 0, []limiter.Limit{rate, check(hard)}, 1,
			[]want{{true, 1, 0, 0}, {false, 0, 2, rest}}},
		{"the bucket's token is still there", 0, []limiter.Limit{check(rate)}, -1, []want{{true, 1, 0, 0}}},
	})
}

func testDebit(t *testing.T, newLimiter Factory) {
	rate := bucket(keyspace.Rate("a", "rate"), 10, time.Minute, 10) // a token every 6s, 60s to fill
	hard := quota(keyspace.Quota("b"), 5, plan.Hour)
	small := bucket(keyspace.Rate("a", "small"), 1, time.Second, 2)
	wide := bucket(keyspace.Rate("a", "wide"), 100, time.Hour, 100)
	watch := shadow(bucket(keyspace.Rate("b", "watch"), 1, time.Hour, 1))
	runSteps(t, newLimiter, []step{
		{"a debit that fits is an ordinary take", 0, []limiter.Limit{debit(rate, 3)}, -1, []want{{true, 7, 0, 0}}},
		// 18s taken and 72s more: 90s ahead of now, 30s of debt; the next
		// token comes when the bucket is 54s ahead.
		{"a debit past the limit is over, and recorded", 0, []limiter.Limit{debit(rate, 12)}, 0, []want{{false, 0, 0, 36 * time.Second}}},
		{"checks are denied until the debt is repaid", 35 * time.Second, []limiter.Limit{check(rate)}, 0, []want{{false, 0, 0, time.Second}}},
		{"and requests", 0, []limiter.Limit{rate}, 0, []want{{false, 0, 0, time.Second}}},
		{"repaid: a request passes", time.Second, []limiter.Limit{rate}, -1, []want{{true, 0, 0, 0}}},
		{"a debit is taken even when another limit denies", 0, []limiter.Limit{withCost(hard, 6), debit(rate, 2)}, 0,
			[]want{{false, 5, 0, time.Hour - 36*time.Second}, {false, 0, 0, 18 * time.Second}}},
		{"so the next token is 18s away", 17 * time.Second, []limiter.Limit{check(rate)}, 0, []want{{false, 0, 0, time.Second}}},
		{"a quota's debit goes past its max", time.Second, []limiter.Limit{debit(hard, 7)}, 0, []want{{false, 0, 7, time.Hour - 54*time.Second}}},
		{"and its checks are over", 0, []limiter.Limit{check(hard)}, 0, []want{{false, 0, 7, time.Hour - 54*time.Second}}},
		{"until the period ends", time.Hour - 54*time.Second, []limiter.Limit{check(hard)}, -1, []want{{true, 5, 0, 0}}},
		{"a debit larger than the bucket is recorded", 0, []limiter.Limit{debit(small, 5)}, 0, []want{{false, 0, 0, 4 * time.Second}}},
		{"and repaid token by token", 3 * time.Second, []limiter.Limit{small}, 0, []want{{false, 0, 0, time.Second}}},
		{"the first token after it", time.Second, []limiter.Limit{small}, -1, []want{{true, 0, 0, 0}}},
		// The debit is taken first, so the same bucket's request sees it;
		// the quota denies, and of the two only the debit stays taken.
		{"a debit stays taken when another slot denies", 0, []limiter.Limit{withCost(hard, 6), wide, debit(wide, 2)}, 0,
			[]want{{false, 5, 0, time.Hour - 4*time.Second}, {true, 98, 0, 0}, {true, 98, 0, 0}}},
		{"the bucket kept the debit only", 0, []limiter.Limit{check(wide)}, -1, []want{{true, 98, 0, 0}}},
		// A shadow limit is no debit: over, it takes nothing, or a trial in
		// shadow mode would leave debt that denies once it is over.
		{"a shadow debit that does not fit takes nothing, and denies nothing", 0, []limiter.Limit{debit(watch, 2), check(wide)}, -1,
			[]want{{false, 1, 0, time.Hour}, {true, 98, 0, 0}}},
		{"it left no debt", 0, []limiter.Limit{check(watch)}, -1, []want{{true, 1, 0, 0}}},
	})
}

func testQuotaMode(t *testing.T, newLimiter Factory) {
	qa := quotaMode(quota(keyspace.Quota("a"), 1, plan.Hour))
	qb := quotaMode(quota(keyspace.Quota("b"), 2, plan.Hour))
	qc := quotaMode(quota(ruleQuota("a", "qc", plan.Hour), 5, plan.Hour))
	closed := quota(ruleQuota("b", "closed", plan.Hour), 0, plan.Hour)
	rate := bucket(keyspace.Rate("a", "rate"), 100, time.Hour, 100)
	rest := time.Hour
	runSteps(t, newLimiter, []step{
		{"with room in both, both take", 0, []limiter.Limit{qa, qb, rate}, -1,
			[]want{{true, 0, 1, 0}, {true, 1, 1, 0}, {true, 99, 0, 0}}},
		{"one over: allowed, and the one over takes nothing", 0, []limiter.Limit{qa, qb, rate}, -1,
			[]want{{false, 0, 1, rest}, {true, 0, 2, 0}, {true, 98, 0, 0}}},
		{"every quota-mode limit over: denied by the first, nothing taken", 0, []limiter.Limit{qa, qb, rate}, 0,
			[]want{{false, 0, 1, rest}, {false, 0, 2, rest}, {true, 98, 0, 0}}},
		{"another limit over denies whatever the group says", 0, []limiter.Limit{qc, closed}, 1,
			[]want{{true, 5, 0, 0}, {false, 0, 0, rest}}},
		{"a lone quota-mode limit over denies", 0, []limiter.Limit{qa}, 0, []want{{false, 0, 1, rest}}},
		{"a quota-mode debit over is taken in an allowed request", 0, []limiter.Limit{debit(qa, 2), qc}, -1,
			[]want{{false, 0, 3, rest}, {true, 4, 1, 0}}},
		{"a shadow limit is no part of the group", 0, []limiter.Limit{shadow(qc), qa}, 1,
			[]want{{true, 4, 1, 0}, {false, 0, 3, rest}}},
		{"and never denies", 0, []limiter.Limit{shadow(qa), rate}, -1, []want{{false, 0, 3, rest}, {true, 97, 0, 0}}},
	})
}

// A bucket beyond its tolerance is either a lowered limit's leftover
// depth, forgiven, or debt, kept.
func testDebtOutlivesALoweredLimit(t *testing.T, newLimiter Factory) {
	big := bucket(keyspace.Rate("a", "lowered"), 100, time.Second, 1000) // 10s to fill
	small := bucket(keyspace.Rate("a", "lowered"), 10, time.Second, 10)  // 1s to fill
	owed := bucket(keyspace.Rate("a", "owed"), 10, time.Second, 10)
	runSteps(t, newLimiter, []step{
		{"the big bucket drained", 0, []limiter.Limit{withCost(big, 1000)}, -1, []want{{true, 0, 0, 0}}},
		{"lowered: the small bucket, empty, not the big one's 10s", 0, []limiter.Limit{small}, 0, []want{{false, 0, 0, 100 * time.Millisecond}}},
		{"2s of debt on a 1s bucket", 0, []limiter.Limit{debit(owed, 20)}, 0, []want{{false, 0, 0, 1100 * time.Millisecond}}},
		{"are not forgiven", time.Second, []limiter.Limit{owed}, 0, []want{{false, 0, 0, 100 * time.Millisecond}}},
		{"but repaid", 100 * time.Millisecond, []limiter.Limit{owed}, -1, []want{{true, 0, 0, 0}}},
	})
}
