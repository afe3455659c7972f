package limiter_test

import (
	"context"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/usage"
)

// Checked and sound (passes on main): a settlement debit on a quota
// counter that left memory reads it back, moves it past its limit, and
// the debit survives a restart.
func TestReviewSoundSettlementOnAnEvictedCounter(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	clock := limitertest.NewClock(time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC))
	l, db := openDisk(t, dir, limiter.LocalConfig{Clock: clock.Now, CounterIdle: time.Minute})
	terms := limitertest.LedgerTerms
	ledger := limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey("acme", terms), Cost: 1, WindowSize: time.Minute}
	quota := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: usage.QuotaKey("acme"), Cost: 1, Max: 5, Unit: "month"}
	d, err := l.Decide(ctx, []limiter.Limit{quota, ledger})
	if err != nil || !d.OK {
		t.Fatal(d.OK, err)
	}
	period, window := d.Statuses[0].PeriodStart, d.Statuses[1].PeriodStart
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := l.Counters(); n != 0 {
		t.Fatalf("%d counters in memory, want the idle one gone", n)
	}
	err = l.Adjust(ctx, []usage.Adjustment{{Key: ledger.Key, Start: window, Quota: quota.Key, QuotaStart: period,
		Consumer: "acme", Terms: terms, At: window, Units: 9, Reported: 9}})
	if err != nil {
		t.Fatal(err)
	}
	if got := used(t, l, quota); got != 10 {
		t.Fatalf("used %d after the debit, want 10", got)
	}
	if d, _ := l.Decide(ctx, []limiter.Limit{quota}); d.OK {
		t.Fatal("allowed past a debit that went over the quota")
	}
	l.Close()
	db.Close()
	l, _ = openDisk(t, dir, limiter.LocalConfig{Clock: clock.Now})
	if got := used(t, l, quota); got != 10 {
		t.Fatalf("used %d after a restart, want 10", got)
	}
}
