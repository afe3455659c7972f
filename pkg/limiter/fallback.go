package limiter

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// FallbackConfig configures a Fallback.
type FallbackConfig struct {
	Primary Store
	// Local decides while Primary cannot (in memory; no counter store).
	Local *Local
	// Share is how many replicas split the limits while the store is away
	// (each enforces its share of every bucket).
	Share func() int
	// ReconcileEvery is how often usage counted during an outage is
	// pushed to Primary (default 1s).
	ReconcileEvery time.Duration
	// OnError observes every Primary failure (metrics).
	OnError func(error)
	// Ledger takes the usage ledger units counted during an outage.
	Ledger LedgerAdder
	Log    *zap.Logger
}

// Store is what a Fallback needs of its primary store: decisions, reads
// it passes on, and additions to reconcile what it counted during an
// outage (Local.Peek and Local.Add say what they do).
type Store interface {
	Limiter
	Peek(ctx context.Context, limits []Limit) (Reading, error)
	Add(ctx context.Context, limits []Limit) error
}

// LedgerAdder adds units to a ledger window, creating it. A call with a
// token that was applied before changes nothing: a retry after a lost
// answer adds the units once.
type LedgerAdder interface {
	AddUnits(ctx context.Context, key string, start time.Time, size time.Duration, units int64, token string) error
}

// Fallback keeps protecting when the shared store is unreachable
// (on_store_error: allow): each replica enforces its share of every rate
// on its own, quotas are counted locally without being enforced (no replica
// knows the others' counts), and the usage so counted is added to the
// store once it is back, so none is lost.
type Fallback struct {
	cfg     FallbackConfig
	mu      sync.Mutex
	owed    map[owedKey]int64 // quota units to add to Primary, by period
	ledger  map[owedWindow][]owedUnits
	stop    chan struct{}
	done    chan struct{}
	stopped sync.Once
}

type owedKey struct {
	key    string
	unit   plan.Unit
	anchor time.Time
	start  int64 // the period the units were counted in
}

type owedWindow struct {
	key   string
	start int64
	size  time.Duration
}

// owedUnits are units owed to a ledger window; token names the attempt
// that tried to add them ("" before the first), so that a retry adds them
// once.
type owedUnits struct {
	units int64
	token string
}

var _ Store = (*Fallback)(nil)

// NewFallback starts the reconcile loop; Close stops it after a last try.
func NewFallback(cfg FallbackConfig) *Fallback {
	if cfg.ReconcileEvery <= 0 {
		cfg.ReconcileEvery = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	f := &Fallback{cfg: cfg, owed: map[owedKey]int64{}, ledger: map[owedWindow][]owedUnits{}, stop: make(chan struct{}), done: make(chan struct{})}
	go f.loop()
	return f
}

// Decide implements Limiter.
func (f *Fallback) Decide(ctx context.Context, limits []Limit) (Decision, error) {
	d, err := f.cfg.Primary.Decide(ctx, limits)
	if err == nil {
		return d, nil
	}
	if f.cfg.OnError != nil {
		f.cfg.OnError(err)
	}
	// A debit is owed only when the store certainly never saw the call:
	// one that reached it recorded the debit (or reports it unknown).
	oweDebits := unsent(err)
	d, err = f.cfg.Local.Decide(ctx, f.local(limits))
	if err != nil {
		return d, err
	}
	f.owe(limits, d.Now, d.OK, oweDebits)
	return d, nil
}

// Peek implements Peek (Local.Peek says what it reads) on the primary
// store, or while it cannot answer, on the local one: what this replica
// counted during the outage, its share of the rates.
func (f *Fallback) Peek(ctx context.Context, limits []Limit) (Reading, error) {
	r, err := f.cfg.Primary.Peek(ctx, limits)
	if err == nil {
		return r, nil
	}
	if f.cfg.OnError != nil {
		f.cfg.OnError(err)
	}
	return f.cfg.Local.Peek(ctx, f.local(limits))
}

// Add implements Add (Local.Add says what it adds) on the primary store,
// or while it cannot answer, on the local one, and owes the units to the
// store as a decision does.
func (f *Fallback) Add(ctx context.Context, limits []Limit) error {
	err := f.cfg.Primary.Add(ctx, limits)
	if err == nil {
		return nil
	}
	if f.cfg.OnError != nil {
		f.cfg.OnError(err)
	}
	oweDebits := unsent(err)
	added, err := additions(limits)
	if err != nil {
		return err
	}
	d, err := f.cfg.Local.Decide(ctx, f.local(added))
	if err != nil {
		return err
	}
	f.owe(added, d.Now, d.OK, oweDebits)
	return nil
}

// local is limits as the local store decides them during an outage: each
// bucket this replica's share of the rate, quotas counted without being
// enforced (no replica knows the others' counts).
func (f *Fallback) local(limits []Limit) []Limit {
	n := int64(1)
	if f.cfg.Share != nil {
		n = int64(max(f.cfg.Share(), 1))
	}
	local := make([]Limit, len(limits))
	for i, l := range limits {
		if l.Kind == Bucket {
			l.Requests, l.Burst = max(l.Requests/n, 1), max(l.Capacity()/n, 1)
		} else {
			l.Soft, l.Max, l.Cap = true, 0, 0 // count, do not enforce
		}
		local[i] = l
	}
	return local
}

// owe records what the local store's decision of limits at now took for
// quotas and ledgers (all of them when allowed, only debits when a
// bucket denied) as owed to the store; debits only with oweDebits.
func (f *Fallback) owe(limits []Limit, now time.Time, allowed, oweDebits bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range limits {
		switch {
		case l.Cost <= 0 || !allowed && !l.Debit || l.Debit && !oweDebits:
		case l.Kind == Quota:
			start := plan.PeriodAt(now, l.Unit, l.Anchor).Start.Unix()
			f.owed[owedKey{l.Key, l.Unit, l.Anchor, start}] += l.Cost
		case l.Kind == Ledger:
			w := owedWindow{l.Key, usage.WindowAt(now, l.WindowSize).Unix(), l.WindowSize}
			us := f.ledger[w]
			if n := len(us); n > 0 && us[n-1].token == "" {
				us[n-1].units += l.Cost
			} else {
				us = append(us, owedUnits{units: l.Cost})
			}
			f.ledger[w] = us
		}
	}
}

func (f *Fallback) loop() {
	defer close(f.done)
	t := time.NewTicker(f.cfg.ReconcileEvery)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			f.Reconcile(context.Background())
		}
	}
}

