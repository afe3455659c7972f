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

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/telemetry"
)

// Receiver defaults.
const (
	DefaultUnitsHeader    = "x-levy-units"
	DefaultConsumerHeader = "x-consumer-id"
	DefaultDedupTTL       = 10 * time.Minute
	DefaultDedupMax       = 1_000_000
	DefaultFlushEvery     = time.Second
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
	// written to the ledger (default 1s).
	FlushEvery time.Duration
	// Metrics, if set, gets levy_access_log_entries_total and
	// levy_access_log_streams.
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

	mu      sync.Mutex
	pending map[aggKey]delta

	flushMu sync.Mutex // one ledger write at a time

	// stop ends the flush loop (and cancels a write it is in); done is
	// closed once it has ended.
	loopCtx context.Context
	stop    context.CancelFunc
	done    chan struct{}

	// draining ends open streams (Drain); readers counts the goroutines
	// still reading them.
	draining  chan struct{}
	drainOnce sync.Once
	readers   sync.WaitGroup
}

var _ accesslogv3.AccessLogServiceServer = (*Receiver)(nil)

// aggKey is what adjustments are summed by: the window is chosen by the
// ledger from At, and every window is at least a second long.
type aggKey struct {
	consumer, meter string
	at              int64 // unix seconds
}

type delta struct{ units int64 }

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
		cfg:      cfg,
		log:      cfg.Log,
		dedup:    newDedup(cfg.DedupTTL, cfg.DedupMax, cfg.Clock()),
		metrics:  newReceiverMetrics(cfg.Metrics, cfg.Log),
		pending:  map[aggKey]delta{},
		done:     make(chan struct{}),
		draining: make(chan struct{}),
	}
	r.loopCtx, r.stop = context.WithCancel(context.Background())
	go r.flushLoop()
	return r
}

// StreamAccessLogs implements accesslogv3.AccessLogServiceServer. It
// reads until Envoy ends the stream, or until Drain, and sends nothing
// back. Envoy keeps its streams open for ever, so a shutdown must end them
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
		return err
	case <-r.draining:
		// Returning ends the stream; the reader's RecvMsg then fails and
		// it exits. Close waits for it before the final flush.
		return nil
	}
}

// Drain ends every open stream and refuses none: new streams started
// afterwards end at once.
func (r *Receiver) Drain() {
	r.drainOnce.Do(func() { close(r.draining) })
}

func (r *Receiver) read(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	ctx := stream.Context()
	msg := &wireMessage{r: r, b: &batch{sums: map[aggKey]delta{}}}
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
	sums   map[aggKey]delta
	counts [numOutcomes]int
}

// settleFacts settles one entry into b.
func (r *Receiver) settleFacts(b *batch, f *facts, cat *plan.Catalog, now time.Time) {
	adj, out := f.settle(cat)
	if out == outSettled && f.requestID != "" && !r.dedup.firstSeen(r.dedup.key(f.requestID, adj.At.UnixNano()), now) {
		out = outDuplicate
	}
	b.counts[out]++
	if out != outSettled {
		return
	}
	k := aggKey{consumer: adj.Consumer, meter: adj.Meter, at: adj.At.Unix()}
	d, found := b.sums[k]
	if !found {
		k.consumer = strings.Clone(k.consumer) // it points into the message
	}
	d.units += adj.Units
	b.sums[k] = d
}

// commit moves a batch's sums into the pending adjustments and its counts
// into the metrics.
func (r *Receiver) commit(b *batch) {
	if len(b.sums) > 0 {
		r.mu.Lock()
		r.mergeLocked(b.sums)
		r.mu.Unlock()
		clear(b.sums)
	}
	r.metrics.add(&b.counts)
	b.counts = [numOutcomes]int{}
}

// mergeLocked adds sums to the pending adjustments; r.mu is held.
func (r *Receiver) mergeLocked(sums map[aggKey]delta) {
	for k, d := range sums {
		p := r.pending[k]
		p.units += d.units
		if p == (delta{}) {
			delete(r.pending, k)
			continue
		}
		r.pending[k] = p
	}
}

// Flush writes the pending adjustments to the ledger now. If the ledger
// fails they stay pending, merged with what arrives meanwhile, for the
// next flush.
func (r *Receiver) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()

	r.mu.Lock()
	sums := r.pending
	if len(sums) == 0 {
		r.mu.Unlock()
		return nil
	}
	r.pending = make(map[aggKey]delta, len(sums))
	r.mu.Unlock()

	adjs := make([]Adjustment, 0, len(sums))
	for k, d := range sums {
		adjs = append(adjs, Adjustment{Consumer: k.consumer, Meter: k.meter, At: time.Unix(k.at, 0).UTC(),
			Units: d.units})
	}
	// A stable order: stores that lock rows take them in the same order.
	slices.SortFunc(adjs, func(a, b Adjustment) int {
		return cmp.Or(strings.Compare(a.Consumer, b.Consumer), strings.Compare(a.Meter, b.Meter), a.At.Compare(b.At))
	})
	var err error
	if r.cfg.Ledger == nil {
		err = errNoLedger
	} else {
		err = r.cfg.Ledger.Adjust(ctx, adjs)
	}
	if err != nil {
		// Keep what was not applied (all of it, unless the ledger says
		// which) for the next flush: nothing lost, nothing applied twice.
		var partial *PartialError
		if errors.As(err, &partial) {
			sums = map[aggKey]delta{}
			for _, a := range partial.Failed {
				k := aggKey{consumer: a.Consumer, meter: a.Meter, at: a.At.Unix()}
				d := sums[k]
				d.units += a.Units
				sums[k] = d
			}
		}
		r.mu.Lock()
		r.mergeLocked(sums)
		r.mu.Unlock()
		return fmt.Errorf("adjust usage (%d adjustments kept for the next flush): %w", len(sums), err)
	}
	return nil
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

func (r *Receiver) flushLoop() {
	defer close(r.done)
	t := time.NewTicker(r.cfg.FlushEvery)
	defer t.Stop()
	for {
		select {
		case <-r.loopCtx.Done():
			return
		case <-t.C:
			if err := r.Flush(r.loopCtx); err != nil && r.loopCtx.Err() == nil {
				r.log.Error("settle usage", zap.Error(err))
			}
		}
	}
}

// receiverMetrics are the receiver's collectors; a nil one records
// nothing.
type receiverMetrics struct {
	entries [numOutcomes]prometheus.Counter
	streams prometheus.Gauge
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
	entries = register(m.Registry, entries, log)
	streams = register(m.Registry, streams, log)
	rm := &receiverMetrics{streams: streams}
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
