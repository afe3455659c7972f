package billing_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/plan"
)

// holds counts the lease's holds.
type holds struct {
	mu sync.Mutex
	n  int
}

func (h *holds) Hold(context.Context, string, time.Duration) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	return true, nil
}

func (h *holds) Release(context.Context, string) error { return nil }

func (h *holds) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// While the store says it is not ready (a layout migration under way),
// the exporter sends nothing and leaves the lease to the replicas that
// may export; once it is, what was held back goes out.
func TestExporterWaitsAndLeavesTheLeaseUntilTheStoreIsReady(t *testing.T) {
	r := newRig(t)
	r.admit(t, r.local, "beta", 3)
	r.clock.Advance(2 * time.Minute)
	var ready atomic.Bool
	lease := &holds{}
	e := billing.NewExporter(billing.ExporterConfig{
		Ledger: r.local, Consumer: r.people.get, Catalog: func() *plan.Catalog { return r.catalog }, Lease: lease, Holder: "a",
		Ready:  func(context.Context) (bool, error) { return ready.Load(), nil },
		APIKey: "sk_test_levy", APIBase: r.stripe.URL, Every: 10 * time.Millisecond, SettleDelay: 5 * time.Second,
		Log: zaptest.NewLogger(t), Clock: r.clock.Now,
	})
	if n, err := e.ExportOnce(context.Background()); !errors.Is(err, billing.ErrNotReady) || n != 0 {
		t.Fatalf("ExportOnce = %d, %v; want %v", n, err, billing.ErrNotReady)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { stop(); <-done }()
	await.Holds(t, 100*time.Millisecond, func() bool { return lease.count() == 0 && len(r.stripe.Calls(meterPath)) == 0 },
		"no lease held and nothing sent while not ready")
	ready.Store(true)
	await.NoError(t, 10*time.Second, func() error {
		if s := sent(t, r.stripe); total(s) != 3 {
			return fmt.Errorf("exported %v", s)
		}
		return nil
	}, "the 3 units exported once ready")
}
