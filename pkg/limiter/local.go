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
	"github.com/levyhq/levy/pkg/usage"
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
// transaction; one that is also a CounterReader lets idle counters leave
// memory.
type CounterStore interface {
	LoadCounters() (map[string]Counter, error)
	SaveCounters(set map[string]Counter, del []string) error
	LoadLedger() (map[string]LedgerEntry, error)
	SaveLedger(set map[string]LedgerEntry, del []string) error
}

// CounterReader is a CounterStore that reads one counter at a time. The
// local limiter then loads no counter at start, reads a counter when a
// decision needs it, and drops from memory the counters that are saved
// and idle (LocalConfig.CounterIdle): memory holds the counters in use,
// not every address that ever called (issue item 15: a million per-address
// day counters took 1.8 GB).
type CounterReader interface {
	CounterStore
	// ReadCounter reads one counter; false when there is none.
	ReadCounter(key string) (Counter, bool, error)
	// DeleteEndedCounters looks at up to max counters, going on from
	// the stored position from ("" is the start), and deletes those that
	// ended before t; it returns where to go on next, "" at the end.
	DeleteEndedCounters(before time.Time, from string, max int) (next string, err error)
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
	// CounterIdle is how long a quota counter that is saved stays in
	// memory after its last change or read from the store (default
	// DefaultCounterIdle), when Counters is a CounterReader; a decision
	// on a counter no longer in memory reads it back. Without a
	// CounterReader every counter of a current period stays in memory.
	CounterIdle time.Duration
	// MaxCounters is how many quota counters memory holds before saved
	// ones leave it without waiting to be idle (default
	// DefaultMaxCounters), with a CounterReader: a burst of new keys costs
	// reads from the file instead of memory. Counters not yet saved stay
	// whatever their number.
	MaxCounters int
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
	reader CounterReader // store, when it reads one counter at a time
	idle   time.Duration
	// shardCap is MaxCounters for one shard: over it, a commit's pass
	// drops every saved counter of the shard.
	shardCap int
	log      *zap.Logger
	seed     maphash.Seed
	shards   [shardCount]shard

	flushMu sync.Mutex // serialises flushes; held, every counter not dirty is on disk
	sweep   sweep      // the deletion of ended counters from the store, with a reader
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
	counters    map[counterID]counter
	dirty       []counterID // the counters marked dirty since the last commit took them (each once)
	ledger      map[counterID]*LedgerEntry
	ledgerDirty map[counterID]struct{}
	ledgerSize  map[string]time.Duration // ledger key -> its latest window size
}

// counter is a quota counter as the local limiter keeps it in memory:
// by value in its shard's map, 24 bytes beside its 24-byte counterID and
// the key's text, which the map's other counters of the same key do not
// share. (A *Counter was 8 bytes in the map, 32 on the heap, and a second
// map entry while dirty.)
type counter struct {
	value   int64
	end     int64  // unix nanoseconds: when the period ends
	touched uint32 // unix seconds: the last change, or read from the store
	dirty   bool   // changed and not yet taken by a commit; in shard.dirty
}

// DefaultCounterIdle is how long a saved quota counter stays in memory
// after its last change, with a CounterReader (LocalConfig.CounterIdle):
// long enough that a client calling every few seconds never waits for a
// read from the file, short enough that a burst of a million new
// addresses leaves memory within a minute or two of being saved.
const DefaultCounterIdle = time.Minute

// DefaultMaxCounters is LocalConfig.MaxCounters' default: about 16 MB
// of counters (measured: 161 MB of heap for 1M, BenchmarkLocalMemory).
const DefaultMaxCounters = 100_000

