package billing_test

import (
	"context"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/limiter"
)

// diskStore is a CounterStore whose contents are what a SIGKILL leaves:
// only what the local limiter committed.
type diskStore struct {
	mu       sync.Mutex
	counters map[string]limiter.Counter
	ledger   map[string]limiter.LedgerEntry
}

func newDiskStore() *diskStore {
	return &diskStore{counters: map[string]limiter.Counter{}, ledger: map[string]limiter.LedgerEntry{}}
}

func (d *diskStore) LoadCounters() (map[string]limiter.Counter, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.counters), nil
}

func (d *diskStore) LoadLedger() (map[string]limiter.LedgerEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.ledger), nil
}

func (d *diskStore) SaveCounters(set map[string]limiter.Counter, del []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	maps.Copy(d.counters, set)
	for _, k := range del {
		delete(d.counters, k)
	}
	return nil
}

func (d *diskStore) SaveLedger(set map[string]limiter.LedgerEntry, del []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	maps.Copy(d.ledger, set)
	for _, k := range del {
		delete(d.ledger, k)
	}
	return nil
}

// snapshot is the store as a SIGKILL at this moment leaves it.
func (d *diskStore) snapshot() *diskStore {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &diskStore{counters: maps.Clone(d.counters), ledger: maps.Clone(d.ledger)}
}

// On the local store, the exporter's pending event must be on disk before
// it is sent: killed after Stripe took an event and before the write-behind
// wrote it down, levy must not bill those units again under another
// identifier once more windows have closed.
func TestLocalStoreKilledAfterStripeTookAnEventDoesNotBillItTwice(t *testing.T) {
	r := newRig(t)
	disk := newDiskStore()
	open := func(store *diskStore) *limiter.Local {
		// Commits far apart: whatever is not committed by hand is what a
		// SIGKILL loses.
		l, err := limiter.NewLocal(limiter.LocalConfig{Clock: r.clock.Now, Counters: store, FlushEvery: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	first := open(disk)
	t.Cleanup(func() { first.Close() })
	r.admit(t, first, "beta", 5) // payg0: every unit billed
	// The write-behind's first commit, after which it waits an hour.
	await.Until(t, 5*time.Second, func() bool { return len(disk.snapshot().ledger) > 0 }, "the write-behind's first commit")
	r.clock.Advance(time.Minute)
	r.admit(t, first, "beta", 2) // the next window, durable too
	if err := first.Flush(); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(10 * time.Second) // the first window is settled, the second not yet
	if _, err := r.exporter(t, first, nil, "a").ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := total(sent(t, r.stripe)); got != 5 {
		t.Fatalf("first export billed %d, want 5", got)
	}

	// SIGKILL now, and a restart on what is on disk.
	second := open(disk.snapshot())
	t.Cleanup(func() { second.Close() })
	r.clock.Advance(2 * time.Minute)
	if _, err := r.exporter(t, second, nil, "b").ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := total(sent(t, r.stripe)); got != 7 {
		t.Fatalf("Stripe holds %d units, want 7 (events %v)", got, sent(t, r.stripe))
	}
}
