package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/keyspace"
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
	await.NoError(t, 5*time.Second, func() error {
		if n := l.Buckets(); n != 0 {
			return fmt.Errorf("%d full buckets kept", n)
		}
		return nil
	}, "full buckets to be forgotten")
}

// openDisk opens a local limiter on a bbolt file in dir, closed with the
// test.
func openDisk(t *testing.T, dir string, cfg limiter.LocalConfig) (*limiter.Local, *localstore.DB) {
	t.Helper()
	db, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Counters = db
	l, err := limiter.NewLocal(cfg)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		db.Close()
	})
	return l, db
}

func used(t *testing.T, l limiter.Limiter, q limiter.Limit) int64 {
	t.Helper()
	q.Cost = 0
	d, err := l.Decide(context.Background(), []limiter.Limit{q})
	if err != nil {
		t.Fatal(err)
	}
	return d.Statuses[0].Used
}

// Issue item 15: a burst of distinct addresses on a day quota leaves
// memory once saved and idle; only the counters used since stay, and every
// counter reads back from the file with its exact value, also after a
// restart. (Structural: counts counters, not bytes; BenchmarkLocalMemory
// measures the bytes.)
func TestLocalKeepsOnlyRecentlyUsedCountersInMemory(t *testing.T) {
	const n, recent = 20_000, 100
	dir := t.TempDir()
	clock := limitertest.NewClock(limitertest.Start)
	l, db := openDisk(t, dir, limiter.LocalConfig{Clock: clock.Now, CounterIdle: time.Minute})
	addr := func(i int) limiter.Limit {
		return limiter.Limit{Kind: limiter.Quota, Name: "per-ip", Key: keyspace.Rule(fmt.Sprintf("edge.remote_address=10.0.%d.%d", i>>8, i&0xff), "", []byte(":q:day")),
			Cost: 1, Max: 3, Unit: plan.Day}
	}
	for i := range n {
		if d, err := l.Decide(context.Background(), []limiter.Limit{addr(i)}); err != nil || !d.OK {
			t.Fatalf("address %d: %v %v", i, d.OK, err)
		}
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	for i := range recent {
		if d, err := l.Decide(context.Background(), []limiter.Limit{addr(i)}); err != nil || !d.OK {
			t.Fatalf("address %d again: %v %v", i, d.OK, err)
		}
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := l.Counters(); got != recent {
		t.Fatalf("%d counters in memory after the others went idle, want the %d used since", got, recent)
	}
	for _, i := range []int{0, recent - 1, recent, n / 2, n - 1} {
		want := int64(1)
		if i < recent {
			want = 2
		}
		if got := used(t, l, addr(i)); got != want {
			t.Fatalf("address %d read back: used %d, want %d", i, got, want)
		}
	}
	// The third request of an evicted address is allowed, the fourth not.
	q := addr(n - 1)
	for want, ok := range []bool{true, true, false} {
		if d, _ := l.Decide(context.Background(), []limiter.Limit{q}); d.OK != ok {
			t.Fatalf("request %d of an evicted address: ok %v, want %v", want+2, d.OK, ok)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()

	l, _ = openDisk(t, dir, limiter.LocalConfig{Clock: clock.Now})
	if got := l.Counters(); got != 0 {
		t.Fatalf("%d counters loaded at start, want none until used", got)
	}
	for i := range n {
		want := int64(1)
		switch {
		case i < recent:
			want = 2
		case i == n-1:
			want = 3
		}
		if got := used(t, l, addr(i)); got != want {
			t.Fatalf("address %d after a restart: used %d, want %d", i, got, want)
		}
	}
}

// Decisions on one counter while it is dropped from memory and read back
// over and over lose no increment.
func TestLocalCountsExactlyWhileCountersAreEvicted(t *testing.T) {
	clock := limitertest.NewClock(limitertest.Start)
	l, _ := openDisk(t, t.TempDir(), limiter.LocalConfig{Clock: clock.Now, FlushEvery: time.Millisecond, PruneEvery: time.Millisecond})
	q := limiter.Limit{Kind: limiter.Quota, Name: "q", Key: "{c:hot}:q", Cost: 1, Unit: plan.Year, Soft: true}
	const workers, each = 4, 300
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := l.Decide(context.Background(), []limiter.Limit{q}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	evicting := make(chan struct{})
	go func() {
		defer close(evicting)
		for {
			select {
			case <-stop:
				return
			default:
			}
			clock.Advance(2 * time.Minute) // idle: the next pass drops it once saved
			if err := l.Flush(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-evicting
	if got := used(t, l, q); got != workers*each {
		t.Fatalf("used %d, want %d", got, workers*each)
	}
}

// Counters of periods that ended over a day ago are deleted from the file
// too, not only from memory.
func TestLocalDeletesEndedCountersFromTheFile(t *testing.T) {
	clock := limitertest.NewClock(limitertest.Start)
	l, db := openDisk(t, t.TempDir(), limiter.LocalConfig{Clock: clock.Now, PruneEvery: time.Millisecond})
	q := limiter.Limit{Kind: limiter.Quota, Name: "q", Key: "{rl:ip=10.0.0.1}:q:day", Cost: 1, Max: 10, Unit: plan.Day}
	d, err := l.Decide(context.Background(), []limiter.Limit{q})
	if err != nil || !d.OK {
		t.Fatal(d.OK, err)
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	key := q.Key + ":" + fmt.Sprint(d.Statuses[0].PeriodStart.Unix())
	if _, found, err := db.ReadCounter(key); err != nil || !found {
		t.Fatalf("counter %s not saved: %v", key, err)
	}
	clock.Advance(3 * 24 * time.Hour)
	await.Until(t, 10*time.Second, func() bool {
		_, found, err := db.ReadCounter(key)
		if err != nil {
			t.Fatal(err)
		}
		return !found
	}, "a counter that ended two days ago to leave the file")
}

// Past MaxCounters, saved counters leave memory without waiting to be
// idle: a burst of new keys is bounded by what is not yet saved.
func TestLocalDropsSavedCountersPastMaxCounters(t *testing.T) {
	clock := limitertest.NewClock(limitertest.Start)
	l, _ := openDisk(t, t.TempDir(), limiter.LocalConfig{Clock: clock.Now, MaxCounters: 64})
	q := func(i int) limiter.Limit {
		return limiter.Limit{Kind: limiter.Quota, Name: "per-ip", Key: fmt.Sprintf("{rl:ip=10.1.%d.%d}:q:day", i>>8, i&0xff), Cost: 1, Max: 5, Unit: plan.Day}
	}
	for i := range 2000 {
		if _, err := l.Decide(context.Background(), []limiter.Limit{q(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // the first saves them, the second drops them
		if err := l.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if got := l.Counters(); got > 64 {
		t.Fatalf("%d counters in memory a minute before any is idle, want at most 64 (MaxCounters)", got)
	}
	if got := used(t, l, q(1999)); got != 1 {
		t.Fatalf("read back: used %d, want 1", got)
	}
}
