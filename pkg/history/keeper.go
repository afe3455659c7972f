package history

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/usage"
)

// WindowReader reads a consumer's ledger windows (usage.Ledger's
// Windows): the roll-up's only source for billed and refunded units.
type WindowReader interface {
	Windows(ctx context.Context, consumer string, from, to time.Time) ([]usage.Window, error)
}

// ConsumerLister lists the consumers with a ledger window that starts in
// [from, to) (both stores' ledgers): a Keeper that starts rolls up their
// recent hours, which the replica that stopped may not have.
type ConsumerLister interface {
	Consumers(ctx context.Context, from, to time.Time) ([]string, error)
}

// Config configures a Keeper.
type Config struct {
	Store  Store
	Ledger WindowReader
	// Consumers, when set, finds whom to catch up on at start.
	Consumers ConsumerLister
	Retention Retention
	// Every is how often counts are flushed and touched hours rolled up
	// (usage.history.every; default 15s).
	Every time.Duration
	// Grace is how long after an hour ends it is still rolled up at each
	// pass, for access logs that arrive late (default 15m). A settlement
	// later than that touches its hour again.
	Grace time.Duration
	// Period is the start of consumer's billing period at at
	// (consumerlimits.Period), what its Activity counts denials in; nil,
	// or a zero answer for a consumer it does not know, means the
	// calendar month in UTC.
	Period func(consumer string, at time.Time) time.Time
	// Clock is the time; nil means time.Now.
	Clock func() time.Time
	Log   *zap.Logger
}

// Keeper flushes the decision counts and rolls up the ledger into the
// history store. One per replica; replicas may roll up the same hours.
type Keeper struct {
	cfg Config
	rec *Recorder

	mu sync.Mutex
	// touched are the (consumer, hour) whose windows may have changed:
	// rolled up at every pass until a pass after the hour's end + Grace.
	touched map[hourKey]struct{}
	// pending are counts a flush could not write; the next one retries.
	pending []Counts
	pruned  time.Time
}

type hourKey struct {
	consumer string
	hour     int64 // unix seconds
}

// New returns a keeper; Run runs it.
func New(cfg Config) *Keeper {
	if cfg.Every <= 0 {
		cfg.Every = 15 * time.Second
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 15 * time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Retention == (Retention{}) {
		cfg.Retention = DefaultRetention
	}
	return &Keeper{cfg: cfg, rec: NewRecorder(), touched: map[hourKey]struct{}{}}
}

// Recorder is what ext_authz counts its decisions in.
func (k *Keeper) Recorder() *Recorder { return k.rec }

// maxAge is the oldest hour a roll-up reads windows for: the ledger keeps
// accounted windows 35 days, and an hour whose windows are gone keeps the
// roll-up it had.
const maxAge = 30 * 24 * time.Hour

// Touch marks consumer's hour that holds at as changed in the ledger.
func (k *Keeper) Touch(consumer string, at time.Time) {
	h := Hour.Floor(at)
	if consumer == "" || h.Before(k.cfg.Clock().Add(-maxAge)) {
		return
	}
	k.mu.Lock()
	k.touched[hourKey{consumer, h.Unix()}] = struct{}{}
	k.mu.Unlock()
}

// Run flushes and rolls up every cfg.Every until ctx ends, then once more
// (the final flush of the counts, not cancelled with ctx). It catches up
// first on the recent hours of the consumers the ledger lists.
func (k *Keeper) Run(ctx context.Context) {
	k.catchUp(ctx)
	t := time.NewTicker(k.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			k.pass(final)
			return
		case <-t.C:
			k.pass(ctx)
		}
	}
}

func (k *Keeper) pass(ctx context.Context) {
	if err := k.Flush(ctx); err != nil {
		k.cfg.Log.Warn("flush usage history counts; kept for the next pass", zap.Error(err))
	}
	if _, err := k.RollUp(ctx); err != nil {
		k.cfg.Log.Warn("roll up usage history; the hours stay to roll up", zap.Error(err))
	}
	if p, ok := k.cfg.Store.(Pruner); ok {
		now := k.cfg.Clock()
		if now.Sub(k.pruned) >= time.Hour {
			if err := p.Prune(ctx, now); err != nil {
				k.cfg.Log.Warn("prune usage history", zap.Error(err))
			} else {
				k.pruned = now
			}
		}
	}
}