// stamp is t as counter.touched.
func stamp(t time.Time) uint32 { return uint32(min(max(t.Unix(), 0), 1<<32-1)) }

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
	l := &Local{clock: cfg.Clock, store: cfg.Counters, idle: cfg.CounterIdle, log: cfg.Log, seed: maphash.MakeSeed(),
		unsaved: unsaved{epoch: time.Now()}, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	if l.clock == nil {
		l.clock = time.Now
	}
	if l.idle <= 0 {
		l.idle = DefaultCounterIdle
	}
	if cfg.MaxCounters <= 0 {
		cfg.MaxCounters = DefaultMaxCounters
	}
	l.shardCap = max(cfg.MaxCounters/shardCount, 1)
	l.reader, _ = cfg.Counters.(CounterReader)
	if l.log == nil {
		l.log = zap.NewNop()
	}
	for i := range l.shards {
		l.shards[i] = shard{buckets: map[string]int64{}, counters: map[counterID]counter{},
			ledger: map[counterID]*LedgerEntry{}, ledgerDirty: map[counterID]struct{}{}, ledgerSize: map[string]time.Duration{}}
	}
	if l.store != nil && l.reader == nil {
		loaded, err := l.store.LoadCounters()
		if err != nil {
			return nil, fmt.Errorf("load quota counters: %w", err)
		}
		touched := stamp(l.clock())
		for k, c := range loaded {
			id, ok := parseCounterID(k)
			if !ok {
				l.log.Warn("skip a malformed counter", zap.String("counter", k))
				continue
			}
			l.shardFor(id.key).counters[id] = counter{value: c.Value, end: c.End.UnixNano(), touched: touched}
		}
	}
	if l.store != nil {
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
			l.sweepEnded()
			expire = true
		case <-l.wake:
		}
		start := time.Now()
		_, err := l.commit(expire)
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
// days (Stripe takes no older usage), and with a CounterReader drops
// saved idle counters from memory.
func (l *Local) Flush() error {
	for {
		left, err := l.commit(true)
		if err != nil || !left {
			return err
		}
	}
}

// maxCommitCounters bounds the counters one commit writes. A burst of new
// keys (a million client addresses on a day quota) is written in commits
// of this many, so the commit's own copy of them (its Changes, bbolt's
// nodes) stays a few MB instead of hundreds; the rest stay dirty for the
// next commit, which the loop starts at once. Random keys touch about as
// many bbolt pages per key in small commits as in large ones, but the file
// must hold the tree plus one commit's rewritten pages, and its mapping
// counts as RSS. Measured with BenchmarkLocalMemory (1M addresses, shared
// 2-core VM, runs of one build side by side): 20,000 a commit: file 187
// MB, RSS after eviction 213-242 MB, the burst saved in 10-12 s; 10,000:
// 163-166 MB, 201-221 MB, 12-25 s; 5,000: 142 MB, 191-200 MB, 18-22 s.
// (With 10,000, later runs gave 158-196 MB, 194-232 MB, 7-10 s.)
const maxCommitCounters = 10_000

// commit persists changed counters (at most maxCommitCounters; left says
// some are still to write) and ledger windows, in one transaction when
// the store is a Committer; with expire, it also forgets what Flush says,
// which takes a pass over every counter in memory.
func (l *Local) commit(expire bool) (left bool, err error) {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	if l.store == nil {
		return false, nil
	}
	l.unsaved.take() // before collecting: a change after this marks anew
	now := l.clock()
	expired, ledgerExpired := now.Add(-24*time.Hour).UnixNano(), now.Add(-35*24*time.Hour).Unix()
	idleBefore := stamp(now.Add(-l.idle))
	ch := Changes{Counters: map[string]Counter{}, Ledger: map[string]LedgerEntry{}}
	var written, ledgerWritten []counterID
	budget := maxCommitCounters
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		if expire {
			// Before the dirty ones are taken: a counter not dirty now is
			// on disk (flushMu is held: no commit is in flight), so it may
			// leave memory.
			before := len(s.counters)
			over := before > l.shardCap
			for id, c := range s.counters {
				switch {
				case c.end < expired:
					delete(s.counters, id)
					ch.DeleteCounters = append(ch.DeleteCounters, id.String())
				case l.reader != nil && !c.dirty && (over || c.touched <= idleBefore):
					delete(s.counters, id)
				}
			}
			s.counters = shrunk(s.counters, before)
			for id, e := range s.ledger {
				if e.Exported && !e.due() && id.start < ledgerExpired {
					delete(s.ledger, id)
					ch.DeleteLedger = append(ch.DeleteLedger, id.String())
				}
			}
		}
		n := 0
		for ; n < len(s.dirty) && budget > 0; n++ {
			id := s.dirty[n]
			c, ok := s.counters[id]
			if !ok || !c.dirty {
				continue // expired, or listed twice
			}
			c.dirty = false
			s.counters[id] = c
			ch.Counters[id.String()] = Counter{Value: c.value, End: time.Unix(0, c.end).UTC()}
			written = append(written, id)
			budget--
		}
		if n == len(s.dirty) {
			s.dirty = s.dirty[:0]
			if cap(s.dirty) > 1024 {
				s.dirty = nil // a burst's list does not stay allocated
			}
		} else {
			s.dirty = s.dirty[n:]
			left = true
		}
		for id := range s.ledgerDirty {
			ch.Ledger[id.String()] = *s.ledger[id]
			ledgerWritten = append(ledgerWritten, id)
		}
		clear(s.ledgerDirty)
		s.mu.Unlock()
	}
	if left {
		l.changed() // the loop commits the rest next
	}
	if ch.empty() {
		l.unsaved.saved()
		return left, nil
	}
	start := time.Now()
	err = l.save(&ch, written, ledgerWritten)
	var waited time.Duration
	if err == nil {
		waited = l.unsaved.saved()
	}
	l.metrics.observe(time.Since(start), waited, err)
	return left, err
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
		before := len(s.buckets)
		for k, tat := range s.buckets {
			if max(tat, -tat) <= now.UnixMicro() {
				delete(s.buckets, k)
			}
		}
		s.buckets = shrunk(s.buckets, before)
		if l.store == nil {
			before := len(s.counters)
			for id, c := range s.counters {
				if c.end < expired.UnixNano() {
					delete(s.counters, id)
				}
			}
			s.counters = shrunk(s.counters, before)
		}
		s.mu.Unlock()
	}
}

