package limiter

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/plan"
)

// Counter is a persisted quota counter: its value and when its period ends.
type Counter struct {
	Value int64
	End   time.Time
}

// LedgerEntry is one usage ledger window as the local store keeps it; the
// fields are usage.Window's.
type LedgerEntry struct {
	Units    int64
	Size     time.Duration
	Exported bool

	Refunded, Reported int64  `json:",omitempty"`
	Accounted          int64  `json:",omitempty"`
	Billed             int64  `json:",omitempty"`
	Events             int    `json:",omitempty"`
	LastValue          int64  `json:",omitempty"`
	LastSent           int64  `json:",omitempty"` // unix seconds
	Pending            int64  `json:",omitempty"`
	Rejected           string `json:",omitempty"`
}

// CounterStore persists quota counters and the usage ledger for the local
// limiter. A store that is also a Committer writes both in one
// transaction.
type CounterStore interface {
	LoadCounters() (map[string]Counter, error)
	SaveCounters(set map[string]Counter, del []string) error
	LoadLedger() (map[string]LedgerEntry, error)
	SaveLedger(set map[string]LedgerEntry, del []string) error
}

// LocalConfig configures a Local limiter.
type LocalConfig struct {
	// Clock is the time source; nil means time.Now.
	Clock func() time.Time
	// Counters persists quota counters; nil keeps them in memory only.
	Counters CounterStore
	// FlushEvery is the least time between the starts of two write-behind
	// commits (default DefaultCommitSpacing). A change is committed as soon
	// as the previous commit allows: a crash loses at most the changes of
	// the last FlushEvery and of the commit in flight.
	FlushEvery time.Duration
	// PruneEvery is how often full buckets and expired counters are
	// forgotten (default 1s).
	PruneEvery time.Duration
	// Registerer, when set with Counters, gets the write-behind metrics:
	// commit durations, the loss window, the age of unsaved changes.
	Registerer prometheus.Registerer
	Log        *zap.Logger
}

const shardCount = 64

// Local is the in-process limiter: token buckets in memory, quota counters
// and ledger windows in memory and written behind to a CounterStore, never
// synchronously per request. The write-behind is a group commit: the first
// change after a commit wakes the committer, which writes every change made
// meanwhile in one transaction.
type Local struct {
	clock  func() time.Time
	store  CounterStore
	log    *zap.Logger
	seed   maphash.Seed
	shards [shardCount]shard

	flushMu sync.Mutex // serialises flushes
	unsaved unsaved
	wake    chan struct{} // 1-buffered: something is waiting for a commit
	metrics *commitMetrics
	stop    chan struct{}
	done    chan struct{}
	closed  sync.Once
}

type shard struct {
	mu          sync.Mutex
	buckets     map[string]int64 // theoretical arrival time, unix nanos
	counters    map[counterID]*Counter
	dirty       map[counterID]struct{}
	ledger      map[counterID]*LedgerEntry
	ledgerDirty map[counterID]struct{}
	ledgerSize  map[string]time.Duration // ledger key -> its latest window size
}

// counterID names a quota counter: the limit's key and its period start.
type counterID struct {
	key   string
	start int64 // unix seconds
}

// String is the counter's name in the CounterStore.
func (c counterID) String() string { return c.key + ":" + strconv.FormatInt(c.start, 10) }

func parseCounterID(s string) (counterID, bool) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return counterID{}, false
	}
	start, err := strconv.ParseInt(s[i+1:], 10, 64)
	return counterID{s[:i], start}, err == nil
}

var _ Limiter = (*Local)(nil)

