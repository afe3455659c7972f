package billing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	stripe "github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/keyspace"
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
	// Consumer finds a consumer (for its Stripe customer id and billing
	// anchor).
	Consumer func(id string) (*apikey.Consumer, bool)
	// Catalog returns the current plans: only windows written before levy
	// recorded billing terms at admission are billed by them.
	Catalog func() *plan.Catalog
	Lease   Lease
	Holder  string // this replica's name in the lease
	// Ready, when set, says whether exports may run. The Redis store says
	// no while it is still moving state keys to the current layout
	// (redisstore.LayoutComplete): one window can then have a copy under
	// each layout's name, and their events would share identifiers, so
	// that Stripe kept one. Until it says yes this replica neither exports
	// nor holds the lease (an older replica may export what it wrote).
	Ready func(ctx context.Context) (bool, error)
	// APIKey and APIBase reach Stripe (STRIPE_API_KEY; billing.stripe.api_base).
	APIKey, APIBase string
	// Every is how often closed windows are exported; SettleDelay how long
	// a window waits after it closes for late access logs.
	Every, SettleDelay time.Duration
	// CorrectionGrace is how long after a billing period ends a late
	// settlement still corrects it (Stripe finalises the period's invoice
	// about an hour after it ends); default 1h. Later ones are counted in
	// levy_usage_uncorrectable_units_total.
	CorrectionGrace time.Duration
	Registerer      prometheus.Registerer
	Log             *zap.Logger
	Clock           func() time.Time
}

// Exporter sends the ledger's billable units to Stripe billing meters.
//
// It works per account: a consumer's billing period on one meter. An
// account's billable units are those beyond the included units of the
// terms each window was admitted under; what Stripe accepted so far is the
// sum of the account's events. Each pass sends one event with the
// difference, identified by the account's last closed window and its
// event count, so a retry never bills twice; it is recorded as pending
// before it is sent, so a retry after a crash sends the same identifier
// and value. A late settlement that lowers the bill below what Stripe has
// cancels the period's latest events (Stripe cancels within 24 hours) and
// bills what is left; what cannot be cancelled is taken off the period's
// next event. One that comes after the period closed is counted as
// uncorrectable.
type Exporter struct {
	cfg    ExporterConfig
	stripe *client.API

	mu      sync.Mutex
	backoff map[string]retry // account -> next attempt
	// noCancel are the events Stripe refused to cancel for good: not
	// asked again (until a restart).
	noCancel map[string]bool

	events        *prometheus.CounterVec
	lag           prometheus.Gauge
	unbilled      prometheus.Gauge
	uncorrectable *prometheus.CounterVec
	corrected     prometheus.Counter
	cancelled     prometheus.Counter
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
	if cfg.CorrectionGrace <= 0 {
		cfg.CorrectionGrace = time.Hour
	}
	if cfg.Catalog == nil {
		cfg.Catalog = func() *plan.Catalog { return nil }
	}
	e := &Exporter{cfg: cfg, stripe: NewStripeClient(cfg.APIKey, cfg.APIBase), backoff: map[string]retry{}, noCancel: map[string]bool{},
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levy_usage_export_windows_total",
			Help: "Closed usage windows by export result: accepted (in a meter event Stripe took), zero (nothing to bill), failed (an attempt that is retried), unbillable (no Stripe customer: kept), rejected (Stripe refused for good: set aside, see levy billing reconcile).",
		}, []string{"result"}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "levy_usage_export_lag_seconds",
			Help: "Age of the oldest closed window with export work left, on the replica holding the export lease (0 on the others).",
		}),
		unbilled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "levy_usage_unbillable_windows",
			Help: "Closed windows with billable usage kept because the consumer has no Stripe customer id (or is gone), on the replica holding the export lease (0 on the others).",
		}),
		uncorrectable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levy_usage_uncorrectable_units_total",
			Help: "Billable units a late settlement changed after the billing period closed: under (owed, not billed) or over (billed, not owed).",
		}, []string{"direction"}),
		corrected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "levy_usage_corrected_windows_total",
			Help: "Windows accounted again because a settlement changed them after their export.",
		}),
		cancelled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "levy_usage_cancelled_events_total",
			Help: "Meter events cancelled (a late refund lowered the period's bill below what Stripe had) and billed again at the lower value.",
		}),
	}
	for _, r := range []string{"accepted", "zero", "failed", "unbillable", "rejected"} {
		e.events.WithLabelValues(r)
	}
	e.uncorrectable.WithLabelValues("under")
	e.uncorrectable.WithLabelValues("over")
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(e.events, e.lag, e.unbilled, e.uncorrectable, e.corrected, e.cancelled)
	}
	return e
}

