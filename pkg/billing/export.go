package billing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	stripe "github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// Lease lets one replica export at a time; any can take over when the
// holder's lease lapses.
type Lease interface {
	// Hold acquires or renews the lease for holder for ttl; false while
	// another holder has it.
	Hold(ctx context.Context, holder string, ttl time.Duration) (bool, error)
	// Release gives the lease up if holder has it.
	Release(ctx context.Context, holder string) error
}

// SoleLease is the lease of a single process (the local store).
type SoleLease struct{}

// Hold implements Lease.
func (SoleLease) Hold(context.Context, string, time.Duration) (bool, error) { return true, nil }

// Release implements Lease.
func (SoleLease) Release(context.Context, string) error { return nil }

// ExporterConfig configures an Exporter.
type ExporterConfig struct {
	Ledger usage.Ledger
	// Consumer finds a consumer (for its Stripe customer id and plan).
	Consumer func(id string) (*apikey.Consumer, bool)
	// Catalog returns the current plans.
	Catalog func() *plan.Catalog
	Lease   Lease
	Holder  string // this replica's name in the lease
	// APIKey and APIBase reach Stripe (STRIPE_API_KEY; billing.stripe.api_base).
	APIKey, APIBase string
	// Every is how often closed windows are exported; SettleDelay how long
	// a window waits after it closes for late access logs.
	Every, SettleDelay time.Duration
	Registerer         prometheus.Registerer
	Log                *zap.Logger
	Clock              func() time.Time
}

// Exporter sends closed ledger windows to Stripe billing meters.
type Exporter struct {
	cfg    ExporterConfig
	stripe *client.API

	mu      sync.Mutex
	backoff map[string]retry // window identifier -> next attempt

	events   *prometheus.CounterVec
	lag      prometheus.Gauge
	unbilled prometheus.Gauge
}

type retry struct {
	attempts int
	next     time.Time
}

// NewExporter returns an exporter; Run drives it.
func NewExporter(cfg ExporterConfig) *Exporter {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Lease == nil {
		cfg.Lease = SoleLease{}
	}
	if cfg.Every <= 0 {
		cfg.Every = 10 * time.Second
	}
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(cfg.APIBase),
		HTTPClient:        &http.Client{Timeout: 20 * time.Second},
		MaxNetworkRetries: stripe.Int64(0), // the exporter retries, with backoff, per window
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	sc := &client.API{}
	sc.Init(cfg.APIKey, &stripe.Backends{API: backend, Connect: backend, Uploads: backend})
	e := &Exporter{cfg: cfg, stripe: sc, backoff: map[string]retry{},
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levy_usage_export_windows_total",
			Help: "Closed usage windows by export result: accepted (Stripe took the meter event), zero (nothing billable), failed (retried), unbillable (no Stripe customer: kept).",
		}, []string{"result"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "levy_usage_export_lag_seconds",
			Help: "Age of the oldest closed window not yet exported.",
		}),
		unbilled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "levy_usage_unbillable_windows",
			Help: "Closed windows with billable usage kept because the consumer has no Stripe customer id.",
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(e.events, e.lag, e.unbilled)
	}
	return e
}