// NewLocal loads persisted counters and starts the write-behind loop; Close
// stops it and writes what is left.
func NewLocal(cfg LocalConfig) (*Local, error) {
	l := &Local{clock: cfg.Clock, store: cfg.Counters, log: cfg.Log, seed: maphash.MakeSeed(),
		unsaved: unsaved{epoch: time.Now()}, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	if l.clock == nil {
		l.clock = time.Now
	}
	if l.log == nil {
		l.log = zap.NewNop()
	}
	for i := range l.shards {
		l.shards[i] = shard{buckets: map[string]int64{}, counters: map[counterID]*Counter{}, dirty: map[counterID]struct{}{},
			ledger: map[counterID]*LedgerEntry{}, ledgerDirty: map[counterID]struct{}{}, ledgerSize: map[string]time.Duration{}}
	}
	if l.store != nil {
		loaded, err := l.store.LoadCounters()
		if err != nil {
			return nil, fmt.Errorf("load quota counters: %w", err)
		}
		for k, c := range loaded {
			id, ok := parseCounterID(k)
			if !ok {
				l.log.Warn("skip a malformed counter", zap.String("counter", k))
				continue
			}
			c := c
			l.shardFor(id.key).counters[id] = &c
		}
		ledger, err := l.store.LoadLedger()
		if err != nil {
			return nil, fmt.Errorf("load usage ledger: %w", err)
		}
		for k, e := range ledger {
			id, ok := parseCounterID(k)
			if !ok {
				l.log.Warn("skip a malformed ledger window", zap.String("window", k))
				continue
			}
			e := e
			if e.Exported && e.Accounted == 0 && e.Events == 0 && e.Billed == 0 {
				// Written before levy kept Accounted: it was exported as
				// it stands.
				e.Accounted = e.Units
			}
			sh := l.shardFor(id.key)
			sh.ledger[id] = &e
			sh.ledgerSize[id.key] = e.Size
		}
	}
	if l.store != nil {
		m, err := newCommitMetrics(cfg.Registerer, &l.unsaved)
		if err != nil {
			return nil, fmt.Errorf("register local store metrics: %w", err)
		}
		l.metrics = m
	}
	spacing, pruning := cfg.FlushEvery, cfg.PruneEvery
	if spacing <= 0 {
		spacing = DefaultCommitSpacing
	}
	if pruning <= 0 {
		pruning = pruneEvery
	}
	go l.loop(spacing, pruning)
	return l, nil
}

// changed tells the committer that a counter or ledger window changed; the
// caller has made the change. Cheap enough for every request: an atomic
// load, and for the first change after a commit a non-blocking send.
func (l *Local) changed() {
	if l.store != nil && l.unsaved.mark() {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// loop commits as soon as something changed, at most one commit start per
// spacing; after a failure it waits a backoff (spacing doubling to a
// second) before the next try. Every pruning it forgets full buckets and
// expired counters.
func (l *Local) loop(spacing, pruning time.Duration) {
	defer close(l.done)
	prune := time.NewTicker(pruning)
	defer prune.Stop()
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	var backoff time.Duration
	for {
		expire := false
		select {
		case <-l.stop:
			return
		case <-prune.C:
			l.prune()
			expire = true
		case <-l.wake:
		}
		start := time.Now()
		err := l.commit(expire)
		wait := spacing - time.Since(start)
		if err != nil {
			l.log.Error("persist quota counters and usage", zap.Error(err))
			backoff = min(max(2*backoff, spacing), time.Second)
			wait = backoff
			l.changed() // retry: the changes are dirty again
		} else {
			backoff = 0
		}
		if wait <= 0 {
			continue
		}
		hold.Reset(wait)
		select {
		case <-l.stop:
			return
		case <-hold.C:
		}
	}
}

// Close stops the write-behind loop and persists every changed counter.
func (l *Local) Close() error {
	var err error
	l.closed.Do(func() {
		close(l.stop)
		<-l.done
		err = l.Flush()
	})
	return err
}

// Flush persists changed counters and ledger windows, forgets counters
// whose period ended over a day ago and exported windows older than 35
// days (Stripe takes no older usage).
func (l *Local) Flush() error { return l.commit(true) }

// commit persists changed counters and ledger windows, in one transaction
// when the store is a Committer; with expire, it also forgets what Flush
// says, which takes a pass over every counter.
func (l *Local) commit(expire bool) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	if l.store == nil {
		return nil
	}
	l.unsaved.take() // before collecting: a change after this marks anew
	now := l.clock()
	expired, ledgerExpired := now.Add(-24*time.Hour), now.Add(-35*24*time.Hour).Unix()
	ch := Changes{Counters: map[string]Counter{}, Ledger: map[string]LedgerEntry{}}
	var written, ledgerWritten []counterID
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for id := range s.dirty {
			ch.Counters[id.String()] = *s.counters[id]
			written = append(written, id)
		}
		for id := range s.ledgerDirty {
			ch.Ledger[id.String()] = *s.ledger[id]
			ledgerWritten = append(ledgerWritten, id)
		}
		if expire {
			for id, c := range s.counters {
				if c.End.Before(expired) {
					delete(s.counters, id)
					ch.DeleteCounters = append(ch.DeleteCounters, id.String())
				}
			}
			for id, e := range s.ledger {
				if e.Exported && !e.due() && id.start < ledgerExpired {
					delete(s.ledger, id)
					ch.DeleteLedger = append(ch.DeleteLedger, id.String())
				}
			}
		}
		clear(s.dirty)
		clear(s.ledgerDirty)
		s.mu.Unlock()
	}
	if ch.empty() {
		l.unsaved.saved()
		return nil
	}
	start := time.Now()
	err := l.save(&ch, written, ledgerWritten)
	var waited time.Duration
	if err == nil {
		waited = l.unsaved.saved()
	}
	l.metrics.observe(time.Since(start), waited, err)
	return err
}

// save writes ch, and marks what it failed to write dirty again.
func (l *Local) save(ch *Changes, written, ledgerWritten []counterID) error {
	if c, ok := l.store.(Committer); ok {
		err := c.Commit(*ch)
		if err != nil {
			l.redirty(written, false)
			l.redirty(ledgerWritten, true)
		}
		return err
	}
	var errs []error
	if len(ch.Counters) > 0 || len(ch.DeleteCounters) > 0 {
		if err := l.store.SaveCounters(ch.Counters, ch.DeleteCounters); err != nil {
			errs = append(errs, err)
			l.redirty(written, false)
		}
	}
	if len(ch.Ledger) > 0 || len(ch.DeleteLedger) > 0 {
		if err := l.store.SaveLedger(ch.Ledger, ch.DeleteLedger); err != nil {
			errs = append(errs, err)
			l.redirty(ledgerWritten, true)
		}
	}
	return errors.Join(errs...)
}

// prune forgets full buckets (a bucket that is full is the same as one
// never used), so per-address or per-descriptor buckets do not pile up;
// without a counter store it also forgets ended periods' counters.
func (l *Local) prune() {
	now := l.clock()
	expired := now.Add(-24 * time.Hour)
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for k, tat := range s.buckets {
			if tat <= now.UnixNano() {
				delete(s.buckets, k)
			}
		}
		if l.store == nil {
			for id, c := range s.counters {
				if c.End.Before(expired) {
					delete(s.counters, id)
				}
			}
		}
		s.mu.Unlock()
	}
}

