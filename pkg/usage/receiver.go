package usage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/telemetry"
)

// Receiver defaults.
const (
	DefaultUnitsHeader    = "x-levy-units"
	DefaultConsumerHeader = "x-consumer-id"
	DefaultDedupTTL       = 10 * time.Minute
	DefaultDedupMax       = 1_000_000
	DefaultFlushEvery     = 100 * time.Millisecond
)

// ReceiverConfig configures a Receiver. Ledger and Catalog are required.
type ReceiverConfig struct {
	Ledger Ledger
	// Catalog returns the current plans; it is called once per batch, so
	// reloads take effect on the next batch.
	Catalog func() *plan.Catalog
	// UnitsHeader is the response header upstreams report a request's
	// units in; ConsumerHeader is the request header that names the
	// consumer when the ext_authz metadata does not. Both must be logged
	// by Envoy (additional_response_headers_to_log,
	// additional_request_headers_to_log). Defaults x-levy-units and
	// x-consumer-id.
	UnitsHeader, ConsumerHeader string
	// DedupTTL is how long a settled request is remembered (default 10m);
	// DedupMax bounds how many are (default 1,000,000).
	DedupTTL time.Duration
	DedupMax int
	// FlushEvery is how often adjustments, aggregated in memory, are
	// written to the ledger (default 100ms): what a crash of the process
	// can lose of settlements, and no more.
	FlushEvery time.Duration
	// MaxPendingRequests bounds the settled requests kept for the ledger
	// while it cannot be written (default 1,000,000, about 24 MB); past it,
	// units are kept without what de-duplicates them across replicas.
	MaxPendingRequests int
	// Metrics, if set, gets levy_access_log_entries_total,
	// levy_access_log_streams and levy_access_log_unmatched_total.
	Metrics *telemetry.Metrics
	Log     *zap.Logger
	// Clock is the time used to expire remembered requests; default
	// time.Now.
	Clock func() time.Time
}

// Receiver is levy's gRPC access-log service (ALS v3): it settles the usage
// ledger from Envoy's access logs. Envoy opens one stream per worker and
// never reads an answer, and entries are lost whenever a stream breaks, so
// settlement only corrects what admission counted (refunds, reported
// units) and never creates usage on its own. Adjustments are summed in
// memory per consumer, meter and second, and written every FlushEvery; a
// failed write is kept and retried. Settle is the policy; the Receiver
// applies it to the few fields it reads straight off the wire (wire.go).
type Receiver struct {
	accesslogv3.UnimplementedAccessLogServiceServer

	cfg     ReceiverConfig
	log     *zap.Logger
	dedup   *dedup
	metrics *receiverMetrics

	mu          sync.Mutex
	pending     map[aggKey]*agg
	pendingReqs int // requests in pending

	// unmatched counts, per key, the flushes that found no window for it;
	// maxUnmatchedTries is how many it gets. Only Flush uses them.
	unmatched         map[aggKey]int
	maxUnmatchedTries int

	flushMu sync.Mutex // one ledger write at a time

	// stop ends the flush loop (and cancels a write it is in); done is
	// closed once it has ended. wake tells the loop something is pending.
	loopCtx context.Context
	stop    context.CancelFunc
	done    chan struct{}
	wake    chan struct{}

	// draining ends open streams (Drain); readers counts the goroutines
	// still reading them.
	draining  chan struct{}
	drainOnce sync.Once
	readers   sync.WaitGroup
}

var _ accesslogv3.AccessLogServiceServer = (*Receiver)(nil)

// aggKey is what adjustments are summed by: the ledger key the request
// was counted under and its window start, when the access log says
// (known), else the request's start second, from which the ledger picks
// the window. key is always levy's own string, never one that points into
// a received message.
type aggKey struct {
	key   string
	start int64 // unix seconds
	known bool
	// quota: the requests were counted in the consumer's quota counter
	// (QuotaKey) in the period starting at period (unix seconds), which
	// settlement moves with the window.
	quota  bool
	period int64
}

// agg is the settlement of one aggKey: what was refunded and reported,
// and each request's part, for de-duplication across replicas.
type agg struct {
	refunded, reported int64
	reqs               []Settled
}

func (a *agg) add(s Settled) {
	if s.Units < 0 {
		a.refunded -= s.Units
	} else {
		a.reported += s.Units
	}
	a.reqs = append(a.reqs, s)
}

func (a *agg) merge(b *agg) {
	a.refunded += b.refunded
	a.reported += b.reported
	a.reqs = append(a.reqs, b.reqs...)
}

