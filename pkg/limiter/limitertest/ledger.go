package limitertest

import (
	"context"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/usage"
)

// LedgerFactory returns a fresh limiter and the usage ledger it writes.
type LedgerFactory func(t *testing.T, clock *Clock) (limiter.Limiter, usage.Ledger)

// RunLedger is the ledger's behaviour suite: admission counts units in the
// same decision as the limits (and only when they allow), settlement
// adjusts, closed windows are listed until marked exported.
func RunLedger(t *testing.T, newLedger LedgerFactory) {
	ctx := context.Background()
	window := time.Minute
	ledger := limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: limiter.LedgerKey("acme", "api_calls"), WindowSize: window}
	rate := limiter.Limit{Kind: limiter.Bucket, Name: "rate", Key: "{c:acme}:rate", Cost: 1, Requests: 3, Per: time.Hour}
	request := func(cost int64) []limiter.Limit {
		l := ledger
		l.Cost = cost
		return []limiter.Limit{rate, l}
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
		if ws, _ := led.Closed(ctx, clock.Now(), 0); len(ws) != 0 {
			t.Fatalf("open window listed as closed: %+v", ws)
		}
		clock.Advance(30 * time.Second)
		ws, err := led.Closed(ctx, clock.Now(), 0)
		if err != nil || len(ws) != 1 {
			t.Fatalf("closed windows %+v %v", ws, err)
		}
		w := ws[0]
		if w.Consumer != "acme" || w.Meter != "api_calls" || w.Units != 10 || w.Size != window ||
			!w.Start.Equal(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC)) {
			t.Fatalf("window %+v", w)
		}
	})

	t.Run("SettlementAdjustsItsWindowNeverBelowZero", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		l := ledger
		l.Cost = 4
		if _, err := lim.Decide(ctx, []limiter.Limit{l}); err != nil {
			t.Fatal(err)
		}
		at := clock.Now().Add(10 * time.Second)
		err := led.Adjust(ctx, []usage.Adjustment{
			{Consumer: "acme", Meter: "api_calls", At: at, Units: -1}, // a refunded 5xx
			{Consumer: "acme", Meter: "api_calls", At: at, Units: 5},  // units reported by the upstream
			{Consumer: "acme", Meter: "other", At: at, Units: 7},      // never admitted: ignored
		})
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
		ws, _ := led.Closed(ctx, clock.Now(), 0)
		if len(ws) != 1 || ws[0].Units != 8 {
			t.Fatalf("after settlement: %+v", ws)
		}
		led.Adjust(ctx, []usage.Adjustment{{Consumer: "acme", Meter: "api_calls", At: at, Units: -100}})
		if ws, _ := led.Closed(ctx, clock.Now(), 0); ws[0].Units != 0 {
			t.Fatalf("below zero: %+v", ws)
		}
	})

	t.Run("ExportedWindowsLeaveClosedButStayInWindows", func(t *testing.T) {
		clock := NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
		lim, led := newLedger(t, clock)
		l := ledger
		l.Cost = 1
		for i := 0; i < 3; i++ { // three windows
			lim.Decide(ctx, []limiter.Limit{l})
			clock.Advance(window)
		}
		ws, _ := led.Closed(ctx, clock.Now(), 2)
		if len(ws) != 2 || !ws[0].Start.Before(ws[1].Start) {
			t.Fatalf("closed, at most 2, oldest first: %+v", ws)
		}
		if err := led.MarkExported(ctx, ws[0]); err != nil {
			t.Fatal(err)
		}
		rest, _ := led.Closed(ctx, clock.Now(), 0)
		if len(rest) != 2 || rest[0].Start.Equal(ws[0].Start) {
			t.Fatalf("after export: %+v", rest)
		}
		for _, w := range rest {
			led.MarkExported(ctx, w)
		}
		// A ledger whose windows are all exported still lists them.
		all, err := led.Windows(ctx, "acme", clock.Now().Add(-time.Hour), clock.Now())
		if err != nil || len(all) != 3 || !all[0].Exported || !all[2].Exported {
			t.Fatalf("windows: %+v %v", all, err)
		}
		if other, _ := led.Windows(ctx, "someone", clock.Now().Add(-time.Hour), clock.Now()); len(other) != 0 {
			t.Fatalf("another consumer's windows: %+v", other)
		}
	})
}
