// Package alert sends usage alerts: when a consumer's usage in its billing
// period crosses one of its plan's thresholds (a share of its quota or
// spend cap), the operator's URL receives a signed webhook.
//
// Detection is off the decision path: a periodic scan reads every
// consumer's period usage with the limiter's Peek, which writes nothing,
// a thousand consumers a Peek, on one replica at a time (the one holding
// the scan's lease). An alert fires once per (consumer, threshold,
// period) across replicas: the replica that finds it first claims its id
// and queues it in a durable outbox in the store, in one step, so that a
// scan by a replica that lost the lease meanwhile fires nothing twice.
// Delivery is at least once: queued
// alerts are posted until the URL answers 2xx, with backoff, by whichever
// replica takes them (one at a time: taking hides an alert for a while),
// and survive a restart. Receivers de-duplicate by the event's id.
package alert

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/consumerlimits"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
)

// EventType is the type of every usage alert.
const EventType = "usage.threshold_crossed"

// Event is the JSON body a usage alert delivers.
type Event struct {
	// ID is stable for (consumer, threshold, period start): the same on
	// every retry and every replica.
	ID       string    `json:"id"`
	Type     string    `json:"type"`
	Created  time.Time `json:"created"`
	Consumer string    `json:"consumer"`
	Plan     string    `json:"plan"`
	// Threshold is the percentage of Limit that Used reached.
	Threshold int `json:"threshold"`
	// LimitName is "quota", "included units" or "spend cap"; Limit its
	// units in the period.
	LimitName   string    `json:"limit_name"`
	Limit       int64     `json:"limit"`
	Used        int64     `json:"used"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
}

// EventID is the id of consumer's alert at threshold in the period that
// starts at start.
func EventID(consumer string, threshold int, start time.Time) string {
	h := sha256.Sum256([]byte(consumer + "\x00" + strconv.Itoa(threshold) + "\x00" + strconv.FormatInt(start.Unix(), 10)))
	return "ua_" + hex.EncodeToString(h[:16])
}

// Store is the outbox: alert claims and queued deliveries, shared by every
// replica (Redis) or durable in the local data file. Records are opaque.
type Store interface {
	// Add claims each claim's ID for its Keep and queues its Rec under
	// it, due at Due, in one step each, and says which claims were new
	// (false: claimed before, and nothing queued). One round trip for
	// them all (a pipeline on Redis, a transaction locally).
	Add(ctx context.Context, claims []Claim) ([]bool, error)
	// Take returns up to n queued records due at now and makes each due
	// again only at now+hide, so that one replica at a time delivers it.
	Take(ctx context.Context, now time.Time, hide time.Duration, n int) ([]Entry, error)
	// Retry keeps id queued with rec, due at due.
	Retry(ctx context.Context, id string, rec []byte, due time.Time) error
	// Done removes id from the queue; its claim stays.
	Done(ctx context.Context, id string) error
	// Queued counts the queued records.
	Queued(ctx context.Context) (int64, error)
}

// Claim is an alert to claim and queue (Store.Add).
type Claim struct {
	ID   string
	Rec  []byte
	Keep time.Duration
	Due  time.Time
}

// Entry is a queued record.
type Entry struct {
	ID  string
	Rec []byte
}

// record is what the outbox keeps of an alert.
type record struct {
	Event    Event `json:"event"`
	Attempts int   `json:"attempts"`
}

// Peeker reads limits without counting anything (limiter's Peek).
type Peeker interface {
	Peek(ctx context.Context, limits []limiter.Limit) (limiter.Reading, error)
}

// Lease lets one replica scan at a time (redisstore.Lease): Hold takes or
// renews it for holder for ttl, false while another holds it; Release
// gives it up if holder has it.
type Lease interface {
	Hold(ctx context.Context, holder string, ttl time.Duration) (bool, error)
	Release(ctx context.Context, holder string) error
}

// Retry is how failed deliveries are retried: Initial, doubling up to Max,
// until MaxAge after the alert was created (then it is dropped).
type Retry struct {
	Initial, Max, MaxAge time.Duration
}

// Config configures an Alerter.
type Config struct {
	Store Store
	// Consumers calls fn for every consumer in force (the file's and the
	// store's); fn's error stops it.
	Consumers func(ctx context.Context, fn func(*apikey.Consumer) error) error
	Catalog   func() *plan.Catalog
	Usage     Peeker
	// Batch is how many consumers one Peek reads (default
	// consumerlimits.PeekBatch).
	Batch int
	// Lease, when set, lets one replica (Holder) scan at a time; nil
	// means this process is the only one (the local store). Every
	// replica delivers.
	Lease  Lease
	Holder string
	// URL receives the alerts; Secret signs them.
	URL    string
	Secret []byte
	// Client posts them (nil: a client with Timeout).
	Client  *http.Client
	Timeout time.Duration
	// ScanEvery is how often usage is scanned (default 1m); DeliverEvery
	// how often the outbox is looked at (default 1s).
	ScanEvery, DeliverEvery time.Duration
	Retry                   Retry
	Registerer              prometheus.Registerer
	Log                     *zap.Logger
	// Clock nil means time.Now: when retries are due (the period of usage
	// is the store's clock, as Peek reads it).
	Clock func() time.Time
}

// Outcomes counted by levy_usage_alerts_total.
const (
	OutcomeFired     = "fired"     // claimed and queued
	OutcomeDelivered = "delivered" // the URL answered 2xx
	OutcomeFailed    = "failed"    // an attempt failed; retried
	OutcomeDropped   = "dropped"   // retried past max_age, given up
)

// Alerter scans usage and delivers alerts.
type Alerter struct {
	cfg        Config
	log        *zap.Logger
	total      *prometheus.CounterVec
	queued     prometheus.Gauge
	scanErrors prometheus.Counter
}

// New returns an Alerter; its metrics are registered on cfg.Registerer.
func New(cfg Config) (*Alerter, error) {
	if cfg.Store == nil || cfg.Consumers == nil || cfg.Catalog == nil || cfg.Usage == nil {
		return nil, errors.New("alert: Store, Consumers, Catalog and Usage are required")
	}
	if cfg.URL == "" || len(cfg.Secret) == 0 {
		return nil, errors.New("alert: URL and Secret are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	if cfg.ScanEvery <= 0 {
		cfg.ScanEvery = time.Minute
	}
	if cfg.DeliverEvery <= 0 {
		cfg.DeliverEvery = time.Second
	}
	if cfg.Retry.Initial <= 0 {
		cfg.Retry = Retry{Initial: 5 * time.Second, Max: 10 * time.Minute, MaxAge: 72 * time.Hour}
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Batch <= 0 {
		cfg.Batch = consumerlimits.PeekBatch
	}
	if cfg.Holder == "" {
		var b [8]byte
		rand.Read(b[:])
		cfg.Holder = "alerts-" + hex.EncodeToString(b[:])
	}
	a := &Alerter{cfg: cfg, log: cfg.Log,
		total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "levy_usage_alerts_total",
			Help: "Usage alerts by threshold (percent) and outcome: fired (queued once per consumer, threshold and period), delivered, failed (an attempt; retried), dropped (given up after alerts.retry.max_age)."},
			[]string{"threshold", "outcome"}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{Name: "levy_usage_alerts_queued",
			Help: "Usage alerts in the outbox, not yet delivered (as this replica last saw it)."}),
		scanErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "levy_usage_alert_scan_errors_total",
			Help: "Usage scans for alerts that could not read a consumer's usage or write the outbox."}),
	}
	// A zero series for every threshold of the plans in force, so that a
	// rate over them starts at the first alert.
	if cat := cfg.Catalog(); cat != nil {
		for _, name := range cat.Names() {
			p, _ := cat.Get(name)
			for _, t := range p.Alerts {
				for _, o := range []string{OutcomeFired, OutcomeDelivered, OutcomeFailed, OutcomeDropped} {
					a.total.WithLabelValues(strconv.Itoa(t), o)
				}
			}
		}
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.total, a.queued, a.scanErrors} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("alert metrics: %w", err)
			}
		}
	}
	return a, nil
}

// Close drops the client's idle connections to the URL.
func (a *Alerter) Close() { a.cfg.Client.CloseIdleConnections() }

// Run scans (when it holds the scan's lease) and delivers until ctx
// ends; then it gives the lease up, so that another replica takes over at
// its next scan.
func (a *Alerter) Run(ctx context.Context) {
	defer a.Close()
	scan := time.NewTicker(a.cfg.ScanEvery)
	defer scan.Stop()
	deliver := time.NewTicker(a.cfg.DeliverEvery)
	defer deliver.Stop()
	a.scanAndDeliver(ctx)
	for {
		select {
		case <-ctx.Done():
			if a.cfg.Lease != nil {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				a.cfg.Lease.Release(rctx, a.cfg.Holder)
				cancel()
			}
			return
		case <-scan.C:
			a.scanAndDeliver(ctx)
		case <-deliver.C:
			a.Deliver(ctx)
		}
	}
}

func (a *Alerter) scanAndDeliver(ctx context.Context) {
	if _, err := a.ScanIfHolder(ctx); err != nil && ctx.Err() == nil {
		a.scanErrors.Inc()
		a.log.Warn("usage alert scan", zap.Error(err))
	}
	a.Deliver(ctx)
}

// ScanIfHolder takes or renews the scan's lease and scans when this
// replica holds it; it says whether it scanned. The lease lasts three
// scan intervals: a replica that stops renewing it (it died) is taken
// over by another within them, one that releases it (it stopped) at the
// next scan. A scan that outlasts the lease may meet another replica's:
// claims keep each alert to one firing all the same.
func (a *Alerter) ScanIfHolder(ctx context.Context) (bool, error) {
	if a.cfg.Lease != nil {
		held, err := a.cfg.Lease.Hold(ctx, a.cfg.Holder, 3*a.cfg.ScanEvery)
		if err != nil {
			return false, fmt.Errorf("scan lease: %w", err)
		}
		if !held {
			return false, nil
		}
	}
	return true, a.Scan(ctx)
}

// Scan reads every consumer's period usage, Batch consumers a Peek, and
// queues the alerts of the thresholds crossed that nobody has fired yet,
// with one outbox call a batch: a round trip or two a thousand
// consumers, where a Peek a consumer took a round trip each. It returns
// the first error after scanning everyone it could.
func (a *Alerter) Scan(ctx context.Context) error {
	cat := a.cfg.Catalog()
	var first error
	batch := make([]consumerlimits.Subject, 0, a.cfg.Batch)
	check := func() {
		if err := a.check(ctx, batch); err != nil && first == nil {
			first = err
		}
		batch = batch[:0]
	}
	err := a.cfg.Consumers(ctx, func(c *apikey.Consumer) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p, ok := cat.Get(c.Plan)
		if !ok || len(p.Alerts) == 0 {
			return nil
		}
		batch = append(batch, consumerlimits.Subject{Consumer: c, Plan: p})
		if len(batch) == a.cfg.Batch {
			check()
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(batch) > 0 {
		check()
	}
	return first
}

// check reads batch's usage and queues the crossed thresholds.
func (a *Alerter) check(ctx context.Context, batch []consumerlimits.Subject) error {
	read, err := consumerlimits.PeekPeriods(ctx, a.cfg.Usage, batch)
	if err != nil {
		return fmt.Errorf("read usage of %d consumers from %s on: %w", len(batch), batch[0].Consumer.ID, err)
	}
	var claims []Claim
	var events []Event
	for i, u := range read {
		c, p := batch[i].Consumer, batch[i].Plan
		crossed := p.AlertsCrossed(u.Used)
		if len(crossed) == 0 {
			continue
		}
		limit, name := p.AlertLimit()
		// The claim outlives the period by a day, so that a scan at the
		// period's very end (or a store clock a little behind) finds it.
		keep := u.Period.End.Sub(u.Now) + 24*time.Hour
		for _, t := range crossed {
			ev := Event{ID: EventID(c.ID, t, u.Period.Start), Type: EventType, Created: u.Now.UTC(), Consumer: c.ID, Plan: p.Name,
				Threshold: t, LimitName: name, Limit: limit, Used: u.Used, PeriodStart: u.Period.Start.UTC(), PeriodEnd: u.Period.End.UTC()}
			rec, err := json.Marshal(record{Event: ev})
			if err != nil {
				return err
			}
			claims = append(claims, Claim{ID: ev.ID, Rec: rec, Keep: keep, Due: a.cfg.Clock()})
			events = append(events, ev)
		}
	}
	if len(claims) == 0 {
		return nil
	}
	fired, err := a.cfg.Store.Add(ctx, claims)
	if err == nil && len(fired) != len(claims) {
		err = fmt.Errorf("the outbox answered %d of them", len(fired))
	}
	if err != nil {
		return fmt.Errorf("queue %d alerts: %w", len(claims), err)
	}
	for i, ev := range events {
		if !fired[i] {
			continue
		}
		a.total.WithLabelValues(strconv.Itoa(ev.Threshold), OutcomeFired).Inc()
		a.log.Info("usage alert fired", zap.String("consumer", ev.Consumer), zap.String("plan", ev.Plan), zap.Int("threshold", ev.Threshold),
			zap.Int64("used", ev.Used), zap.Int64("limit", ev.Limit), zap.String("event_id", ev.ID))
	}
	return nil
}

// deliverBatch bounds the alerts one Deliver takes.
const deliverBatch = 100

// Deliver posts the alerts due now; each failure is retried later.
func (a *Alerter) Deliver(ctx context.Context) {
	defer a.updateQueued(ctx)
	now := a.cfg.Clock()
	// An alert taken stays hidden from other replicas for a delivery's
	// time and a margin; a replica that dies meanwhile leaves it due again.
	entries, err := a.cfg.Store.Take(ctx, now, 2*a.cfg.Timeout+5*time.Second, deliverBatch)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("usage alert outbox", zap.Error(err))
		}
		return
	}
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		a.deliver(ctx, e)
	}
}

func (a *Alerter) deliver(ctx context.Context, e Entry) {
	var rec record
	if err := json.Unmarshal(e.Rec, &rec); err != nil {
		a.log.Error("usage alert record unreadable; dropped", zap.String("event_id", e.ID), zap.Error(err))
		a.done(ctx, e.ID)
		return
	}
	ev := rec.Event
	threshold := strconv.Itoa(ev.Threshold)
	log := a.log.With(zap.String("event_id", ev.ID), zap.String("consumer", ev.Consumer), zap.Int("threshold", ev.Threshold))
	err := a.post(ctx, ev)
	if err == nil {
		a.total.WithLabelValues(threshold, OutcomeDelivered).Inc()
		log.Info("usage alert delivered", zap.Int("attempts", rec.Attempts+1))
		a.done(ctx, e.ID)
		return
	}
	if ctx.Err() != nil {
		return // shutting down: the alert becomes due again after its hide
	}
	rec.Attempts++
	now := a.cfg.Clock()
	if now.Sub(ev.Created) > a.cfg.Retry.MaxAge {
		a.total.WithLabelValues(threshold, OutcomeDropped).Inc()
		log.Error("usage alert dropped: undelivered for longer than alerts.retry.max_age", zap.Int("attempts", rec.Attempts), zap.Error(err))
		a.done(ctx, e.ID)
		return
	}
	a.total.WithLabelValues(threshold, OutcomeFailed).Inc()
	wait := a.backoff(rec.Attempts)
	log.Warn("usage alert delivery failed; retrying", zap.Int("attempts", rec.Attempts), zap.Duration("retry_in", wait), zap.Error(err))
	b, _ := json.Marshal(rec)
	if err := a.cfg.Store.Retry(ctx, e.ID, b, now.Add(wait)); err != nil {
		log.Warn("usage alert retry not recorded; it is due again after its hide", zap.Error(err))
	}
}

func (a *Alerter) done(ctx context.Context, id string) {
	if err := a.cfg.Store.Done(ctx, id); err != nil {
		a.log.Warn("usage alert outbox: remove delivered alert; it may be delivered again", zap.String("event_id", id), zap.Error(err))
	}
}

// backoff is the wait after the attempts-th failure.
func (a *Alerter) backoff(attempts int) time.Duration {
	d := a.cfg.Retry.Initial
	for i := 1; i < attempts && d < a.cfg.Retry.Max; i++ {
		d *= 2
	}
	return min(d, a.cfg.Retry.Max)
}

// post sends ev, signed; nil only for a 2xx answer.
func (a *Alerter) post(ctx context.Context, ev Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "levy-alerts")
	req.Header.Set(EventIDHeader, ev.ID)
	req.Header.Set(SignatureHeader, Sign(a.cfg.Secret, body, a.cfg.Clock()))
	resp, err := a.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s", a.cfg.URL, resp.Status)
	}
	return nil
}

func (a *Alerter) updateQueued(ctx context.Context) {
	if n, err := a.cfg.Store.Queued(ctx); err == nil {
		a.queued.Set(float64(n))
	}
}