// NewReceiver returns a receiver and starts its flush loop; Close stops it.
func NewReceiver(cfg ReceiverConfig) *Receiver {
	if cfg.UnitsHeader == "" {
		cfg.UnitsHeader = DefaultUnitsHeader
	}
	if cfg.ConsumerHeader == "" {
		cfg.ConsumerHeader = DefaultConsumerHeader
	}
	cfg.UnitsHeader = strings.ToLower(cfg.UnitsHeader)
	cfg.ConsumerHeader = strings.ToLower(cfg.ConsumerHeader)
	if cfg.DedupTTL <= 0 {
		cfg.DedupTTL = DefaultDedupTTL
	}
	if cfg.DedupMax <= 0 {
		cfg.DedupMax = DefaultDedupMax
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = DefaultFlushEvery
	}
	if cfg.MaxPendingRequests <= 0 {
		cfg.MaxPendingRequests = 1_000_000
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Catalog == nil {
		cfg.Catalog = func() *plan.Catalog { return nil }
	}
	r := &Receiver{
		cfg:     cfg,
		log:     cfg.Log,
		dedup:   newDedup(cfg.DedupTTL, cfg.DedupMax, cfg.Clock()),
		metrics: newReceiverMetrics(cfg.Metrics, cfg.Log),
		pending: map[aggKey]*agg{},
		// Two minutes of flushes: the fallback adds the windows it counted
		// within seconds of the store's return.
		maxUnmatchedTries: max(int(2*time.Minute/cfg.FlushEvery), 3),
		done:              make(chan struct{}),
		draining:          make(chan struct{}),
		wake:              make(chan struct{}, 1),
	}
	r.loopCtx, r.stop = context.WithCancel(context.Background())
	go r.flushLoop()
	return r
}

// StreamAccessLogs implements accesslogv3.AccessLogServiceServer. It
// reads until the sender ends the stream, or until Drain. Envoy never
// reads an answer and resets its streams rather than half-closing them,
// but a sender that half-closes (any gRPC client that ends a client
// stream) gets the empty StreamAccessLogsResponse the protocol promises.
// Envoy keeps its streams open for ever, so a shutdown must end them
// (Envoy reconnects, to another replica) rather than wait for them.
func (r *Receiver) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	r.metrics.streamOpened()
	defer r.metrics.streamClosed()
	r.readers.Add(1)
	errc := make(chan error, 1)
	go func() {
		defer r.readers.Done()
		errc <- r.read(stream)
	}()
	select {
	case err := <-errc:
		if err != nil {
			return err
		}
		// Every message was settled; the reader is done with the stream.
		return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
	case <-r.draining:
		// Returning ends the stream; the reader's RecvMsg then fails and
		// it exits. Close waits for it before the final flush.
		return status.Error(codes.Unavailable, "levy is shutting down: reconnect")
	}
}

// Drain ends every open stream and refuses none: new streams started
// afterwards end at once.
func (r *Receiver) Drain() {
	r.drainOnce.Do(func() { close(r.draining) })
}

func (r *Receiver) read(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	ctx := stream.Context()
	msg := &wireMessage{r: r, b: newBatch()}
	for {
		// Decoding msg settles its entries into msg.b (wire.go).
		if err := stream.RecvMsg(msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			return err
		}
		if id := msg.identifier; id != nil {
			r.log.Debug("access log stream", zap.String("node", id.GetNode().GetId()),
				zap.String("cluster", id.GetNode().GetCluster()), zap.String("log_name", id.GetLogName()))
		}
		r.commit(msg.b)
	}
}

// batch sums one message's settled entries; they are merged into the
// receiver's pending adjustments under its lock once per message. A
// stream reuses its batch.
type batch struct {
	// index maps a key to its sums in aggs. Entries are only ever added
	// under a key levy owns and then changed through the index: assigning
	// to an existing string key would replace the stored key with the one
	// given, which may point into the message being decoded.
	index  map[aggKey]int
	aggs   []agg
	counts [numOutcomes]int
}

func newBatch() *batch { return &batch{index: map[aggKey]int{}} }

// settleFacts settles one entry into b.
func (r *Receiver) settleFacts(b *batch, f *facts, cat *plan.Catalog, now time.Time) {
	adj, out := f.settle(cat)
	startNanos := adj.At.UnixNano()
	if out == outSettled && f.requestID != "" && !r.dedup.firstSeen(r.dedup.key(f.requestID, startNanos), now) {
		out = outDuplicate
	}
	b.counts[out]++
	if out != outSettled {
		return
	}
	k := aggKey{start: adj.At.Unix()}
	if f.hasWindow && f.ledger != "" && keyspace.IsLedger(adj.Consumer, f.ledger) {
		// The window admission counted the request in (defect-free at
		// window edges: the store's clock picked it, not Envoy's).
		k.key, k.start, k.known = f.ledger, f.window, true
		if f.hasPeriod && keyspace.IsQuota(adj.Consumer, f.quota) {
			// The quota counter it was counted in, and that counter's
			// period: a settlement moves it with the window.
			k.quota, k.period = true, f.period
		}
	} else {
		k.key = LedgerKey(adj.Consumer, adj.Terms)
	}
	s := Settled{Units: adj.Units}
	if f.requestID != "" {
		s.ID = FingerprintOf(f.requestID, startNanos)
	}
	i, found := b.index[k]
	if !found {
		k.key = strings.Clone(k.key) // it may point into the message
		i = len(b.aggs)
		b.aggs = append(b.aggs, agg{})
		b.index[k] = i
	}
	b.aggs[i].add(s)
}

