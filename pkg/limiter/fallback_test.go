package limiter_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// During an outage a debit is owed to the store even when the fallback
// denies its request: it was spent, and the store must hear of it.
func TestFallbackOwesTheDebitsOfDeniedRequests(t *testing.T) {
	local, err := limiter.NewLocal(limiter.LocalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	store := &outage{down: true}
	ledger := &ledgerUnits{}
	f := limiter.NewFallback(limiter.FallbackConfig{Primary: store, Local: local, Ledger: ledger,
		ReconcileEvery: time.Hour, Log: zaptest.NewLogger(t)}) // reconciled by hand below
	defer f.Close()
	limits := []limiter.Limit{
		{Kind: limiter.Bucket, Name: "rate", Key: "{c:d}:rate", Cost: 1, Requests: 1, Per: time.Hour},
		{Kind: limiter.Quota, Name: "tokens", Key: "{c:d}:tokens", Cost: 5, Max: 1000, Unit: plan.Month, Debit: true},
		{Kind: limiter.Ledger, Name: "usage", Key: usage.LedgerKey("d", usage.Terms{Meter: "tokens"}), Cost: 5, WindowSize: time.Minute, Debit: true},
	}
	ctx := context.Background()
	for i, wantOK := range []bool{true, false, false} {
		d, err := f.Decide(ctx, limits)
		if err != nil || d.OK != wantOK {
			t.Fatalf("request %d in the outage: ok=%v err=%v, want ok=%v", i+1, d.OK, err, wantOK)
		}
	}
	store.set(false)
	f.Reconcile(ctx)
	if quota, units := store.added(), ledger.total(); quota != 15 || units != 15 {
		t.Fatalf("reconciled %d quota units and %d ledger units, want the three debits' 15 each", quota, units)
	}
}

// During an outage an addition counts on the local store, where a Peek
// sees it, and is owed to the store, which gets it once it is back.
func TestFallbackAddsDuringAnOutageAndReconciles(t *testing.T) {
	local, err := limiter.NewLocal(limiter.LocalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	store := &outage{down: true}
	f := limiter.NewFallback(limiter.FallbackConfig{Primary: store, Local: local, Ledger: &ledgerUnits{},
		ReconcileEvery: time.Hour, Log: zaptest.NewLogger(t)}) // reconciled by hand below
	defer f.Close()
	ctx := context.Background()
	tokens := limiter.Limit{Kind: limiter.Quota, Name: "tokens", Key: "{c:a}:tokens", Cost: 5, Max: 3, Unit: plan.Month}
	if err := f.Add(ctx, []limiter.Limit{tokens}); err != nil {
		t.Fatalf("Add in the outage: %v", err)
	}
	r, err := f.Peek(ctx, []limiter.Limit{tokens})
	if err != nil || r.Statuses[0].Used != 5 {
		t.Fatalf("Peek in the outage: %+v %v, want the 5 added", r.Statuses, err)
	}
	store.set(false)
	f.Reconcile(ctx)
	if added := store.added(); added != 5 {
		t.Fatalf("reconciled %d units, want the 5 added in the outage", added)
	}
}

// outage is a store that fails while down and, once up, counts the units
// Reconcile adds. Its reads always fail.
type outage struct {
	mu    sync.Mutex
	down  bool
	units int64
}

func (o *outage) Decide(_ context.Context, limits []limiter.Limit) (limiter.Decision, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down {
		return limiter.Decision{}, limiter.ErrStoreDown // refused before it was sent
	}
	d := limiter.Decision{OK: true, Denied: -1, Statuses: make([]limiter.Status, len(limits))}
	for _, l := range limits {
		o.units += l.Cost
	}
	return d, nil
}

func (o *outage) Add(ctx context.Context, limits []limiter.Limit) error {
	_, err := o.Decide(ctx, limits)
	return err
}

func (o *outage) Peek(context.Context, []limiter.Limit) (limiter.Reading, error) {
	return limiter.Reading{}, limiter.ErrStoreDown
}

func (o *outage) set(down bool) {
	o.mu.Lock()
	o.down = down
	o.mu.Unlock()
}

func (o *outage) added() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.units
}

// ledgerUnits is a LedgerAdder that sums what it is given.
type ledgerUnits struct {
	mu    sync.Mutex
	units int64
}

func (l *ledgerUnits) AddUnits(_ context.Context, _ string, _ time.Time, _ time.Duration, units int64, _ string) error {
	l.mu.Lock()
	l.units += units
	l.mu.Unlock()
	return nil
}

func (l *ledgerUnits) total() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.units
}
