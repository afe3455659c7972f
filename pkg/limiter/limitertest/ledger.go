package limitertest

import (
	"context"
	"errors"
	"testing"
	"time"

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
	rate := limiter.Limit{Kind: limiter.Bucket, Name: "rate", Key: "{c:acme}:rate", Cost: 1, Requests: 3, Per: time.Hour}
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

	if !shared {
		return
	}
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
