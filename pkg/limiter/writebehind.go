package limiter

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Changes is one write-behind commit of the local limiter: the quota
// counters and ledger windows to write and to delete.
type Changes struct {
	Counters       map[string]Counter
	DeleteCounters []string
	Ledger         map[string]LedgerEntry
	DeleteLedger   []string
}

func (c *Changes) empty() bool {
	return len(c.Counters) == 0 && len(c.DeleteCounters) == 0 && len(c.Ledger) == 0 && len(c.DeleteLedger) == 0
}

// Committer is a CounterStore that writes counters and ledger windows in
// one transaction: one fsync a commit instead of two, and never one half
// on disk without the other. The local limiter uses it when its store has
// it.
type Committer interface {
	Commit(Changes) error
}

// DefaultCommitSpacing is the least time between the starts of two
// write-behind commits of the local limiter (LocalConfig.FlushEvery). A
// commit starts as soon as something changes, unless the previous one
// started less than this long ago, so a SIGKILL loses at most the changes
// of one spacing and one commit; under steady traffic the committer runs
// once a spacing, whatever the request rate.
//
// Chosen by measurement on the 2-core VM of test/bench, shared with other
// work: a bbolt commit of a consumer's counter and ledger window costs
// 0.2 ms of CPU when idle (BenchmarkCommit in pkg/localstore) and 0.4 to
// 1 ms under BenchmarkCheck's load, nearly all of it the kernel's, in
// bbolt's two fdatasyncs. Under that load, with 5 ms the benchmark made
// 110 to 150 commits a second, spent 8 to 12% more CPU per check than
// with the old 1 s ticker, and its loss window averaged 9 to 15 ms; with
// 10 ms, 58 to 76 commits a second, 0 to 6% more CPU per check, and 18 to
// 25 ms. 10 ms keeps the write-behind's cost within the benchmark's noise
// and caps fsyncs at 100 a second, well inside a cloud disk's IOPS budget.
const DefaultCommitSpacing = 10 * time.Millisecond

// pruneEvery is how often the local limiter forgets full buckets and
// expired counters: work over every key, too much for every commit.
const pruneEvery = time.Second

// unsaved tracks how long the oldest change not yet durable has waited:
// the figure a SIGKILL would lose. Marking is one atomic load on the
// request path once something is already waiting.
type unsaved struct {
	epoch time.Time    // monotonic origin of the times below
	first atomic.Int64 // when the first change since the last take was made, ns since epoch; 0: none

	mu       sync.Mutex // orders take and saved against age
	inflight int64      // the oldest change a commit has taken and not yet made durable; 0: none
}

func (u *unsaved) now() int64 { return int64(time.Since(u.epoch)) + 1 }

// mark records a change; true for the first since the last take, whose
// maker should wake the committer.
func (u *unsaved) mark() bool {
	if u.first.Load() != 0 {
		return false
	}
	return u.first.CompareAndSwap(0, u.now())
}

// take hands the changes marked so far to a commit about to collect them.
func (u *unsaved) take() {
	u.mu.Lock()
	if f := u.first.Swap(0); f != 0 && (u.inflight == 0 || f < u.inflight) {
		u.inflight = f
	}
	u.mu.Unlock()
}

// saved records that the taken changes are durable and returns how long
// the oldest of them waited (0 if none).
func (u *unsaved) saved() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	var waited time.Duration
	if u.inflight != 0 {
		waited = time.Duration(u.now() - u.inflight)
	}
	u.inflight = 0
	return waited
}

// age is how long the oldest change not yet durable has waited; 0 when
// every change is durable. It reads first under mu, so that a take cannot
// move a change from first to inflight between the two reads.
func (u *unsaved) age() time.Duration {
	u.mu.Lock()
	oldest := u.inflight
	if f := u.first.Load(); f != 0 && (oldest == 0 || f < oldest) {
		oldest = f
	}
	u.mu.Unlock()
	if oldest == 0 {
		return 0
	}
	return time.Duration(u.now() - oldest)
}

// commitMetrics are the write-behind collectors; a nil one records
// nothing.
type commitMetrics struct {
	duration prometheus.Histogram
	window   prometheus.Histogram
	failures prometheus.Counter
}

// commitBuckets are fine from 1 to 50 ms, where commits and loss windows
// fall on a local disk.
var commitBuckets = []float64{.0005, .001, .0015, .002, .003, .004, .005, .006, .008, .01, .012, .015, .02,
	.025, .03, .04, .05, .075, .1, .25, .5, 1, 2}

func newCommitMetrics(reg prometheus.Registerer, u *unsaved) (*commitMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &commitMetrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "levy_local_commit_duration_seconds",
			Help:    "Time to write one write-behind commit of the local store (one fsynced transaction).",
			Buckets: commitBuckets,
		}),
		window: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "levy_local_loss_window_seconds",
			Help: "Per commit of the local store, how long its oldest change had been only in memory " +
				"when the commit became durable: what a SIGKILL at the worst moment would have lost.",
			Buckets: commitBuckets,
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "levy_local_commit_failures_total",
			Help: "Write-behind commits of the local store that failed (retried with backoff).",
		}),
	}
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "levy_local_unsaved_seconds",
		Help: "Age of the oldest change of the local store not yet durable; 0 when everything is on disk.",
	}, func() float64 { return u.age().Seconds() })
	for _, c := range []prometheus.Collector{m.duration, m.window, m.failures, age} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *commitMetrics) observe(took, waited time.Duration, err error) {
	if m == nil {
		return
	}
	m.duration.Observe(took.Seconds())
	if err != nil {
		m.failures.Inc()
		return
	}
	m.window.Observe(waited.Seconds())
}
