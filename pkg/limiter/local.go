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
			if max(tat, -tat) <= now.UnixMicro() {
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
// token arithmetic cannot overflow and both stores agree.
const MaxCost = 1 << 40

// maxAhead bounds, in microseconds (2^51, about 71 years), how far beyond
// now a bucket's state may lie: a bucket's time to fill, and its debt on
// top of that. maxCount bounds a quota's count (2^52). Both keep every
// number of decide.lua exact (Lua's numbers are doubles, exact to 2^53)
// and Go's far from overflow, whatever debits pile up.
const (
	maxAhead = 1 << 51
	maxCount = 1 << 52
)

// ErrBadLimit is returned for a limit that cannot be evaluated.
var ErrBadLimit = errors.New("bad limit")

// Decide implements Limiter.
func (l *Local) Decide(ctx context.Context, limits []Limit) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{}, err
	}
	debits := false
	for i := range limits {
		if err := validLimit(&limits[i]); err != nil {
			return Decision{}, err
		}
		debits = debits || limits[i].Debit
	}
	// Microseconds, as the Redis store counts: both decide alike.
	now := l.clock()
	now = now.Add(-time.Duration(now.Nanosecond() % 1000))
	d := Decision{Now: now, Statuses: make([]Status, len(limits))}

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

	var stateBuf [4]limitState
	var states []limitState
	if len(limits) <= len(stateBuf) {
		states = stateBuf[:len(limits)]
	} else {
		states = make([]limitState, len(limits))
	}
	r := request{limits: limits, states: states, statuses: d.Statuses, now: now, debits: debits}
	// Debits first: they are spent already, so the request's checks see
	// them; then the others, in order. Without debits, in one pass.
	for i := range limits {
		l.load(&limits[i], &l.shards[idx[i]], now, &r.states[i])
		if !debits {
			r.eval(i, limits[i].Cost, r.prior(i))
		}
	}
	if debits {
		for i := range limits {
			if limits[i].Debit {
				r.eval(i, limits[i].Cost, r.prior(i))
			}
		}
		for i := range limits {
			if !limits[i].Debit {
				r.eval(i, limits[i].Cost, r.prior(i))
			}
		}
	}
	d.Denied = deniedBy(limits, d.Statuses)
	d.OK = d.Denied < 0
	if !d.OK {
		// Only debits are taken: report what the other limits have left.
		for i := range limits {
			if !limits[i].Debit && d.Statuses[i].OK {
				r.eval(i, 0, r.base(i))
			}
		}
	}
	// Write what was taken, in the order evaluated: the last write of a
	// state is what the request leaves.
	persisted := false
	for _, debit := range [2]bool{true, false} {
		if debit && !debits {
			continue
		}
		for i := range limits {
			lim := &limits[i]
			if lim.Debit != debit || lim.Cost == 0 || !lim.Debit && !(d.OK && d.Statuses[i].OK) {
				continue
			}
			st, sh := &states[i], &l.shards[idx[i]]
			switch lim.Kind {
			case Bucket:
				sh.buckets[lim.Key] = st.next
			case Quota:
				id := counterID{lim.Key, st.start}
				c, ok := sh.counters[id]
				if !ok {
					c = &Counter{End: st.period.End}
					sh.counters[id] = c
				}
				c.Value = st.next
				sh.dirty[id] = struct{}{}
				persisted = true
			case Ledger:
				id := counterID{lim.Key, st.start}
				e, ok := sh.ledger[id]
				if !ok {
					e = &LedgerEntry{Size: lim.WindowSize}
					sh.ledger[id] = e
				}
				e.Units += lim.Cost
				sh.ledgerDirty[id] = struct{}{}
				sh.ledgerSize[id.key] = e.Size
				persisted = true
			}
		}
	}
	if persisted {
		l.changed()
	}
	return d, nil
}

// limitState is one limit's state in a decision: a bucket's (signed)
// theoretical arrival time in microseconds, a quota's count or a ledger
// window's units, as stored and as the limit leaves it.
type limitState struct {
	period plan.Period // a quota's
	start  int64       // a quota's period or a ledger's window start, unix seconds
	stored int64
	next   int64
	takes  bool // the limit takes its cost if the request is allowed: it fits, or it is a debit
}

