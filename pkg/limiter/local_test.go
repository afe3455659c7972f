package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newLocal(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
	l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestLocal(t *testing.T) { limitertest.Run(t, newLocal) }

func TestLedgerOnLocal(t *testing.T) {
	limitertest.RunLedger(t, func(t *testing.T, clock *limitertest.Clock) (limiter.Limiter, usage.Ledger) {
		l := newLocal(t, clock).(*limiter.Local)
		return l, l
	}, false)
}

// A restart keeps quota counters: they are in the file database.
func TestLocalQuotaSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clock := limitertest.NewClock(limitertest.Start)
	q := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: "{c:r}:quota", Cost: 1, Max: 5, Unit: plan.Month}
	open := func() (*limiter.Local, *localstore.DB) {
		db, err := localstore.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now, Counters: db})
		if err != nil {
			t.Fatal(err)
		}
		return l, db
	}
	l, db := open()
	for i := 0; i < 3; i++ {
		if d, err := l.Decide(context.Background(), []limiter.Limit{q}); err != nil || !d.OK {
			t.Fatalf("request %d: %v %v", i, d.OK, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()

	l, db = open()
	defer db.Close()
	defer l.Close()
	d, err := l.Decide(context.Background(), []limiter.Limit{q})
	if err != nil || d.Statuses[0].Used != 4 {
		t.Fatalf("after restart: used %d (%v), want 4", d.Statuses[0].Used, err)
	}
	// Next month starts from zero, whatever was stored.
	clock.Set(time.Date(2026, time.April, 1, 0, 0, 0, 0, time.UTC))
	if d, _ := l.Decide(context.Background(), []limiter.Limit{q}); d.Statuses[0].Used != 1 {
		t.Fatalf("April: used %d, want 1", d.Statuses[0].Used)
	}
}

// flakyStore fails saves while broken is set.
type flakyStore struct {
	mu     sync.Mutex
	broken bool
	saved  map[string]limiter.Counter
}

func (f *flakyStore) LoadCounters() (map[string]limiter.Counter, error)   { return nil, nil }
func (f *flakyStore) LoadLedger() (map[string]limiter.LedgerEntry, error) { return nil, nil }
func (f *flakyStore) SaveLedger(map[string]limiter.LedgerEntry, []string) error {
	return nil
}
func (f *flakyStore) SaveCounters(set map[string]limiter.Counter, del []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken {
		return errors.New("disk full")
	}
	for k, v := range set {
		f.saved[k] = v
	}
	return nil
}

// A failed write keeps the counters dirty: the next flush writes them.
func TestLocalRetriesFailedFlush(t *testing.T) {
	store := &flakyStore{broken: true, saved: map[string]limiter.Counter{}}
	clock := limitertest.NewClock(limitertest.Start)
	l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now, Counters: store, FlushEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	q := limiter.Limit{Kind: limiter.Quota, Name: "q", Key: "{c:f}:q", Cost: 2, Unit: plan.Month, Soft: true}
	if _, err := l.Decide(context.Background(), []limiter.Limit{q}); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(); err == nil {
		t.Fatal("flush into a broken store succeeded")
	}
	store.mu.Lock()
	store.broken = false
	store.mu.Unlock()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if len(store.saved) != 1 {
		t.Fatalf("saved %v, want the one counter written after the failure", store.saved)
	}
	for _, c := range store.saved {
		if c.Value != 2 {
			t.Fatalf("saved value %d, want 2", c.Value)
		}
	}
}

func TestDecideRejectsBadLimits(t *testing.T) {
	l := newLocal(t, limitertest.NewClock(limitertest.Start))
	tests := []struct {
		name string
		give limiter.Limit
	}{
		{"bucket without rate", limiter.Limit{Kind: limiter.Bucket, Key: "k", Cost: 1}},
		{"negative cost", limiter.Limit{Kind: limiter.Bucket, Key: "k", Cost: -1, Requests: 1, Per: time.Second}},
		{"quota without period", limiter.Limit{Kind: limiter.Quota, Key: "k", Cost: 1, Max: 1}},
	}
	for _, tt := range tests {
		if _, err := l.Decide(context.Background(), []limiter.Limit{tt.give}); !errors.Is(err, limiter.ErrBadLimit) {
			t.Errorf("%s: err = %v, want ErrBadLimit", tt.name, err)
		}
	}
}

// Full buckets are forgotten: per-address buckets do not pile up.
func TestLocalForgetsFullBuckets(t *testing.T) {
	clock := limitertest.NewClock(limitertest.Start)
	l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now, PruneEvery: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 100; i++ {
		b := limiter.Limit{Kind: limiter.Bucket, Name: "ip", Key: fmt.Sprintf("{rl:ip=%d}", i), Cost: 1, Requests: 10, Per: time.Second}
		l.Decide(context.Background(), []limiter.Limit{b})
	}
	if l.Buckets() != 100 {
		t.Fatalf("%d buckets, want 100", l.Buckets())
	}
	clock.Advance(time.Second) // every bucket is full again
	deadline := time.Now().Add(5 * time.Second)
	for l.Buckets() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d full buckets kept", l.Buckets())
		}
		time.Sleep(time.Millisecond)
	}
}