// Reconcile adds the usage counted during an outage to the store: ledger
// units to their windows (so they are billed), quota units to their
// counters when the period is still the current one (an ended period's
// quota no longer limits anyone); what fails stays owed.
func (f *Fallback) Reconcile(ctx context.Context) {
	f.mu.Lock()
	owed, ledger := f.owed, f.ledger
	f.owed, f.ledger = map[owedKey]int64{}, map[owedWindow][]owedUnits{}
	f.mu.Unlock()
	if len(owed) == 0 && len(ledger) == 0 {
		return
	}
	var failed []error
	for w, us := range ledger {
		if f.cfg.Ledger == nil {
			break
		}
		for _, u := range us {
			if u.token == "" {
				u.token = uuid.NewString()
			}
			if err := f.cfg.Ledger.AddUnits(ctx, w.key, time.Unix(w.start, 0).UTC(), w.size, u.units, u.token); err != nil {
				// Kept with its token: the store may have added it and
				// lost the answer.
				f.mu.Lock()
				f.ledger[w] = append(f.ledger[w], u)
				f.mu.Unlock()
				failed = append(failed, err)
			}
		}
	}
	for k, units := range owed {
		if plan.PeriodAt(time.Now(), k.unit, k.anchor).Start.Unix() != k.start {
			continue // that period ended: its quota limits no one any more
		}
		add := Limit{Kind: Quota, Name: "reconcile", Key: k.key, Cost: units, Unit: k.unit, Anchor: k.anchor}
		if err := f.cfg.Primary.Add(ctx, []Limit{add}); err != nil {
			f.mu.Lock()
			f.owed[k] += units
			f.mu.Unlock()
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		f.cfg.Log.Warn("reconcile usage counted during the store outage; will retry", zap.Error(failed[0]), zap.Int("failed", len(failed)))
		return
	}
	f.cfg.Log.Info("usage counted during the store outage reconciled", zap.Int("counters", len(owed)), zap.Int("ledger_windows", len(ledger)))
}

// Owed reports how many counters still wait to be reconciled.
func (f *Fallback) Owed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.owed) + len(f.ledger)
}

// Close stops reconciling after one last attempt.
func (f *Fallback) Close() error {
	f.stopped.Do(func() {
		close(f.stop)
		<-f.done
		f.Reconcile(context.Background())
	})
	return nil
}