// catchUp touches the hours of the last Grace and an hour of every
// consumer with ledger windows in them.
func (k *Keeper) catchUp(ctx context.Context) {
	if k.cfg.Consumers == nil {
		return
	}
	now := k.cfg.Clock()
	from := Hour.Floor(now.Add(-k.cfg.Grace - time.Hour))
	cs, err := k.cfg.Consumers.Consumers(ctx, from, now.Add(time.Hour))
	if err != nil {
		k.cfg.Log.Warn("list consumers to catch up the usage history on", zap.Error(err))
		return
	}
	for _, c := range cs {
		for h := from; !h.After(now); h = h.Add(time.Hour) {
			k.Touch(c, h)
		}
	}
}

// maxPending bounds the counts kept across failed flushes.
const maxPending = 100_000

// Flush writes the decision counts since the last flush (and those a
// failed flush kept) to the store, and touches the hours that had allows.
// Counts are added: a flush whose reply is lost after the store applied
// it is retried, and counted twice (denial and per-key counts only; the
// billed units are rolled up from the ledger).
func (k *Keeper) Flush(ctx context.Context) error {
	cs := k.rec.drain(k.cfg.Clock())
	// A consumer's counts of one flush (a key and an hour each) mostly
	// share their Seen: its period is looked up once (levy serve's is a
	// directory and plan lookup).
	type seenBy struct {
		consumer string
		seen     time.Time
	}
	periods := map[seenBy]time.Time{}
	for i := range cs {
		c := &cs[i]
		if c.Allowed > 0 {
			k.Touch(c.Consumer, c.Hour)
		}
		at := seenBy{c.Consumer, c.Seen}
		p, ok := periods[at]
		if !ok {
			p = k.period(c.Consumer, c.Seen)
			periods[at] = p
		}
		c.Period = p
	}
	k.mu.Lock()
	cs = append(k.pending, cs...)
	k.pending = nil
	k.mu.Unlock()
	if len(cs) == 0 {
		return nil
	}
	if err := k.cfg.Store.AddCounts(ctx, cs); err != nil {
		// Tried again: all of them, unless the store says which it did
		// not add (the rest added again would be counted twice).
		var partial *PartialError
		if errors.As(err, &partial) {
			cs = partial.Failed
		}
		k.mu.Lock()
		if len(k.pending)+len(cs) <= maxPending {
			k.pending = append(k.pending, cs...)
		}
		k.mu.Unlock()
		return fmt.Errorf("history counts: %w", err)
	}
	return nil
}