// commit moves a batch's sums into the pending adjustments and its counts
// into the metrics.
func (r *Receiver) commit(b *batch) {
	if len(b.aggs) > 0 {
		r.mu.Lock()
		idle := len(r.pending) == 0
		for k, i := range b.index {
			r.mergeLocked(k, &b.aggs[i])
		}
		r.mu.Unlock()
		if idle {
			r.wakeFlush()
		}
		clear(b.index)
		clear(b.aggs) // pending may hold their request slices now
		b.aggs = b.aggs[:0]
	}
	r.metrics.add(&b.counts)
	b.counts = [numOutcomes]int{}
}

// mergeLocked adds a to the pending adjustment of k, taking a's slices;
// r.mu is held. k must be a key levy owns. While the ledger cannot be
// written (a store outage), pending requests are bounded: past
// ReceiverConfig.MaxPendingRequests their units are kept without their
// fingerprints (applied, not de-duplicated across replicas).
func (r *Receiver) mergeLocked(k aggKey, a *agg) {
	if r.pendingReqs+len(a.reqs) > r.cfg.MaxPendingRequests && len(a.reqs) > 0 {
		a.reqs = []Settled{{Units: -a.refunded}, {Units: a.reported}}
	}
	r.pendingReqs += len(a.reqs)
	if p, ok := r.pending[k]; ok {
		p.merge(a)
		return
	}
	moved := *a
	r.pending[k] = &moved
}

// Flush writes the pending adjustments to the ledger now. If the ledger
// fails they stay pending, merged with what arrives meanwhile, for the
// next flush.
func (r *Receiver) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()

	r.mu.Lock()
	pending := r.pending
	if len(pending) == 0 {
		r.mu.Unlock()
		return nil
	}
	r.pending = make(map[aggKey]*agg, len(pending))
	r.pendingReqs = 0
	r.mu.Unlock()

	adjs := make([]Adjustment, 0, len(pending))
	for k, a := range pending {
		consumer, terms, _ := ParseLedgerKey(k.key)
		adj := Adjustment{Key: k.key, Consumer: consumer, Meter: terms.Meter, Terms: terms,
			At: time.Unix(k.start, 0).UTC(), Units: a.reported - a.refunded, Refunded: a.refunded, Reported: a.reported,
			Requests: a.reqs}
		if k.known {
			adj.Start = adj.At
		}
		if k.quota {
			adj.Quota, adj.QuotaStart = QuotaKey(consumer), time.Unix(k.period, 0).UTC()
		}
		adjs = append(adjs, adj)
	}
	// A stable order: stores that lock rows take them in the same order.
	slices.SortFunc(adjs, func(a, b Adjustment) int {
		return cmp.Or(strings.Compare(a.Key, b.Key), a.At.Compare(b.At), cmp.Compare(b.Start.Unix(), a.Start.Unix()),
			a.QuotaStart.Compare(b.QuotaStart))
	})
	var err error
	if r.cfg.Ledger == nil {
		err = errNoLedger
	} else {
		err = r.cfg.Ledger.Adjust(ctx, adjs)
	}
	if err == nil {
		r.unmatched = nil
		return nil
	}
	// Keep what was not applied (all of it, unless the ledger says which)
	// for the next flush: nothing lost, nothing applied twice. What found
	// no window is kept for a while too (a replica that admitted it while
	// the store was away adds the window when the store is back), then
	// dropped and counted.
	failed := adjs
	var unmatched []Adjustment
	var partial *PartialError
	if errors.As(err, &partial) {
		failed, unmatched = partial.Failed, partial.Unmatched
	}
	tries := make(map[aggKey]int, len(unmatched))
	dropped := 0
	r.mu.Lock()
	for _, a := range failed {
		r.mergeLocked(keyOf(&a), aggOf(&a))
	}
	for _, a := range unmatched {
		k := keyOf(&a)
		if n := r.unmatched[k] + 1; n < r.maxUnmatchedTries {
			tries[k] = n
			r.mergeLocked(k, aggOf(&a))
			continue
		}
		dropped += max(len(a.Requests), 1)
	}
	kept := len(r.pending) > 0
	r.mu.Unlock()
	if kept {
		r.wakeFlush() // retried on the loop's next tick, whoever flushed
	}
	r.unmatched = tries
	if dropped > 0 {
		r.metrics.addUnmatched(dropped)
		r.log.Warn("settlements for windows admission never counted, dropped", zap.Int("requests", dropped))
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("adjust usage (%d adjustments kept for the next flush): %w", len(failed), err)
}