// sweep is where the deletion of ended counters from a CounterReader
// stands; only the loop touches it. Counters in memory expire in commit,
// but with a reader most counters are only on disk.
type sweep struct {
	from    string    // the stored position to go on from
	running bool      // a pass is under way
	last    time.Time // when the last pass started, by the limiter's clock
}

const (
	sweepEvery = time.Hour // a counter ended over a day ago lingers on disk at most this much longer
	sweepBatch = 10_000    // counters a prune tick looks at: a few ms of reading, one short write transaction
)

// sweepEnded deletes, a batch a prune tick, the counters on disk whose
// period ended over a day ago; a pass starts once a sweepEvery.
func (l *Local) sweepEnded() {
	if l.reader == nil {
		return
	}
	now := l.clock()
	sw := &l.sweep
	if !sw.running {
		if !sw.last.IsZero() && now.Sub(sw.last) < sweepEvery && !now.Before(sw.last) {
			return
		}
		sw.running, sw.from, sw.last = true, "", now
	}
	next, err := l.reader.DeleteEndedCounters(now.Add(-24*time.Hour), sw.from, sweepBatch)
	if err != nil {
		l.log.Error("delete ended quota counters", zap.Error(err))
		return // the next tick tries again from the same place
	}
	sw.from, sw.running = next, next != ""
}

// shrunk returns m, or a copy of it when deletions took it below a quarter
// of the had entries it had: a Go map keeps the table of its largest size,
// and a burst of a million addresses would otherwise hold ~60 MB of empty
// table after they left.
func shrunk[K comparable, V any](m map[K]V, had int) map[K]V {
	if had < 4096 || len(m) >= had/4 {
		return m
	}
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
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
		} else if c, ok := s.counters[id]; !ledger && ok && !c.dirty {
			c.dirty = true
			s.counters[id] = c
			s.dirty = append(s.dirty, id)
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

// Decide implements Limiter: it locks the shards of the request's
// limits, reads their states, evaluates the request and writes what it
// took.
func (l *Local) Decide(ctx context.Context, limits []Limit) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{}, err
	}
	debits, err := validRequest(limits)
	if err != nil {
		return Decision{}, err
	}
	now := l.now()
	d := Decision{Now: now, Statuses: make([]Status, len(limits))}

	// Each limit's shard, and the shards to lock, sorted: on the stack
	// for the usual few limits.
	var idxBuf, lockedBuf [4]int
	idx, locked := idxBuf[:0], lockedBuf[:0]
	for i := range limits {
		idx = append(idx, l.shardIndex(limits[i].Key))
	}
	locked = append(locked, idx...)
	sort.Ints(locked)
	l.lockShards(locked)
	defer l.unlockShards(locked)

	var stateBuf [4]limitState
	var states []limitState
	if len(limits) <= len(stateBuf) {
		states = stateBuf[:len(limits)]
	} else {
		states = make([]limitState, len(limits))
	}
	r := request{limits: limits, states: states, statuses: d.Statuses, now: now, debits: debits}
	if err := l.loadStates(limits, states, idx, now); err != nil {
		return Decision{}, err
	}
	d.Denied = r.evaluate()
	d.OK = d.Denied < 0
	if l.recordTaken(limits, states, idx, &r, d.OK) {
		l.changed()
	}
	return d, nil
}

