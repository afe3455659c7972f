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

// LedgerFactory returns a fresh limiter and the usage ledger it writes.
type LedgerFactory func(t *testing.T, clock *Clock) (limiter.Limiter, usage.Ledger)

// LedgerTerms are the billing terms the suite's windows are counted under.
var LedgerTerms = usage.Terms{Plan: "payg", Meter: "api_calls", Billed: true, Included: 5, Period: plan.Month}

// RunLedger is the ledger's behaviour suite: admission counts units in the
// same decision as the limits (and only when they allow), settlement
// adjusts, closed windows are due until accounted, and a late settlement
// makes an accounted window due again. shared says the ledger is shared
// by replicas: a request settled twice (on two replicas) counts once.
func RunLedger(t *testing.T, newLedger LedgerFactory, shared bool) {
	ctx := context.Background()
	window := time.Minute
	key := usage.LedgerKey("acme", LedgerTerms)
	ledger := limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: key, WindowSize: window}
	rate := limiter.Limit{Kind: limiter.Bucket, Name: "rate", Key: keyspace.Rate("acme", "test"), Cost: 1, Requests: 3, Per: time.Hour}
	request := func(cost int64) []limiter.Limit {
		l := ledger
		l.Cost = cost
		return []limiter.Limit{rate, l}
	}
	admit := func(t *testing.T, lim limiter.Limiter, cost int64) limiter.Decision {
		t.Helper()
		l := ledger
		l.Cost = cost
		d, err := lim.Decide(ctx, []limiter.Limit{l})
		if err != nil || !d.OK {
			t.Fatalf("admit %d: %v %v", cost, d.OK, err)
		}
		return d
	}
	due := func(t *testing.T, led usage.Ledger, before time.Time) []usage.Window {
		t.Helper()
		ws, err := led.Due(ctx, before)
		if err != nil {
			t.Fatal(err)
		}
		return ws
	}

	t.Run("AdmissionCountsUnitsOnlyWhenAllowed", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 30, 0, time.UTC))
		lim, led := newLedger(t, clock)
		for i, c := range []int64{3, 4, 3} {
			d, err := lim.Decide(ctx, request(c))
			if err != nil || !d.OK {
				t.Fatalf("request %d: %v %v", i, d.OK, err)
			}
		}
		// Denied by the rate bucket (3 per hour): nothing reaches the ledger.
		if d, _ := lim.Decide(ctx, request(1)); d.OK {
			t.Fatal("4th request allowed on a bucket of 3")
		}
		if ws := due(t, led, clock.Now()); len(ws) != 0 {
			t.Fatalf("open window listed as due: %+v", ws)
		}
		clock.Advance(30 * time.Second)
		ws := due(t, led, clock.Now())
		if len(ws) != 1 {
			t.Fatalf("due windows %+v", ws)
		}
		w := ws[0]
		if w.Consumer != "acme" || w.Meter != "api_calls" || w.Terms != LedgerTerms || w.Key != key || w.Units != 10 ||
			w.Size != window || !w.Start.Equal(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)) || w.Exported {
			t.Fatalf("window %+v", w)
		}
	})

	t.Run("SettlementAdjustsItsWindowNeverBelowZero", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		admit(t, lim, 4)
		at := clock.Now().Add(10 * time.Second)
		other := LedgerTerms
		other.Meter = "other"
		err := led.Adjust(ctx, []usage.Adjustment{
			{Consumer: "acme", Terms: LedgerTerms, At: at, Units: -1, Refunded: 1}, // a refunded 5xx
			{Consumer: "acme", Terms: LedgerTerms, At: at, Units: 5, Reported: 5},  // units reported by the upstream
			{Consumer: "acme", Terms: other, At: at, Units: 7, Reported: 7},        // never admitted: ignored
		})
		// The ledger may say which found no window.
		var partial *usage.PartialError
		if errors.As(err, &partial) && len(partial.Failed) == 0 && len(partial.Unmatched) == 1 && partial.Unmatched[0].Terms == other {
			err = nil
		}
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
		ws := due(t, led, clock.Now())
		if len(ws) != 1 || ws[0].Units != 8 || ws[0].Refunded != 1 || ws[0].Reported != 5 {
			t.Fatalf("after settlement: %+v", ws)
		}
		led.Adjust(ctx, []usage.Adjustment{{Consumer: "acme", Terms: LedgerTerms, At: at, Units: -100, Refunded: 100}})
		if ws := due(t, led, clock.Now()); ws[0].Units != 0 {
			t.Fatalf("below zero: %+v", ws)
		}
	})

	t.Run("SettlementFindsTheWindowAdmissionNamed", func(t *testing.T) {
		// Admitted in the last second of a window (by the store's clock)
		// for a request Envoy saw start in the next one.
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 59, 900_000_000, time.UTC))
		lim, led := newLedger(t, clock)
		d := admit(t, lim, 2)
		start := d.Statuses[0].PeriodStart
		clock.Advance(time.Second)
		admit(t, lim, 1) // the next window has units too
		err := led.Adjust(ctx, []usage.Adjustment{{Key: key, Start: start, Consumer: "acme", Terms: LedgerTerms,
			At: clock.Now(), Units: -2, Refunded: 2}})
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(2 * time.Minute)
		ws := due(t, led, clock.Now())
		if len(ws) != 2 || !ws[0].Start.Equal(start) || ws[0].Units != 0 || ws[1].Units != 1 {
			t.Fatalf("windows %+v", ws)
		}
	})

	t.Run("AccountedWindowsLeaveDueButStayInWindows", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		for range 3 { // three windows
			admit(t, lim, 1)
			clock.Advance(window)
		}
		ws := due(t, led, clock.Now())
		if len(ws) != 3 || !ws[0].Start.Before(ws[1].Start) {
			t.Fatalf("due, oldest first: %+v", ws)
		}
		if err := led.Prepare(ctx, ws[1], 2); err != nil {
			t.Fatal(err)
		}
		if got := due(t, led, clock.Now()); got[1].Pending != 2 {
			t.Fatalf("prepared: %+v", got)
		}
		if err := led.Commit(ctx, ws[1], 2, ws[:2]); err != nil {
			t.Fatal(err)
		}
		rest := due(t, led, clock.Now())
		if len(rest) != 1 || !rest[0].Start.Equal(ws[2].Start) {
			t.Fatalf("after commit: %+v", rest)
		}
		if err := led.Commit(ctx, rest[0], 0, rest); err != nil {
			t.Fatal(err)
		}
		// A ledger whose windows are all accounted still lists them.
		all, err := led.Windows(ctx, "acme", clock.Now().Add(-time.Hour), clock.Now())
		if err != nil || len(all) != 3 || !all[0].Exported || !all[2].Exported {
			t.Fatalf("windows: %+v %v", all, err)
		}
		if all[1].Billed != 2 || all[1].Events != 1 || all[1].Pending != 0 || all[0].Billed != 0 || all[2].Events != 0 {
			t.Fatalf("billed: %+v", all)
		}
		if other, _ := led.Windows(ctx, "someone", clock.Now().Add(-time.Hour), clock.Now()); len(other) != 0 {
			t.Fatalf("another consumer's windows: %+v", other)
		}
	})

	t.Run("LateSettlementMakesAnAccountedWindowDueAgain", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		admit(t, lim, 3)
		at := clock.Now()
		clock.Advance(window)
		ws := due(t, led, clock.Now())
		if err := led.Commit(ctx, ws[0], 3, ws); err != nil {
			t.Fatal(err)
		}
		if got := due(t, led, clock.Now()); len(got) != 0 {
			t.Fatalf("accounted window due: %+v", got)
		}
		led.Adjust(ctx, []usage.Adjustment{{Consumer: "acme", Terms: LedgerTerms, At: at, Units: -1, Refunded: 1}})
		got := due(t, led, clock.Now())
		if len(got) != 1 || got[0].Units != 2 || got[0].Accounted != 3 || !got[0].Exported {
			t.Fatalf("corrected window: %+v", got)
		}
		// A settlement between reading the window and committing it keeps
		// it due.
		led.Adjust(ctx, []usage.Adjustment{{Consumer: "acme", Terms: LedgerTerms, At: at, Units: 4, Reported: 4}})
		if err := led.Commit(ctx, got[0], 0, got); err != nil {
			t.Fatal(err)
		}
		again := due(t, led, clock.Now())
		if len(again) != 1 || again[0].Units != 6 || again[0].Accounted != 2 {
			t.Fatalf("settled while committing: %+v", again)
		}
		if err := led.Commit(ctx, again[0], 0, again); err != nil {
			t.Fatal(err)
		}
		if left := due(t, led, clock.Now()); len(left) != 0 {
			t.Fatalf("left: %+v", left)
		}
	})

	t.Run("RejectedWindowsAreSetAside", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		admit(t, lim, 3)
		clock.Advance(window)
		ws := due(t, led, clock.Now())
		led.Prepare(ctx, ws[0], 3)
		if err := led.Reject(ctx, ws[0], "No such customer", ws); err != nil {
			t.Fatal(err)
		}
		if left := due(t, led, clock.Now()); len(left) != 0 {
			t.Fatalf("rejected window still due: %+v", left)
		}
		all, _ := led.Windows(ctx, "acme", clock.Now().Add(-time.Hour), clock.Now())
		if len(all) != 1 || all[0].Rejected != "No such customer" || all[0].Pending != 0 || all[0].Billed != 0 {
			t.Fatalf("rejected: %+v", all)
		}
	})

	// The quota counter admission counted a request in, beside its window.
	quotaKey := usage.QuotaKey("acme")
	quota := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: quotaKey, Unit: plan.Month, Max: 5}
	// counted admits a request of cost on quota q and the ledger, and
	// returns the adjustment that settles it by units (fingerprinted by id
	// when given), naming the window and counter it was counted in.
	counted := func(t *testing.T, lim limiter.Limiter, q limiter.Limit, cost int64) func(id string, units int64) usage.Adjustment {
		t.Helper()
		q.Cost = cost
		l := ledger
		l.Cost = cost
		d, err := lim.Decide(ctx, []limiter.Limit{q, l})
		if err != nil || !d.OK {
			t.Fatalf("admit %d: %+v %v", cost, d, err)
		}
		at, period, window := d.Now, d.Statuses[0].PeriodStart, d.Statuses[1].PeriodStart
		return func(id string, units int64) usage.Adjustment {
			a := usage.Adjustment{Key: key, Start: window, Quota: quotaKey, QuotaStart: period,
				Consumer: "acme", Terms: LedgerTerms, At: at, Units: units}
			if units < 0 {
				a.Refunded = -units
			} else {
				a.Reported = units
			}
			if id != "" {
				a.Requests = []usage.Settled{{ID: usage.FingerprintOf(id, at.UnixNano()), Units: units}}
			}
			return a
		}
	}
	adjust := func(t *testing.T, led usage.Ledger, adjs ...usage.Adjustment) {
		t.Helper()
		if err := led.Adjust(ctx, adjs); err != nil {
			t.Fatal(err)
		}
	}
	decide := func(t *testing.T, lim limiter.Limiter, q limiter.Limit, cost int64) (limiter.Decision, limiter.Status) {
		t.Helper()
		q.Cost = cost
		d, err := lim.Decide(ctx, []limiter.Limit{q})
		if err != nil {
			t.Fatal(err)
		}
		return d, d.Statuses[0]
	}

	t.Run("SettledDebitGoesPastTheQuotaAndDeniesUntilARefund", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		settle := counted(t, lim, quota, 1)
		adjust(t, led, settle("req-1", 10-1)) // the upstream reported 10 units
		if got := Usage(t, lim, quota); got != 10 {
			t.Fatalf("quota counter %d after a debit of 9 on 1, want 10 (past its 5)", got)
		}
		d, st := decide(t, lim, quota, 1)
		if d.OK || st.Remaining != 0 || st.Used != 10 || st.Limit != 5 || st.RetryAfter <= 0 {
			t.Fatalf("next request on a quota in debt: %+v", d)
		}
		clock.Advance(window)
		if ws := due(t, led, clock.Now()); len(ws) != 1 || ws[0].Units != 10 {
			t.Fatalf("the window did not move with the counter: %+v", ws)
		}
		// A refund takes the counter down, never below zero.
		adjust(t, led, settle("req-2", -100))
		if got := Usage(t, lim, quota); got != 0 {
			t.Fatalf("quota counter %d after a refund past zero", got)
		}
		if d, _ := decide(t, lim, quota, 5); !d.OK {
			t.Fatalf("after the refund: %+v", d)
		}
		// An adjustment that names another consumer's counter moves its
		// window, not that counter.
		other := quota
		other.Key = usage.QuotaKey("bolt")
		if d, _ := decide(t, lim, other, 1); !d.OK {
			t.Fatal("bolt's first request denied")
		}
		a := settle("req-3", 50)
		a.Quota = other.Key
		adjust(t, led, a)
		if got := Usage(t, lim, other); got != 1 {
			t.Fatalf("acme's settlement moved bolt's counter to %d", got)
		}
	})

	t.Run("SettlementLeavesTheQuotaOfANewPeriodAlone", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 31, 23, 59, 30, 0, time.UTC))
		lim, led := newLedger(t, clock)
		march := counted(t, lim, quota, 1)
		clock.Advance(time.Minute) // April
		counted(t, lim, quota, 1)
		april := counted(t, lim, quota, 1)
		// March's late refund and debit, and a refund of one of April's.
		adjust(t, led, march("m-refund", -1), march("m-debit", 7), april("a-refund", -1))
		if got := Usage(t, lim, quota); got != 1 {
			t.Fatalf("April's counter %d, want 2 counted - 1 refunded in April (March's settlements are March's)", got)
		}
	})

	t.Run("SoftUncappedQuotaCountsDebitsAndNeverDenies", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		payg := limiter.Limit{Kind: limiter.Quota, Name: "usage", Key: quotaKey, Unit: plan.Month, Max: 5, Soft: true}
		settle := counted(t, lim, payg, 1)
		adjust(t, led, settle("req-1", 99))
		d, st := decide(t, lim, payg, 1)
		if !d.OK || st.Used != 101 || st.Overage != 96 {
			t.Fatalf("pay-as-you-go after a debit of 99: %+v", d)
		}
	})

	t.Run("ARouteFreeAtAdmissionIsDebitedWhatItsUpstreamReports", func(t *testing.T) {
		// An LLM route: admission charges nothing (the tokens are not
		// known yet), the access log reports them.
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		settle := counted(t, lim, quota, 0)
		adjust(t, led, settle("req-1", 7))
		if got := Usage(t, lim, quota); got != 7 {
			t.Fatalf("quota counter %d after 7 units reported for a free admission, want 7", got)
		}
		if d, _ := decide(t, lim, quota, 1); d.OK {
			t.Fatalf("a request after 7 units on a quota of 5 was allowed: %+v", d)
		}
		clock.Advance(window)
		if ws := due(t, led, clock.Now()); len(ws) != 1 || ws[0].Units != 7 {
			t.Fatalf("the reported units did not reach the usage ledger: %+v", ws)
		}
		// A refund of such a request finds nothing to take back.
		adjust(t, led, settle("req-2", -3))
		if got := Usage(t, lim, quota); got != 4 {
			t.Fatalf("quota counter %d after a refund of 3, want 4", got)
		}
	})

	if !shared {
		return
	}
	t.Run("AQuotaSettledOnTwoReplicasMovesOnce", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		debit := counted(t, lim, quota, 1)
		refund := counted(t, lim, quota, 1)
		for range 2 { // each replica's delivery
			adjust(t, led, debit("req-d", 9), refund("req-r", -1))
		}
		if got := Usage(t, lim, quota); got != 2+9-1 {
			t.Fatalf("quota counter %d after two deliveries, want %d", got, 2+9-1)
		}
	})

	t.Run("ARequestSettledOnTwoReplicasCountsOnce", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		admit(t, lim, 6)
		at := clock.Now()
		a, b := usage.FingerprintOf("req-a", at.UnixNano()), usage.FingerprintOf("req-b", at.UnixNano())
		// Two replicas, each with the gateway's and the sidecar's log of
		// request a; b only on the second.
		for _, reqs := range [][]usage.Settled{{{ID: a, Units: -1}}, {{ID: a, Units: -1}, {ID: b, Units: 3}}} {
			adj := usage.Adjustment{Consumer: "acme", Terms: LedgerTerms, At: at, Requests: reqs}
			for _, s := range reqs {
				adj.Units += s.Units
			}
			if err := led.Adjust(ctx, []usage.Adjustment{adj}); err != nil {
				t.Fatal(err)
			}
		}
		clock.Advance(window)
		ws := due(t, led, clock.Now())
		if len(ws) != 1 || ws[0].Units != 8 || ws[0].Refunded != 1 || ws[0].Reported != 3 {
			t.Fatalf("after two deliveries: %+v", ws)
		}
	})
}