// Run exports every interval while this replica holds the lease, until
// ctx ends; then it gives the lease up.
func (e *Exporter) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.Every)
	defer t.Stop()
	ttl := 3 * e.cfg.Every
	for {
		held, err := e.cfg.Lease.Hold(ctx, e.cfg.Holder, ttl)
		if err != nil && ctx.Err() == nil {
			e.cfg.Log.Warn("usage export lease", zap.Error(err))
		}
		if held {
			if _, err := e.ExportOnce(ctx); err != nil && ctx.Err() == nil {
				e.cfg.Log.Warn("usage export", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			e.cfg.Lease.Release(rctx, e.cfg.Holder)
			cancel()
			return
		case <-t.C:
		}
	}
}

// maxSendsPerPass bounds the meter events of one export pass (Stripe
// takes about 1000 calls a second).
const maxSendsPerPass = 1000

// Identifier names a window's meter event: the same for every attempt, so
// that Stripe rejects a second one instead of billing twice.
func Identifier(w usage.Window) string {
	id := "levy:" + w.Consumer + ":" + w.Meter + ":" + strconv.FormatInt(w.Start.Unix(), 10)
	if len(id) <= 100 { // Stripe's limit
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "levy:" + hex.EncodeToString(sum[:20])
}

// ExportOnce exports the closed windows that are due; it returns how many
// Stripe accepted.
func (e *Exporter) ExportOnce(ctx context.Context) (int, error) {
	now := e.cfg.Clock()
	// Every closed window: windows that wait (no Stripe customer yet,
	// backing off) must not hide the ones behind them. At most
	// maxSendsPerPass events go out per pass.
	windows, err := e.cfg.Ledger.Closed(ctx, now.Add(-e.cfg.SettleDelay), 0)
	if err != nil {
		return 0, err
	}
	if len(windows) > 0 {
		e.lag.Set(now.Sub(windows[0].End()).Seconds())
	} else {
		e.lag.Set(0)
	}
	accepted, unbillable, sends := 0, 0, 0
	var errs []error
	running := map[periodKey]int64{} // units so far in each consumer's period
	for _, w := range windows {
		if ctx.Err() != nil {
			break
		}
		id := Identifier(w)
		c, ok := e.cfg.Consumer(w.Consumer)
		var p *plan.Plan
		if ok {
			p, ok = e.cfg.Catalog().Get(c.Plan)
		}
		if !ok {
			unbillable++ // a consumer or plan that is gone: keep the usage
			e.events.WithLabelValues("unbillable").Inc()
			continue
		}
		bill, err := e.billable(ctx, running, c, p, &w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w.Billable = bill
		if bill <= 0 {
			// Nothing to invoice: done, without a call.
			if err := e.cfg.Ledger.MarkExported(ctx, w); err != nil {
				errs = append(errs, err)
			}
			e.events.WithLabelValues("zero").Inc()
			continue
		}
		if c.StripeCustomerID == "" {
			unbillable++
			e.events.WithLabelValues("unbillable").Inc()
			continue
		}
		if !e.due(id, now) || sends >= maxSendsPerPass {
			continue
		}
		sends++
		err = e.send(ctx, w, c.StripeCustomerID, id)
		if err == nil {
			err = e.cfg.Ledger.MarkExported(ctx, w)
			if err == nil {
				accepted++
				e.events.WithLabelValues("accepted").Inc()
				e.done(id)
				continue
			}
			// Stripe has it; a retry sends the same identifier and is
			// refused as a duplicate, which counts as accepted.
		}
		e.events.WithLabelValues("failed").Inc()
		e.failed(id, now)
		errs = append(errs, err)
	}
	e.unbilled.Set(float64(unbillable))
	if unbillable > 0 {
		e.cfg.Log.Warn("usage kept unexported: consumers without a Stripe customer id", zap.Int("windows", unbillable))
	}
	return accepted, errors.Join(errs...)
}

func (e *Exporter) send(ctx context.Context, w usage.Window, customer, id string) error {
	params := &stripe.BillingMeterEventParams{
		EventName: stripe.String(w.Meter),
		Payload: map[string]string{
			"stripe_customer_id": customer,
			"value":              strconv.FormatInt(w.Billable, 10),
		},
		Identifier: stripe.String(id),
		// Inside the window: its last second.
		Timestamp: stripe.Int64(w.End().Unix() - 1),
	}
	params.Context = ctx
	_, err := e.stripe.BillingMeterEvents.New(params)
	var serr *stripe.Error
	if errors.As(err, &serr) && isDuplicate(serr) {
		return nil // an earlier attempt got through: already billed once
	}
	if err != nil {
		return err
	}
	e.cfg.Log.Debug("meter event accepted", zap.String("consumer", w.Consumer), zap.String("meter", w.Meter),
		zap.Time("window", w.Start), zap.Int64("value", w.Billable))
	return nil
}

// periodKey names one consumer's billing period on one meter.
type periodKey struct {
	consumer, meter string
	start           int64
}

// billable works out a window's billable units: those beyond the plan's
// included units in the billing period, given the units of the period's
// earlier windows (read once per pass, then carried in running). Units are
// settled by then, so a refund inside the included units frees them for
// later requests.
func (e *Exporter) billable(ctx context.Context, running map[periodKey]int64, c *apikey.Consumer, p *plan.Plan, w *usage.Window) (int64, error) {
	t := termsOf(c, p)
	if !t.billed || w.Meter != p.Meter {
		return 0, nil
	}
	period := plan.PeriodAt(w.Start, t.unit, t.anchor)
	k := periodKey{w.Consumer, w.Meter, period.Start.Unix()}
	prior, ok := running[k]
	if !ok {
		earlier, err := e.cfg.Ledger.Windows(ctx, w.Consumer, period.Start, w.Start)
		if err != nil {
			return 0, err
		}
		for _, x := range earlier {
			if x.Meter == w.Meter {
				prior += x.Units
			}
		}
	}
	running[k] = prior + w.Units
	return beyond(prior, w.Units, t.included), nil
}

// terms say how a consumer's usage is billed.
type terms struct {
	billed   bool
	included int64
	unit     plan.Unit
	anchor   time.Time
}

// termsOf: payg plans bill the units beyond their included units (the
// soft quota's requests, or none); tiered plans only when their quota is
// soft (they allow overage); freemium never. A plan without a meter bills
// nothing.
func termsOf(c *apikey.Consumer, p *plan.Plan) terms {
	t := terms{unit: p.UsagePeriod(), anchor: c.PeriodAnchor}
	soft := p.Quota != nil && p.Quota.Enforcement == plan.Soft
	t.billed = p.Meter != "" && (p.Model == plan.PayG || p.Model == plan.Tiered && soft)
	if p.Quota != nil {
		t.included = p.Quota.Requests
	}
	return t
}

// beyond is how many of units go past included, after prior.
func beyond(prior, units, included int64) int64 {
	return max(prior+units-included, 0) - max(prior-included, 0)
}

// isDuplicate recognises Stripe's refusal of an identifier it already has.
func isDuplicate(err *stripe.Error) bool {
	return err.HTTPStatusCode == http.StatusBadRequest && err.Param == "identifier"
}

// due reports whether a window's next attempt may run now.
func (e *Exporter) due(id string, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.backoff[id]
	return !ok || !now.Before(r.next)
}

// failed schedules the next attempt: 1s, 2s, 4s ... up to 5 minutes.
func (e *Exporter) failed(id string, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.backoff[id]
	r.attempts++
	wait := time.Second << min(r.attempts-1, 9)
	r.next = now.Add(min(wait, 5*time.Minute))
	e.backoff[id] = r
}

func (e *Exporter) done(id string) {
	e.mu.Lock()
	delete(e.backoff, id)
	e.mu.Unlock()
}