// validRequest checks every limit of a request (validLimit), and reports
// whether any of them is a debit.
func validRequest(limits []Limit) (debits bool, err error) {
	for i := range limits {
		if err := validLimit(&limits[i]); err != nil {
			return false, err
		}
		debits = debits || limits[i].Debit
	}
	return debits, nil
}

// now is the clock to the microsecond, as the Redis store counts: both
// decide alike.
func (l *Local) now() time.Time {
	now := l.clock()
	return now.Add(-time.Duration(now.Nanosecond() % 1000))
}

// lockShards locks shards, sorted (a shard may repeat), in index order,
// so that two decisions never wait for each other.
func (l *Local) lockShards(sorted []int) {
	last := -1
	for _, s := range sorted {
		if s != last {
			l.shards[s].mu.Lock()
			last = s
		}
	}
}

// unlockShards unlocks what lockShards locked.
func (l *Local) unlockShards(locked []int) {
	last := -1
	for _, s := range locked {
		if s != last {
			l.shards[s].mu.Unlock()
			last = s
		}
	}
}

// loadStates reads every limit's stored state into states; idx are
// their shards, locked.
func (l *Local) loadStates(limits []Limit, states []limitState, idx []int, now time.Time) error {
	for i := range limits {
		if err := l.load(&limits[i], &l.shards[idx[i]], now, &states[i]); err != nil {
			return err
		}
	}
	return nil
}

// evaluate evaluates every limit of the request: debits first (they are
// spent already, so the request's checks see them), then the others, in
// order; without debits, in one pass. It returns the index of the limit
// that denies (deniedBy), -1 when none does; when one does, the other
// limits report what they have left, since only debits are taken.
func (r *request) evaluate() int {
	for i := range r.limits {
		if !r.debits || r.limits[i].Debit {
			r.eval(i, r.limits[i].Cost, r.prior(i))
		}
	}
	if r.debits {
		for i := range r.limits {
			if !r.limits[i].Debit {
				r.eval(i, r.limits[i].Cost, r.prior(i))
			}
		}
	}
	denied := deniedBy(r.limits, r.statuses)
	if denied >= 0 {
		for i := range r.limits {
			if !r.limits[i].Debit && r.statuses[i].OK {
				r.eval(i, 0, r.base(i))
			}
		}
	}
	return denied
}

// recordTaken writes what request r took (its debits, and when it is
// allowed, its limits that are within), in the order evaluated: the last
// write of a state is what the request leaves. limits and states are r's
// (passed on their own: the limits' keys go into the shards' maps, and
// so must not take r with them to the heap); idx are their shards,
// locked. It reports whether a counter or a ledger window changed, for
// the write-behind.
func (l *Local) recordTaken(limits []Limit, states []limitState, idx []int, r *request, allowed bool) (persisted bool) {
	for _, debit := range [2]bool{true, false} {
		if debit && !r.debits {
			continue
		}
		for i := range limits {
			lim := &limits[i]
			// A ledger window opens even at no cost, as in decide.lua.
			if lim.Debit != debit || lim.Cost == 0 && lim.Kind != Ledger || !lim.Debit && !(allowed && r.statuses[i].OK) {
				continue
			}
			if l.write(lim, &states[i], &l.shards[idx[i]], r.now) {
				persisted = true
			}
		}
	}
	return persisted
}