// markLedgerDirty records that a ledger window changed, for the next
// commit; sh.mu is held.
func (l *Local) markLedgerDirty(sh *shard, id counterID) {
	sh.ledgerDirty[id] = struct{}{}
	l.changed()
}

// redirty marks ids dirty again so that the next flush retries them.
func (l *Local) redirty(ids []counterID, ledger bool) {
	for _, id := range ids {
		s := l.shardFor(id.key)
		s.mu.Lock()
		if _, ok := s.ledger[id]; ledger && ok {
			s.ledgerDirty[id] = struct{}{}
		} else if _, ok := s.counters[id]; !ledger && ok {
			s.dirty[id] = struct{}{}
		}
		s.mu.Unlock()
	}
}

// shardFor picks a shard by the key's hash tag ("{...}"), so all limits
// of one consumer share a shard and a decision usually takes one lock.
func (l *Local) shardFor(key string) *shard {
	return &l.shards[l.shardIndex(key)]
}

func (l *Local) shardIndex(key string) int {
	return int(maphash.String(l.seed, hashTag(key)) % shardCount)
}

// hashTag returns the part of key Redis Cluster would hash: the text
// between the first '{' and the next '}', when non-empty.
func hashTag(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						return key[i+1 : j]
					}
					return key
				}
			}
			return key
		}
	}
	return key
}

// MaxCost bounds a request's cost and a limit's size (2^40), so that
// token arithmetic in nanoseconds cannot overflow and both stores agree.
const MaxCost = 1 << 40

// ErrBadLimit is returned for a limit that cannot be evaluated.
var ErrBadLimit = errors.New("bad limit")