// load reads limit lim's stored state into st; sh is its shard, locked.
func (l *Local) load(lim *Limit, sh *shard, now time.Time, st *limitState) {
	switch lim.Kind {
	case Bucket:
		st.stored = sh.buckets[lim.Key]
	case Quota:
		p := plan.PeriodAt(now, lim.Unit, lim.Anchor)
		st.period, st.start = p, p.Start.Unix()
		if c, ok := sh.counters[counterID{lim.Key, st.start}]; ok {
			st.stored = c.Value
		}
	default:
		st.start = now.Truncate(lim.WindowSize).Unix()
		if e, ok := sh.ledger[counterID{lim.Key, st.start}]; ok {
			st.stored = e.Units
		}
	}
}

// request is a decision under way: its limits, their states and
// statuses.
type request struct {
	limits   []Limit
	states   []limitState
	statuses []Status
	now      time.Time
	debits   bool // any limit is a debit
}

// eval evaluates limit i, taking cost, against state cur: it sets the
// limit's status, and the state it leaves when it takes.
func (r *request) eval(i int, cost, cur int64) {
	lim, st, out := &r.limits[i], &r.states[i], &r.statuses[i]
	switch lim.Kind {
	case Bucket:
		*out, st.next = evalBucket(lim, cost, r.now.UnixMicro(), cur)
	case Quota:
		*out, st.next = evalQuota(lim, cost, cur, r.now, &st.period)
	default:
		st.next = cur + cost
		*out = Status{OK: true, Used: st.next, PeriodStart: time.Unix(st.start, 0).UTC(), Remaining: -1}
	}
	st.takes = out.OK || lim.Debit
}

// prior is the state limit i is evaluated against: what the last limit of
// the request before it (in the order evaluated: debits first) on the
// same state leaves, counting only limits that take; else the stored
// state. (Two limits of one request may share a bucket or a counter.)
func (r *request) prior(i int) int64 {
	if r.limits[i].Debit {
		return r.lastDebit(i, i)
	}
	for j := i - 1; j >= 0; j-- {
		if r.states[j].takes && r.same(i, j) && !r.limits[j].Debit {
			return r.states[j].next
		}
	}
	if !r.debits {
		return r.states[i].stored
	}
	return r.lastDebit(i, len(r.limits))
}

// base is the state limit i's checks start from: the stored state with
// the request's debits on it.
func (r *request) base(i int) int64 {
	if !r.debits {
		return r.states[i].stored
	}
	return r.lastDebit(i, len(r.limits))
}

// lastDebit is what the last debit before index end on limit i's state
// leaves, or the stored state.
func (r *request) lastDebit(i, end int) int64 {
	for j := end - 1; j >= 0; j-- {
		if r.limits[j].Debit && r.same(i, j) {
			return r.states[j].next
		}
	}
	return r.states[i].stored
}

// same reports whether limits i and j count on the same bucket, counter
// or window.
func (r *request) same(i, j int) bool {
	a, b := &r.limits[i], &r.limits[j]
	return a.Kind == b.Kind && a.Key == b.Key && r.states[i].start == r.states[j].start
}

// deniedBy is the index of the limit that denies a request whose limits
// said statuses, or -1 when it is allowed: the first limit that is over
// and enforced, where a quota-mode limit that is over denies only when
// every quota-mode limit of the request is over (and is then the first
// of them). Shadow limits, and ledgers, are no part of the quota-mode
// group: a shadow limit never changes a decision.
func deniedBy(limits []Limit, statuses []Status) int {
	denied, group, open := -1, -1, false // group: its first over; open: one of it is not
	for i := range limits {
		l := &limits[i]
		switch {
		case statuses[i].OK:
			open = open || inQuotaGroup(l)
		case l.Shadow:
		case !inQuotaGroup(l):
			if denied < 0 {
				denied = i
			}
		case group < 0:
			group = i
		}
	}
	if group >= 0 && !open && (denied < 0 || group < denied) {
		return group
	}
	return denied
}