// write sets limit lim's state to what it took, st.next (a ledger window
// adds its cost, opening the window); sh is its shard, locked. It
// reports whether a counter or a ledger window changed.
func (l *Local) write(lim *Limit, st *limitState, sh *shard, now time.Time) bool {
	switch lim.Kind {
	case Bucket:
		sh.buckets[lim.Key] = st.next
		return false
	case Quota:
		l.setCounter(sh, counterID{lim.Key, st.start}, st.next, st.period.End, now)
		return true
	default:
		id := counterID{lim.Key, st.start}
		e, ok := sh.ledger[id]
		if !ok {
			e = &LedgerEntry{Size: lim.WindowSize}
			sh.ledger[id] = e
		}
		e.Units += lim.Cost
		sh.ledgerDirty[id] = struct{}{}
		sh.ledgerSize[id.key] = e.Size
		return true
	}
}

// counter finds a quota counter, reading it from the store when it left
// memory (with a CounterReader); sh.mu is held. The read is a bbolt read
// transaction under the shard's lock: 1.3 to 1.8 µs (BenchmarkReadCounter in
// pkg/localstore), paid by a counter's first decision after it went idle,
// and by every decision on a key the store does not have. A counter the
// store does not have is zero and stays out of memory until it is set.
//
// Reading before taking the lock and putting the counter in after was
// measured too: it kept the read out of the lock, but needed the period
// (plan.PeriodAt) twice and a second map lookup for every quota of every
// decision, 10 to 20% of BenchmarkLocalDecide, to save microseconds that
// only the first decision on an idle key pays.
func (l *Local) counter(sh *shard, id counterID, now time.Time) (counter, error) {
	c, ok := sh.counters[id]
	if ok || l.reader == nil {
		return c, nil
	}
	stored, found, err := l.reader.ReadCounter(id.String())
	if err != nil {
		return counter{}, fmt.Errorf("read quota counter: %w", err)
	}
	if !found {
		return counter{}, nil
	}
	c = counter{value: stored.Value, end: stored.End.UnixNano(), touched: stamp(now)}
	sh.counters[id] = c
	return c, nil
}

// setCounter sets a quota counter's value (creating it with end) and marks
// it for the write-behind; sh.mu is held.
func (l *Local) setCounter(sh *shard, id counterID, value int64, end, now time.Time) {
	c, ok := sh.counters[id]
	if !ok {
		c.end = end.UnixNano()
	}
	c.value, c.touched = value, stamp(now)
	if l.store != nil && !c.dirty {
		c.dirty = true
		sh.dirty = append(sh.dirty, id)
	}
	sh.counters[id] = c
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
func (l *Local) load(lim *Limit, sh *shard, now time.Time, st *limitState) error {
	switch lim.Kind {
	case Bucket:
		st.stored = sh.buckets[lim.Key]
	case Quota:
		p := plan.PeriodAt(now, lim.Unit, lim.Anchor)
		st.period, st.start = p, p.Start.Unix()
		c, err := l.counter(sh, counterID{lim.Key, st.start}, now)
		if err != nil {
			return err
		}
		st.stored = c.value
	default:
		st.start = usage.WindowAt(now, lim.WindowSize).Unix()
		if e, ok := sh.ledger[counterID{lim.Key, st.start}]; ok {
			st.stored = e.Units
		}
	}
	return nil
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

// validLimit checks l, and makes a shadow limit no debit: a shadow limit
// that is over takes nothing, or a trial of a debit rule in shadow mode
// would leave debt that denies as soon as shadow mode is off.
func validLimit(l *Limit) error {
	if l.Shadow {
		l.Debit = false
	}
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
	bound := quotaBound(l)
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
func (l *Local) Buckets() int { return l.sum(func(s *shard) int { return len(s.buckets) }) }

// Counters counts the quota counters held in memory.
func (l *Local) Counters() int { return l.sum(func(s *shard) int { return len(s.counters) }) }

// sum adds up n over the shards, each locked in turn.
func (l *Local) sum(n func(*shard) int) int {
	total := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		total += n(s)
		s.mu.Unlock()
	}
	return total
}