func keyOf(a *Adjustment) aggKey {
	k := aggKey{key: a.Key, start: a.At.Unix(), known: !a.Start.IsZero()}
	if a.Quota != "" {
		k.quota, k.period = true, a.QuotaStart.Unix()
	}
	return k
}

func aggOf(a *Adjustment) *agg {
	return &agg{refunded: a.Refunded, reported: a.Reported, reqs: a.Requests}
}

var errNoLedger = errors.New("no ledger configured")

// Close ends the streams (Drain), waits for their readers, stops the
// flush loop and writes what is pending, even if ctx is already cancelled
// (a shutdown). Call it after the gRPC server stopped serving, so that
// nothing arrives after the final flush.
func (r *Receiver) Close(ctx context.Context) error {
	r.Drain()
	r.readers.Wait()
	r.stop()
	<-r.done
	return r.Flush(context.WithoutCancel(ctx))
}

// wakeFlush tells the flush loop that something is pending.
func (r *Receiver) wakeFlush() {
	select {
	case r.wake <- struct{}{}:
	default: // already told
	}
}

// flushLoop flushes every FlushEvery while anything is pending, and sleeps
// while nothing is: an idle replica's receiver wakes nobody (ten wake-ups
// a second were a fifth of an idle levy's CPU).
func (r *Receiver) flushLoop() {
	defer close(r.done)
	for {
		select {
		case <-r.loopCtx.Done():
			return
		case <-r.wake:
		}
		if !r.flushWhilePending() {
			return
		}
	}
}

// flushWhilePending flushes every FlushEvery until a flush leaves nothing
// pending (what failed stays pending, and is retried); false when the
// loop is stopped.
func (r *Receiver) flushWhilePending() bool {
	t := time.NewTicker(r.cfg.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-r.loopCtx.Done():
			return false
		case <-t.C:
		}
		if err := r.Flush(r.loopCtx); err != nil && r.loopCtx.Err() == nil {
			r.log.Error("settle usage", zap.Error(err))
		}
		r.mu.Lock()
		idle := len(r.pending) == 0
		r.mu.Unlock()
		if idle {
			return true
		}
	}
}

// receiverMetrics are the receiver's collectors; a nil one records
// nothing.
type receiverMetrics struct {
	entries   [numOutcomes]prometheus.Counter
	streams   prometheus.Gauge
	unmatched prometheus.Counter
}

func newReceiverMetrics(m *telemetry.Metrics, log *zap.Logger) *receiverMetrics {
	if m == nil || m.Registry == nil {
		return nil
	}
	entries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levy_access_log_entries_total",
		Help: "HTTP access-log entries received, by what settlement made of them.",
	}, []string{"result"})
	streams := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "levy_access_log_streams",
		Help: "Open access-log streams (one per Envoy worker).",
	})
	unmatched := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "levy_access_log_unmatched_total",
		Help: "Settled requests dropped because admission never counted their window (retried for two minutes first).",
	})
	entries = register(m.Registry, entries, log)
	streams = register(m.Registry, streams, log)
	unmatched = register(m.Registry, unmatched, log)
	rm := &receiverMetrics{streams: streams, unmatched: unmatched}
	for i, name := range outcomeNames {
		rm.entries[i] = entries.WithLabelValues(name)
	}
	return rm
}

// register registers c, or returns the collector already registered under
// its name (a second Receiver on the same registry, as after a restart of
// the service in one process).
func register[C prometheus.Collector](reg prometheus.Registerer, c C, log *zap.Logger) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	log.Error("register access-log metrics", zap.Error(err))
	return c
}

func (m *receiverMetrics) add(counts *[numOutcomes]int) {
	if m == nil {
		return
	}
	for i, n := range counts {
		if n > 0 {
			m.entries[i].Add(float64(n))
		}
	}
}

func (m *receiverMetrics) addUnmatched(n int) {
	if m != nil {
		m.unmatched.Add(float64(n))
	}
}

func (m *receiverMetrics) streamOpened() {
	if m != nil {
		m.streams.Inc()
	}
}

func (m *receiverMetrics) streamClosed() {
	if m != nil {
		m.streams.Dec()
	}
}