// inQuotaGroup reports whether l is one of the quota-mode limits that
// deny a request together.
func inQuotaGroup(l *Limit) bool { return l.QuotaMode && !l.Shadow && l.Kind != Ledger }

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
	case l.Kind == Bucket && l.Capacity() > maxAhead/bucketInterval(l):
		return fmt.Errorf("%w %q: a bucket that takes over %s to fill", ErrBadLimit, l.Name, time.Duration(maxAhead)*time.Microsecond)
	case l.Kind == Quota && l.Unit == "":
		return fmt.Errorf("%w %q: a quota needs a period", ErrBadLimit, l.Name)
	case l.Kind == Ledger && l.WindowSize < time.Second:
		return fmt.Errorf("%w %q: a ledger window is at least a second", ErrBadLimit, l.Name)
	}
	return nil
}

// bucketInterval is the microseconds between two tokens of bucket l (at
// least one: the stores count in microseconds).
func bucketInterval(l *Limit) int64 { return max(l.Per.Microseconds()/l.Requests, 1) }

// evalBucket applies GCRA, the exact form of a token bucket: a bucket of
// Capacity tokens refilled one token every Per/Requests. The state is the
// time at which the bucket would be full again (tat), in microseconds,
// stored negated while the bucket is in debt; it returns the limit's
// status, taking cost, and the state it leaves when it takes.
//
// A tat beyond now+tolerance is one of two things. Debt: a debit recorded
// past the limit; it is real, and repaid as time passes (bounded by
// maxAhead, so that arithmetic stays exact). Or state left by a larger
// bucket (the limit was lowered): that is treated as this bucket, empty,
// rather than denying for the old bucket's depth. The sign tells them
// apart, at the cost of nothing on the hot path: only a write that leaves
// the bucket beyond its tolerance, which only a debit can, stores it
// negated. (A bucket in debt whose limit is then lowered keeps the old
// depth until the debt is repaid.)
func evalBucket(l *Limit, cost, now, state int64) (Status, int64) {
	interval := bucketInterval(l)
	tolerance := interval * l.Capacity()
	tat, debt := state, state < 0
	if debt {
		tat = -tat
	}
	tat = max(tat, now)
	if !debt && tat-now > tolerance {
		tat = now + tolerance
	}
	ahead := tat - now
	// A check that takes nothing still needs a whole token.
	need := max(cost, 1)
	if ahead <= tolerance && need <= (tolerance-ahead)/interval {
		next := tat + cost*interval
		return Status{OK: true, Limit: l.Requests, Remaining: (tolerance - (next - now)) / interval, Reset: us(next - now)}, next
	}
	if !l.Debit || cost == 0 {
		retry := tolerance // more than the bucket ever holds: never passes
		if need <= l.Capacity() {
			retry = ahead + need*interval - tolerance
		}
		return Status{OK: false, Limit: l.Requests, Remaining: max(tolerance-ahead, 0) / interval, Reset: us(ahead), RetryAfter: us(retry)}, state
	}
	// A debit that does not fit is recorded all the same: the bucket goes
	// into debt, and the next token comes once it is repaid.
	next := now + maxAhead
	if cost <= (maxAhead-ahead)/interval {
		next = tat + cost*interval
	}
	st := Status{OK: false, Limit: l.Requests, Reset: us(next - now), RetryAfter: us(max(next-now+interval-tolerance, 0))}
	if next-now > tolerance {
		next = -next
	}
	return st, next
}

func us(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

// evalQuota decides quota l, taking cost, at count used in period p; it
// returns the limit's status and the count it leaves when it takes.
func evalQuota(l *Limit, cost, used int64, now time.Time, p *plan.Period) (Status, int64) {
	st := Status{Limit: displayLimit(l), Reset: p.End.Sub(now), PeriodStart: p.Start}
	bound := int64(-1) // none: a soft quota without a cap
	switch {
	case !l.Soft:
		bound = l.Max
	case l.Cap > 0:
		bound = l.Cap
	}
	after := min(used+cost, maxCount)
	switch {
	case bound < 0 || used+max(cost, 1) <= bound: // a check that takes nothing needs a unit left
		st.OK, st.Used, st.Remaining = true, after, bound-after
		if bound < 0 {
			st.Remaining = -1
		}
	case l.Debit && cost > 0: // recorded all the same: the counter goes past its limit
		st.Used, st.Remaining, st.RetryAfter = after, 0, st.Reset
	default:
		st.Used, st.Remaining, st.RetryAfter = used, max(bound-used, 0), st.Reset
		after = used
	}
	if l.Soft {
		st.Overage = max(st.Used-l.Max, 0)
	}
	return st, after
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