// Decide implements Limiter.
func (l *Local) Decide(ctx context.Context, limits []Limit) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{}, err
	}
	for i := range limits {
		if err := validLimit(&limits[i]); err != nil {
			return Decision{}, err
		}
	}
	now := l.clock()
	d := Decision{OK: true, Denied: -1, Now: now, Statuses: make([]Status, len(limits))}

	// Lock every shard the request touches, in index order.
	var idxBuf, sortedBuf [4]int
	idx, shards := idxBuf[:0], sortedBuf[:0]
	for i := range limits {
		idx = append(idx, l.shardIndex(limits[i].Key))
	}
	shards = append(shards, idx...)
	sort.Ints(shards)
	last := -1
	for _, s := range shards {
		if s != last {
			l.shards[s].mu.Lock()
			last = s
		}
	}
	defer func() {
		last := -1
		for _, s := range shards {
			if s != last {
				l.shards[s].mu.Unlock()
				last = s
			}
		}
	}()

	// Pass 1: evaluate against current state plus what earlier limits of
	// this same request would take (two limits may share a key).
	var pendingBuf [4]pendingState
	var storedBuf [4]int64
	pending, stored := pendingBuf[:0], storedBuf[:0]
	for range limits {
		pending, stored = append(pending, pendingState{}), append(stored, 0)
	}
	for i := range limits {
		lim := &limits[i]
		sh := &l.shards[idx[i]]
		switch lim.Kind {
		case Bucket:
			tat, ok := sh.buckets[lim.Key]
			if !ok {
				tat = now.UnixNano()
			}
			stored[i] = tat
			tat = earlierPending(pending[:i], limits, Bucket, lim.Key, 0, tat)
			st, next := evalBucket(lim, now.UnixNano(), tat)
			d.Statuses[i], pending[i] = st, pendingState{val: next}
		case Quota:
			period := plan.PeriodAt(now, lim.Unit, lim.Anchor)
			id := counterID{lim.Key, period.Start.Unix()}
			var used int64
			if c, ok := sh.counters[id]; ok {
				used = c.Value
			}
			stored[i] = used
			used = earlierPending(pending[:i], limits, Quota, lim.Key, id.start, used)
			st := evalQuota(lim, used, now, period)
			d.Statuses[i], pending[i] = st, pendingState{start: id.start, val: used + lim.Cost, end: period.End}
		case Ledger:
			start := now.Truncate(lim.WindowSize)
			var units int64
			if e, ok := sh.ledger[counterID{lim.Key, start.Unix()}]; ok {
				units = e.Units
			}
			d.Statuses[i] = Status{OK: true, Used: units + lim.Cost, PeriodStart: start, Remaining: -1}
			pending[i] = pendingState{start: start.Unix()}
		}
		if !d.Statuses[i].OK {
			if lim.Shadow {
				pending[i].skip = true
			} else if d.OK {
				d.OK, d.Denied = false, i
			}
		}
	}
	if !d.OK {
		// Nothing is taken: report what the other limits have left.
		for i := range limits {
			if i == d.Denied || !d.Statuses[i].OK {
				continue
			}
			peek := limits[i]
			peek.Cost = 0
			switch peek.Kind {
			case Ledger:
				d.Statuses[i].Used -= limits[i].Cost
			case Bucket:
				d.Statuses[i], _ = evalBucket(&peek, now.UnixNano(), stored[i])
			default:
				p := plan.PeriodAt(now, peek.Unit, peek.Anchor)
				d.Statuses[i] = evalQuota(&peek, stored[i], now, p)
			}
		}
		return d, nil
	}
	// Pass 2: every limit allowed; take the costs.
	persisted := false
	for i := range limits {
		p := pending[i]
		if p.skip {
			continue
		}
		sh := &l.shards[idx[i]]
		switch limits[i].Kind {
		case Bucket:
			sh.buckets[limits[i].Key] = p.val
		case Quota:
			if limits[i].Cost == 0 {
				continue
			}
			id := counterID{limits[i].Key, p.start}
			c, ok := sh.counters[id]
			if !ok {
				c = &Counter{End: p.end}
				sh.counters[id] = c
			}
			c.Value = p.val
			sh.dirty[id] = struct{}{}
			persisted = true
		case Ledger:
			id := counterID{limits[i].Key, p.start}
			e, ok := sh.ledger[id]
			if !ok {
				e = &LedgerEntry{Size: limits[i].WindowSize}
				sh.ledger[id] = e
			}
			e.Units += limits[i].Cost
			sh.ledgerDirty[id] = struct{}{}
			sh.ledgerSize[id.key] = e.Size
			persisted = true
		}
	}
	if persisted {
		l.changed()
	}
	return d, nil
}