// NewStripeClient returns a Stripe client for key at base ("" for
// Stripe's own), without its own retries: the callers retry per window.
func NewStripeClient(key, base string) *client.API {
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(base),
		HTTPClient:        &http.Client{Timeout: 20 * time.Second},
		MaxNetworkRetries: stripe.Int64(0),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	sc := &client.API{}
	sc.Init(key, &stripe.Backends{API: backend, Connect: backend, Uploads: backend})
	return sc
}

// ErrNotReady is ExportOnce's error while ExporterConfig.Ready says no.
var ErrNotReady = errors.New("usage export waits: the store is moving state keys to the current layout")

// ready asks ExporterConfig.Ready.
func (e *Exporter) ready(ctx context.Context) error {
	if e.cfg.Ready == nil {
		return nil
	}
	ok, err := e.cfg.Ready(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("usage export readiness: %w", err)
	case !ok:
		return ErrNotReady
	}
	return nil
}

// Run exports every interval while this replica holds the lease, until
// ctx ends; then it gives the lease up. While ExporterConfig.Ready says
// no, it leaves the lease to others.
func (e *Exporter) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.Every)
	defer t.Stop()
	ttl := 3 * e.cfg.Every
	waiting := false
	for {
		var held bool
		err := e.ready(ctx)
		switch {
		case errors.Is(err, ErrNotReady):
			if !waiting {
				e.cfg.Log.Info(err.Error())
				e.cfg.Lease.Release(ctx, e.cfg.Holder)
			}
			waiting = true
		case err != nil:
			if ctx.Err() == nil {
				e.cfg.Log.Warn("usage export", zap.Error(err))
			}
		default:
			if waiting {
				e.cfg.Log.Info("usage export resumes: every state key is in the current layout")
			}
			waiting = false
			held, err = e.cfg.Lease.Hold(ctx, e.cfg.Holder, ttl)
			if err != nil && ctx.Err() == nil {
				e.cfg.Log.Warn("usage export lease", zap.Error(err))
			}
		}
		if held {
			if _, err := e.exportOnce(ctx); err != nil && ctx.Err() == nil {
				e.cfg.Log.Warn("usage export", zap.Error(err))
			}
		} else if err == nil || errors.Is(err, ErrNotReady) {
			// Another replica exports and reports these; a value frozen
			// here at the handover would hold a fleet's max (and its
			// alerts) for as long as this replica runs.
			e.lag.Set(0)
			e.unbilled.Set(0)
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

// Identifier names the n-th meter event identified by window w: the same
// for every attempt, so that Stripe refuses a second one instead of
// billing twice.
func Identifier(w usage.Window, n int) string {
	id := "levy:" + w.Consumer + ":" + w.Meter + ":" + strconv.FormatInt(w.Start.Unix(), 10)
	if w.Terms.Known() {
		// The key as the layout before keyspace.Version spelled it: an
		// identifier must not change with the store's layout, or an
		// event sent before an upgrade and retried after it would be
		// billed twice.
		sum := sha256.Sum256([]byte(strings.TrimPrefix(w.Key, keyspace.State)))
		id += ":" + hex.EncodeToString(sum[:4])
	}
	if n > 0 {
		id += "." + strconv.Itoa(n)
	}
	if len(id) <= 100 { // Stripe's limit
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "levy:" + hex.EncodeToString(sum[:20])
}

// Account is one consumer's billing period on one meter: what the
// exporter bills as a whole.
type Account struct {
	Consumer, Meter string
	Period          plan.Period
}

func (a Account) String() string {
	return a.Consumer + "/" + a.Meter + "/" + strconv.FormatInt(a.Period.Start.Unix(), 10)
}

// TermsOf returns the terms a window is billed under: those recorded at
// admission, or, for a window written before levy recorded them, its
// consumer's current plan's when that plan bills the window's meter.
func TermsOf(w *usage.Window, c *apikey.Consumer, cat *plan.Catalog) usage.Terms {
	if w.Terms.Known() {
		return w.Terms
	}
	if c != nil && cat != nil {
		if p, ok := cat.Get(c.Plan); ok && p.Meter == w.Meter {
			return usage.TermsOf(p)
		}
	}
	return usage.Terms{Meter: w.Meter, Period: plan.Month}
}

// AccountOf is the account a window belongs to.
func AccountOf(w *usage.Window, t usage.Terms, c *apikey.Consumer) Account {
	var anchor time.Time
	if c != nil {
		anchor = c.PeriodAnchor
	}
	unit := t.Period
	if unit == "" {
		unit = plan.Month
	}
	return Account{Consumer: w.Consumer, Meter: w.Meter, Period: plan.PeriodAt(w.Start, unit, anchor)}
}

// Statement is an account's bill as the ledger has it.
type Statement struct {
	Account Account
	// Windows are the account's closed windows, oldest first, with
	// Billable set.
	Windows []usage.Window
	// Target is what the account should have billed: the sum of the
	// windows' Billable. Billed is what Stripe accepted.
	Target, Billed int64
}

// StatementOf works out an account's bill from its windows (closed, of
// its meter, oldest first). A plan's included units are for the units
// admitted under it in the period: a consumer who changes plans gets each
// plan's allowance for the usage on that plan, whatever the order of the
// changes within a window (which the ledger does not keep), and a reload
// that changes a plan's included units changes the allowance, not the
// units counted against it. A rejected window counts as it was last
// accounted: its change was refused.
func StatementOf(a Account, windows []usage.Window, c *apikey.Consumer, cat *plan.Catalog) Statement {
	st := Statement{Account: a, Windows: windows}
	prior := map[string]int64{} // units so far under each plan
	for i := range st.Windows {
		w := &st.Windows[i]
		units := w.Units
		if w.Rejected != "" {
			units = w.Accounted
		}
		t := TermsOf(w, c, cat)
		p := t.Plan
		if p == "" {
			p = w.Key // written before levy recorded terms
		}
		w.Billable = t.Beyond(prior[p], units)
		prior[p] += units
		st.Target += w.Billable
		st.Billed += w.Billed
	}
	return st
}

// ExportOnce exports what is due; it returns how many meter events Stripe
// accepted. It exports nothing while ExporterConfig.Ready says no
// (ErrNotReady).
func (e *Exporter) ExportOnce(ctx context.Context) (int, error) {
	if err := e.ready(ctx); err != nil {
		return 0, err
	}
	return e.exportOnce(ctx)
}

// exportOnce is ExportOnce once Run has asked ExporterConfig.Ready.
func (e *Exporter) exportOnce(ctx context.Context) (int, error) {
	now := e.cfg.Clock()
	cutoff := now.Add(-e.cfg.SettleDelay)
	due, err := e.cfg.Ledger.Due(ctx, cutoff)
	if err != nil {
		return 0, err
	}
	if len(due) > 0 {
		e.lag.Set(now.Sub(due[0].End()).Seconds())
	} else {
		e.lag.Set(0)
	}
	cat := e.cfg.Catalog()
	// Accounts with work, oldest first.
	var order []Account
	consumers := map[Account]*apikey.Consumer{}
	unbillable := 0
	for i := range due {
		w := &due[i]
		c, ok := e.cfg.Consumer(w.Consumer)
		if !ok {
			unbillable++ // a consumer that is gone: keep the usage
			e.events.WithLabelValues("unbillable").Inc()
			continue
		}
		a := AccountOf(w, TermsOf(w, c, cat), c)
		if _, seen := consumers[a]; !seen {
			consumers[a] = c
			order = append(order, a)
		}
	}
	p := pass{e: e, now: now, cutoff: cutoff, cat: cat}
	var errs []error
	for _, a := range order {
		if ctx.Err() != nil || p.sends >= maxSendsPerPass {
			break
		}
		if err := p.account(ctx, a, consumers[a]); err != nil {
			errs = append(errs, fmt.Errorf("account %s: %w", a, err))
		}
	}
	unbillable += p.unbillable
	e.unbilled.Set(float64(unbillable))
	if unbillable > 0 {
		e.cfg.Log.Warn("usage kept unexported: consumers without a Stripe customer id", zap.Int("windows", unbillable))
	}
	return p.accepted, errors.Join(errs...)
}

// pass is one export pass's state.
type pass struct {
	e                           *Exporter
	now, cutoff                 time.Time
	cat                         *plan.Catalog
	sends, accepted, unbillable int
}

// account exports one account: an event in flight first, then what is
// left to bill.
func (p *pass) account(ctx context.Context, a Account, c *apikey.Consumer) error {
	e := p.e
	windows, err := p.closed(ctx, a)
	if err != nil || len(windows) == 0 {
		return err
	}
	key := a.String()
	for i := range windows {
		w := &windows[i]
		if w.Pending == 0 {
			continue
		}
		// An event or a cancellation in flight when the exporter stopped:
		// the same again.
		if c.StripeCustomerID == "" {
			p.unbillable++
			return nil
		}
		if !e.due(key, p.now) {
			return nil // backing off
		}
		p.sends++
		var done bool
		if w.Pending < 0 {
			done, err = p.cancel(ctx, key, w)
		} else {
			// Accepted: only the event is recorded, and the bill is worked
			// out again below. Refused for good: the windows with work are
			// set aside, or they would be sent again and again.
			done, err = p.send(ctx, a, c, w, w.Pending, nil, dueOf(windows))
		}
		if !done {
			return err
		}
		if windows, err = p.closed(ctx, a); err != nil {
			return err
		}
		break
	}

	st := StatementOf(a, windows, c, p.cat)
	var work []usage.Window
	corrective := true // every window with work was accounted before
	// What the work windows' changes did to the bill.
	change := st.Target - StatementOf(a, accountedView(windows), c, p.cat).Target
	for _, w := range st.Windows {
		if w.Due() {
			work = append(work, w)
			corrective = corrective && w.Exported
		}
	}
	if len(work) == 0 && st.Target <= st.Billed {
		return nil
	}
	if corrective && len(work) > 0 {
		e.corrected.Add(float64(len(work)))
	}
	last := &st.Windows[len(st.Windows)-1]
	value := st.Target - st.Billed
	closed := p.now.After(a.Period.End.Add(e.cfg.CorrectionGrace))
	if closed && corrective {
		// The period's invoice is final: count what cannot be put right.
		switch {
		case change > 0:
			e.uncorrectable.WithLabelValues("under").Add(float64(change))
		case change < 0:
			e.uncorrectable.WithLabelValues("over").Add(float64(-change))
		}
		e.cfg.Log.Warn("late settlement after the billing period closed", zap.String("account", key), zap.Int64("units", change))
		return e.cfg.Ledger.Commit(ctx, *last, 0, work)
	}
	// Billed more than is owed (a late refund): take back the period's
	// latest events Stripe can still cancel, then bill what is left. A
	// correction upwards replaces the latest event too, so that the
	// period's events stay few and the next correction can take back all
	// of it.
	replace := corrective && value > 0
	for (value < 0 || replace) && p.sends < maxSendsPerPass && c.StripeCustomerID != "" && e.due(key, p.now) {
		replace = false
		w := p.e.cancellable(st.Windows, p.now)
		if w == nil {
			break
		}
		if err := e.cfg.Ledger.Prepare(ctx, *w, -w.LastValue); err != nil {
			return err
		}
		p.sends++
		if done, err := p.cancel(ctx, key, w); !done {
			return err
		}
		value += w.LastValue
		w.LastValue = 0
	}
	if value <= 0 {
		// Nothing to bill now; units billed beyond what is owed and not
		// taken back are taken off the period's next event.
		if err := e.cfg.Ledger.Commit(ctx, *last, 0, work); err != nil {
			return err
		}
		e.events.WithLabelValues("zero").Add(float64(len(work)))
		return nil
	}
	if c.StripeCustomerID == "" {
		p.unbillable += len(work)
		e.events.WithLabelValues("unbillable").Add(float64(len(work)))
		return nil
	}
	if !e.due(key, p.now) {
		return nil
	}
	if err := e.cfg.Ledger.Prepare(ctx, *last, value); err != nil {
		return err
	}
	p.sends++
	_, err = p.send(ctx, a, c, last, value, work, work)
	return err
}

// cancelWithin is how old an event may be for levy to cancel it: Stripe
// cancels events within 24 hours of taking them.
const cancelWithin = 23 * time.Hour

// cancellable is the window of the period's latest event that Stripe can
// still cancel, or nil.
func (e *Exporter) cancellable(windows []usage.Window, now time.Time) *usage.Window {
	e.mu.Lock()
	defer e.mu.Unlock()
	var best *usage.Window
	for i := range windows {
		w := &windows[i]
		if w.LastValue > 0 && w.Events > 0 && now.Sub(w.LastSent) < cancelWithin && !e.noCancel[Identifier(*w, w.Events-1)] &&
			(best == nil || w.LastSent.After(best.LastSent)) {
			best = w
		}
	}
	return best
}

// cancel cancels w's last event (its cancellation prepared) and records
// it; done reports that Stripe no longer counts it.
func (p *pass) cancel(ctx context.Context, key string, w *usage.Window) (done bool, err error) {
	e := p.e
	id := Identifier(*w, w.Events-1)
	params := &stripe.BillingMeterEventAdjustmentParams{
		EventName: stripe.String(w.Meter),
		Type:      stripe.String(string(stripe.BillingMeterEventAdjustmentTypeCancel)),
		Cancel:    &stripe.BillingMeterEventAdjustmentCancelParams{Identifier: stripe.String(id)},
	}
	params.Context = ctx
	_, err = e.stripe.BillingMeterEventAdjustments.New(params)
	if err != nil && !alreadyCancelled(err) {
		if reason, permanent := Permanent(err); permanent {
			// Too old, or unknown: Stripe keeps counting it, and the
			// surplus is taken off the period's next event instead.
			e.cfg.Log.Warn("Stripe would not cancel a meter event", zap.String("identifier", id), zap.String("reason", reason))
			e.mu.Lock()
			e.noCancel[id] = true
			e.mu.Unlock()
			return false, e.cfg.Ledger.Prepare(ctx, *w, 0)
		}
		e.events.WithLabelValues("failed").Inc()
		e.failed(key, p.now)
		return false, err
	}
	if err := e.cfg.Ledger.Commit(ctx, *w, -w.LastValue, nil); err != nil {
		return false, err // the next pass cancels again: a no-op for Stripe
	}
	e.cancelled.Inc()
	e.cfg.Log.Debug("meter event cancelled", zap.String("identifier", id), zap.Int64("value", w.LastValue))
	return true, nil
}

// alreadyCancelled recognises Stripe's answer to cancelling an event
// again.
func alreadyCancelled(err error) bool {
	var serr *stripe.Error
	return errors.As(err, &serr) && serr.HTTPStatusCode == http.StatusBadRequest &&
		strings.Contains(strings.ToLower(serr.Msg), "already") && strings.Contains(strings.ToLower(serr.Msg), "cancel")
}

func dueOf(windows []usage.Window) []usage.Window {
	var out []usage.Window
	for _, w := range windows {
		if w.Due() {
			out = append(out, w)
		}
	}
	return out
}

// accountedView is windows as they were last accounted: what the bill
// was before the changes that made them due.
func accountedView(windows []usage.Window) []usage.Window {
	out := make([]usage.Window, len(windows))
	for i, w := range windows {
		if w.Exported || w.Rejected != "" {
			w.Units = w.Accounted
		} else {
			w.Units = 0
		}
		w.Rejected = ""
		out[i] = w
	}
	return out
}

// closed lists the account's closed windows, oldest first.
func (p *pass) closed(ctx context.Context, a Account) ([]usage.Window, error) {
	all, err := p.e.cfg.Ledger.Windows(ctx, a.Consumer, a.Period.Start, a.Period.End)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, w := range all {
		if w.Meter == a.Meter && !w.End().After(p.cutoff) {
			out = append(out, w)
		}
	}
	return out, nil
}

// send sends the event w identifies with value and records the outcome:
// accepted, the windows of work are accounted; refused for good, those of
// aside are set aside. sent reports that Stripe has it.
func (p *pass) send(ctx context.Context, a Account, c *apikey.Consumer, w *usage.Window, value int64, work, aside []usage.Window) (sent bool, err error) {
	e := p.e
	key := a.String()
	id := Identifier(*w, w.Events)
	// The window's last second, or the period's when the period ends
	// inside the window (an anchor off the window's edges): Stripe
	// invoices an event in the period its timestamp falls in.
	at := minTime(w.End(), a.Period.End).Add(-time.Second)
	err = e.post(ctx, w, value, c.StripeCustomerID, id, at)
	if reason, permanent := Permanent(err); permanent {
		e.cfg.Log.Error("Stripe refused a meter event for good; the windows are set aside (levy billing reconcile shows them)",
			zap.String("consumer", w.Consumer), zap.String("meter", w.Meter), zap.String("identifier", id),
			zap.Int64("value", value), zap.String("reason", reason))
		if err := e.cfg.Ledger.Reject(ctx, *w, reason, aside); err != nil {
			return false, err
		}
		e.events.WithLabelValues("rejected").Add(float64(max(len(aside), 1)))
		e.done(key)
		return false, nil
	}
	if err != nil {
		e.events.WithLabelValues("failed").Inc()
		e.failed(key, p.now)
		return false, err
	}
	if err := e.cfg.Ledger.Commit(ctx, *w, value, work); err != nil {
		// Stripe has it and the ledger still says pending: the next pass
		// sends the same identifier, is refused as a duplicate, and
		// commits then.
		return true, err
	}
	p.accepted++
	e.events.WithLabelValues("accepted").Add(float64(max(len(work), 1)))
	e.done(key)
	return true, nil
}

func (e *Exporter) post(ctx context.Context, w *usage.Window, value int64, customer, id string, at time.Time) error {
	params := &stripe.BillingMeterEventParams{
		EventName: stripe.String(w.Meter),
		Payload: map[string]string{
			"stripe_customer_id": customer,
			"value":              strconv.FormatInt(value, 10),
		},
		Identifier: stripe.String(id),
		Timestamp:  stripe.Int64(at.Unix()),
	}
	params.Context = ctx
	_, err := e.stripe.BillingMeterEvents.New(params)
	if IsDuplicate(err) {
		return nil // an earlier attempt got through: already billed once
	}
	if err != nil {
		return err
	}
	e.cfg.Log.Debug("meter event accepted", zap.String("consumer", w.Consumer), zap.String("meter", w.Meter),
		zap.Time("window", w.Start), zap.Int64("value", value), zap.String("identifier", id))
	return nil
}

// IsDuplicate recognises Stripe's refusal of a meter event whose
// identifier it already has: a 400 naming the identifier parameter, or
// one whose message says the event already exists (Stripe's documented
// answer), or the resource_already_exists code.
func IsDuplicate(err error) bool {
	var serr *stripe.Error
	if !errors.As(err, &serr) || serr.HTTPStatusCode != http.StatusBadRequest && serr.HTTPStatusCode != http.StatusConflict {
		return false
	}
	msg := strings.ToLower(serr.Msg)
	return serr.Param == "identifier" || serr.Code == "resource_already_exists" ||
		strings.Contains(msg, "already exists") && (strings.Contains(msg, "identifier") || strings.Contains(msg, "event"))
}

// Permanent reports whether Stripe refused a request for a reason that
// sending it again cannot fix (an invalid request: no such customer or
// meter, a timestamp too old), and why. Rate limits, server errors,
// network errors and authentication failures (an operator fixes the key,
// not the window) are retried.
func Permanent(err error) (reason string, permanent bool) {
	var serr *stripe.Error
	if !errors.As(err, &serr) {
		return "", false
	}
	switch serr.HTTPStatusCode {
	case http.StatusBadRequest, http.StatusNotFound, http.StatusUnprocessableEntity:
		reason = serr.Msg
		if reason == "" {
			reason = fmt.Sprintf("Stripe answered %d", serr.HTTPStatusCode)
		}
		if serr.Param != "" {
			reason += " (" + serr.Param + ")"
		}
		return reason, true
	}
	return "", false
}

// due reports whether an account's next attempt may run now.
func (e *Exporter) due(key string, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.backoff[key]
	return !ok || !now.Before(r.next)
}

// failed schedules the next attempt: 1s, 2s, 4s ... up to 5 minutes.
func (e *Exporter) failed(key string, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.backoff[key]
	r.attempts++
	wait := time.Second << min(r.attempts-1, 9)
	r.next = now.Add(min(wait, 5*time.Minute))
	e.backoff[key] = r
}

func (e *Exporter) done(key string) {
	e.mu.Lock()
	delete(e.backoff, key)
	e.mu.Unlock()
}
