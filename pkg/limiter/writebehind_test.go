package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// commitStore is a Committer that records every commit, can hold commits
// at a gate, and fails them while broken.
type commitStore struct {
	gate    chan struct{} // when set, each commit takes one value from it
	mu      sync.Mutex
	broken  bool
	commits []limiter.Changes
	saved   map[string]limiter.Counter
	ledger  map[string]limiter.LedgerEntry
	changed chan struct{} // 1-buffered: a commit ended
}

func newCommitStore() *commitStore {
	return &commitStore{saved: map[string]limiter.Counter{}, ledger: map[string]limiter.LedgerEntry{}, changed: make(chan struct{}, 1)}
}

func (s *commitStore) LoadCounters() (map[string]limiter.Counter, error)   { return nil, nil }
func (s *commitStore) LoadLedger() (map[string]limiter.LedgerEntry, error) { return nil, nil }
func (s *commitStore) SaveCounters(map[string]limiter.Counter, []string) error {
	return errors.New("SaveCounters called on a Committer")
}
func (s *commitStore) SaveLedger(map[string]limiter.LedgerEntry, []string) error {
	return errors.New("SaveLedger called on a Committer")
}

func (s *commitStore) Commit(c limiter.Changes) error {
	if s.gate != nil {
		<-s.gate
	}
	defer func() {
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken {
		return errors.New("disk full")
	}
	s.commits = append(s.commits, c)
	for k, v := range c.Counters {
		s.saved[k] = v
	}
	for k, v := range c.Ledger {
		s.ledger[k] = v
	}
	return nil
}

// await waits, without guessing a duration, until cond holds of the
// store after a commit.
func (s *commitStore) await(t *testing.T, what string, cond func(s *commitStore) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		ok := cond(s)
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.changed:
		case <-timeout:
			t.Fatalf("no commit of %s within 10s", what)
		}
	}
}

func sum(m map[string]limiter.Counter) (n int64) {
	for _, c := range m {
		n += c.Value
	}
	return n
}

var (
	quota  = limiter.Limit{Kind: limiter.Quota, Name: "q", Key: "{c:wb}:q", Cost: 1, Unit: plan.Month, Soft: true}
	ledger = limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey("wb", usage.Terms{Meter: "calls"}), Cost: 1, WindowSize: time.Minute}
)

func openLocal(t *testing.T, cfg limiter.LocalConfig) *limiter.Local {
	t.Helper()
	if cfg.Clock == nil {
		cfg.Clock = limitertest.NewClock(limitertest.Start).Now
	}
	l, err := limiter.NewLocal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func decide(t *testing.T, l *limiter.Local, limits ...limiter.Limit) {
	t.Helper()
	if d, err := l.Decide(context.Background(), limits); err != nil || !d.OK {
		t.Fatalf("decide: %v %v", d.OK, err)
	}
}

// A change is committed at once, not after a tick: with an hour between
// commits, the first change after a quiet spell is still written at once.
func TestLocalCommitsTheFirstChangeAtOnce(t *testing.T) {
	store := newCommitStore()
	l := openLocal(t, limiter.LocalConfig{Counters: store, FlushEvery: time.Hour})
	decide(t, l, quota)
	store.await(t, "the counter", func(s *commitStore) bool { return sum(s.saved) == 1 })
}

// Counters and ledger windows changed together are written in one
// transaction: a crash never keeps one without the other.
func TestLocalCommitsCountersAndLedgerTogether(t *testing.T) {
	store := newCommitStore()
	l := openLocal(t, limiter.LocalConfig{Counters: store})
	decide(t, l, quota, ledger)
	store.await(t, "counter and window", func(s *commitStore) bool { return len(s.commits) > 0 })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if c := store.commits[0]; len(c.Counters) != 1 || len(c.Ledger) != 1 {
		t.Fatalf("first commit %+v, want the counter and the window in it", c)
	}
}

// A failed commit is retried by the loop itself, after a backoff.
func TestLocalRetriesAFailedCommitByItself(t *testing.T) {
	store := newCommitStore()
	store.broken = true
	reg := prometheus.NewRegistry()
	l := openLocal(t, limiter.LocalConfig{Counters: store, FlushEvery: time.Millisecond, Registerer: reg})
	decide(t, l, quota)
	waitMetric(t, reg, "levy_local_commit_failures_total", func(v float64) bool { return v >= 1 })
	store.mu.Lock()
	store.broken = false
	store.mu.Unlock()
	store.await(t, "the counter after the disk came back", func(s *commitStore) bool { return sum(s.saved) == 1 })
	waitMetric(t, reg, "levy_local_unsaved_seconds", func(v float64) bool { return v == 0 })
}

// levy_local_unsaved_seconds counts a change as unsaved until the commit
// that holds it is durable, and is 0 after.
func TestLocalUnsavedAgeCoversTheCommitInFlight(t *testing.T) {
	store := newCommitStore()
	store.gate = make(chan struct{})
	reg := prometheus.NewRegistry()
	l := openLocal(t, limiter.LocalConfig{Counters: store, Registerer: reg})
	decide(t, l, quota)
	start := time.Now()
	// The loop takes the change and waits at the gate: unsaved all along.
	for time.Since(start) < 20*time.Millisecond {
		if v := metric(t, reg, "levy_local_unsaved_seconds"); v <= 0 {
			t.Fatalf("unsaved %v s while the commit is held", v)
		}
	}
	close(store.gate)
	waitMetric(t, reg, "levy_local_unsaved_seconds", func(v float64) bool { return v == 0 })
	if n := metric(t, reg, "levy_local_loss_window_seconds"); n != 1 {
		t.Fatalf("%v loss windows observed, want 1", n)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if sum(store.saved) != 1 {
		t.Fatalf("saved %v", store.saved)
	}
}

// Once levy_local_unsaved_seconds reads 0, every change made before is in
// the store, however requests and commits interleaved: the property the
// SIGKILL test in test/e2e relies on.
func TestLocalUnsavedZeroMeansEverythingIsStored(t *testing.T) {
	store := newCommitStore()
	reg := prometheus.NewRegistry()
	l := openLocal(t, limiter.LocalConfig{Counters: store, FlushEvery: 100 * time.Microsecond, Registerer: reg})
	const workers, each = 8, 500
	for round := 1; round <= 3; round++ {
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					decide(t, l, quota, ledger)
				}
			}()
		}
		wg.Wait()
		waitMetric(t, reg, "levy_local_unsaved_seconds", func(v float64) bool { return v == 0 })
		store.mu.Lock()
		got, want := sum(store.saved), int64(round*workers*each)
		var units int64
		for _, e := range store.ledger {
			units += e.Units
		}
		store.mu.Unlock()
		if got != want || units != want {
			t.Fatalf("round %d: unsaved is 0 with %d counted and %d ledger units stored, want %d", round, got, units, want)
		}
	}
}

// metric is the value of a gauge or counter, or the sample count of a
// histogram, on reg.
func metric(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	m := find(t, reg, name)
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	default:
		return float64(m.GetHistogram().GetSampleCount())
	}
}

// metricSum is the sum of a histogram on reg.
func metricSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return find(t, reg, name).GetHistogram().GetSampleSum()
}

func find(t testing.TB, reg *prometheus.Registry, name string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0]
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func waitMetric(t *testing.T, reg *prometheus.Registry, name string, cond func(float64) bool) {
	t.Helper()
	await.NoError(t, 10*time.Second, func() error {
		if v := metric(t, reg, name); !cond(v) {
			return fmt.Errorf("%s is %v", name, v)
		}
		return nil
	}, name)
}