type pendingState struct {
	start int64 // quota period start
	val   int64
	end   time.Time
	skip  bool // a shadow limit that is over: take nothing
}

// earlierPending returns the state an earlier limit of the same request
// left for the same bucket or counter, or cur when none touched it.
func earlierPending(pending []pendingState, limits []Limit, kind Kind, key string, start, cur int64) int64 {
	for j := len(pending) - 1; j >= 0; j-- {
		p := &pending[j]
		if !p.skip && limits[j].Kind == kind && limits[j].Key == key && (kind == Bucket || p.start == start) {
			return p.val
		}
	}
	return cur
}

func validLimit(l *Limit) error {
	switch {
	case l.Cost < 0:
		return fmt.Errorf("%w %q: negative cost", ErrBadLimit, l.Name)
	case l.Cost > MaxCost:
		return fmt.Errorf("%w %q: cost %d is over %d", ErrBadLimit, l.Name, l.Cost, int64(MaxCost))
	case l.Requests > MaxCost || l.Burst > MaxCost || l.Max > MaxCost || l.Cap > MaxCost:
		return fmt.Errorf("%w %q: a limit over %d", ErrBadLimit, l.Name, int64(MaxCost))
	case l.Kind == Bucket && (l.Requests <= 0 || l.Per <= 0):
		return fmt.Errorf("%w %q: a bucket needs requests > 0 and per > 0", ErrBadLimit, l.Name)
	case l.Kind == Quota && l.Unit == "":
		return fmt.Errorf("%w %q: a quota needs a period", ErrBadLimit, l.Name)
	case l.Kind == Ledger && l.WindowSize < time.Second:
		return fmt.Errorf("%w %q: a ledger window is at least a second", ErrBadLimit, l.Name)
	}
	return nil
}

// evalBucket applies GCRA, the exact form of a token bucket: a bucket of
// Capacity tokens refilled one token every Per/Requests. tat is the time
// at which the bucket would be full again.
func evalBucket(l *Limit, now, tat int64) (Status, int64) {
	interval := l.Per.Nanoseconds() / l.Requests
	if interval < 1 {
		interval = 1
	}
	tolerance := interval * l.Capacity()
	if tat < now {
		tat = now
	}
	if l.Cost > l.Capacity() {
		// More than the bucket ever holds: never passes (and cost*interval
		// could overflow).
		return Status{OK: false, Limit: l.Requests, Remaining: max((tolerance-(tat-now))/interval, 0),
			Reset: time.Duration(max(tat-now, 0)), RetryAfter: l.Per}, tat
	}
	// State left by a larger bucket (the limit was lowered): treat it as
	// this bucket, empty, rather than denying for the old bucket's depth.
	if tat > now+tolerance {
		tat = now + tolerance
	}
	next := tat + l.Cost*interval
	if next-now > tolerance {
		return Status{
			OK:         false,
			Limit:      l.Requests,
			Remaining:  (tolerance - (tat - now)) / interval,
			Reset:      time.Duration(tat - now),
			RetryAfter: time.Duration(next - now - tolerance),
		}, tat
	}
	return Status{
		OK:        true,
		Limit:     l.Requests,
		Remaining: (tolerance - (next - now)) / interval,
		Reset:     time.Duration(next - now),
	}, next
}

func evalQuota(l *Limit, used int64, now time.Time, p plan.Period) Status {
	st := Status{OK: true, Reset: p.End.Sub(now), PeriodStart: p.Start}
	after := used + l.Cost
	switch {
	case !l.Soft:
		st.Limit = l.Max
		if after > l.Max {
			st.OK, st.Remaining, st.RetryAfter, st.Used = false, max(l.Max-used, 0), st.Reset, used
			return st
		}
		st.Remaining = l.Max - after
	case l.Cap > 0:
		st.Limit = l.Cap
		if after > l.Cap {
			st.OK, st.Remaining, st.RetryAfter, st.Used = false, max(l.Cap-used, 0), st.Reset, used
			st.Overage = max(used-l.Max, 0)
			return st
		}
		st.Remaining = l.Cap - after
	default:
		st.Limit, st.Remaining = l.Max, -1
	}
	st.Used = after
	if l.Soft {
		st.Overage = max(after-l.Max, 0)
	}
	return st
}

// Buckets counts the buckets held in memory.
func (l *Local) Buckets() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.buckets)
		s.mu.Unlock()
	}
	return n
}