// period is the start of consumer's billing period at at.
func (k *Keeper) period(consumer string, at time.Time) time.Time {
	if k.cfg.Period != nil {
		if p := k.cfg.Period(consumer, at); !p.IsZero() {
			return p.UTC()
		}
	}
	at = at.UTC()
	return time.Date(at.Year(), at.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// RollUpStats says what a roll-up did.
type RollUpStats struct {
	Hours, Days, Windows int
}

// RollUp sets the billed and refunded units of every touched hour to its
// ledger windows' sums, then each of their days to its hours' sums: one
// store write for all the hours and one for all the days (locally, two
// fsyncs a pass). An hour whose windows are all gone (pruned) keeps what
// it had. An hour is forgotten once a pass after its end + Grace rolled
// it up.
func (k *Keeper) RollUp(ctx context.Context) (RollUpStats, error) {
	now := k.cfg.Clock()
	k.mu.Lock()
	byConsumer := map[string][]int64{}
	for hk := range k.touched {
		byConsumer[hk.consumer] = append(byConsumer[hk.consumer], hk.hour)
	}
	k.mu.Unlock()

	var st RollUpStats
	var errs []error
	var hours []Usage
	type day struct {
		consumer string
		start    int64
	}
	days := map[day]struct{}{}
	done := map[string][]int64{} // the hours read, by consumer
	for _, consumer := range sortedKeys(byConsumer) {
		hs := byConsumer[consumer]
		slices.Sort(hs)
		us, w, err := k.hourSums(ctx, consumer, hs)
		st.Windows += w
		if err != nil {
			errs = append(errs, fmt.Errorf("consumer %s: %w", consumer, err))
			continue
		}
		st.Hours += len(hs)
		done[consumer] = hs
		for _, u := range us {
			days[day{consumer, Day.Floor(u.Start).Unix()}] = struct{}{}
		}
		hours = append(hours, us...)
	}
	if err := k.cfg.Store.SetUsage(ctx, hours); err != nil {
		return st, errors.Join(append(errs, err)...)
	}
	// Each day is its hours' sum: the hours hold what the ledger had
	// before pruning, so a day computed from them survives it too.
	var ds []Usage
	for d := range days {
		start := time.Unix(d.start, 0).UTC()
		bs, err := k.cfg.Store.Buckets(ctx, d.consumer, Hour, start, start.Add(24*time.Hour))
		if err != nil {
			return st, errors.Join(append(errs, err)...)
		}
		u := Usage{Consumer: d.consumer, Step: Day, Start: start}
		for _, b := range bs {
			u.Billed += b.Billed
			u.Refunded += b.Refunded
		}
		ds = append(ds, u)
	}
	if err := k.cfg.Store.SetUsage(ctx, ds); err != nil {
		return st, errors.Join(append(errs, err)...)
	}
	st.Days = len(ds)
	k.mu.Lock()
	for consumer, hs := range done {
		for _, h := range hs {
			if !time.Unix(h, 0).Add(time.Hour + k.cfg.Grace).After(now) {
				delete(k.touched, hourKey{consumer, h})
			}
		}
	}
	k.mu.Unlock()
	return st, errors.Join(errs...)
}

// hourSums reads consumer's windows of hours (sorted), once a run of
// consecutive hours, and sums them by hour; hours without windows are
// left out.
func (k *Keeper) hourSums(ctx context.Context, consumer string, hours []int64) (us []Usage, windows int, err error) {
	for i := 0; i < len(hours); {
		j := i + 1
		for j < len(hours) && hours[j] == hours[j-1]+3600 {
			j++
		}
		from, to := time.Unix(hours[i], 0).UTC(), time.Unix(hours[j-1]+3600, 0).UTC()
		ws, err := k.cfg.Ledger.Windows(ctx, consumer, from, to)
		if err != nil {
			return nil, windows, err
		}
		windows += len(ws)
		sums := map[int64]*Usage{}
		for _, w := range ws {
			h := Hour.Floor(w.Start)
			u := sums[h.Unix()]
			if u == nil {
				u = &Usage{Consumer: consumer, Step: Hour, Start: h}
				sums[h.Unix()] = u
			}
			u.Billed += w.Units
			u.Refunded += w.Refunded
		}
		for _, h := range hours[i:j] {
			if u := sums[h]; u != nil { // no windows: pruned, or none yet
				us = append(us, *u)
			}
		}
		i = j
	}
	return us, windows, nil
}

func sortedKeys[K string | int64, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TrackLedger is ledger with its settlements touching their hours in k,
// so that a late access log's refund reaches the history: the access-log
// receiver gets it in place of the ledger.
func TrackLedger(ledger usage.Ledger, k *Keeper) usage.Ledger {
	return trackedLedger{ledger, k}
}

type trackedLedger struct {
	usage.Ledger
	k *Keeper
}

func (t trackedLedger) Adjust(ctx context.Context, adjs []usage.Adjustment) error {
	err := t.Ledger.Adjust(ctx, adjs)
	for i := range adjs {
		a := &adjs[i]
		consumer := a.Consumer
		if c, _, ok := usage.ParseLedgerKey(a.LedgerKeyOf()); ok {
			consumer = c
		}
		at := a.Start
		if at.IsZero() {
			at = a.At
		}
		t.k.Touch(consumer, at)
	}
	return err
}
