package billing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	stripe "github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// ConsumerLister is a ledger that can say which consumers it has windows
// for: both of levy's ledgers can. Reconcile uses it to find the consumers
// to reconcile when it is not given one.
type ConsumerLister interface {
	// Consumers lists the consumers with a window that starts in
	// [from, to), each once.
	Consumers(ctx context.Context, from, to time.Time) ([]string, error)
}

var (
	_ ConsumerLister = (*limiter.Local)(nil)
	_ ConsumerLister = (*limiter.RedisLedger)(nil)
)

// ReconcileConfig says what Reconcile compares, and with what.
type ReconcileConfig struct {
	// Ledger is levy's side; without a ConsumerID it must be a
	// ConsumerLister.
	Ledger usage.Ledger
	// Consumer finds a consumer (its Stripe customer id, billing anchor
	// and plan).
	Consumer func(id string) (*apikey.Consumer, bool)
	Catalog  func() *plan.Catalog
	// Stripe is Stripe's side (NewStripeClient).
	Stripe *client.API
	// Month selects the billing periods that start in the calendar month
	// (UTC) holding it, or, for a period longer than a month, the one that
	// holds the whole month; zero selects the periods in progress now.
	Month time.Time
	// ConsumerID, when set, reconciles that consumer only
	// (apikey.ErrNotFound when levy does not know it).
	ConsumerID string
	// Fix sends Stripe, for each account where it holds less than levy
	// billed, one meter event with what is missing.
	Fix bool
	// Quiet is how long after its window ends an event is trusted to show
	// in Stripe's meter event summaries, which Stripe works out
	// asynchronously (default 10m): Fix sends only what is missing beyond
	// the events of more recent windows.
	Quiet time.Duration
	Log   *zap.Logger
	Clock func() time.Time
}

// Row statuses.
const (
	// StatusOK: Stripe holds what levy billed.
	StatusOK = "ok"
	// StatusMissing: Stripe holds less than levy billed (an event lost,
	// cancelled or never aggregated); --fix sends the rest.
	StatusMissing = "missing"
	// StatusSurplus: Stripe holds more than levy billed. levy never sends
	// a negative event: a human decides (an event may be cancelled within
	// 24 hours of Stripe receiving it, through meter_event_adjustments).
	StatusSurplus = "surplus"
	// StatusInFlight: Stripe holds more by exactly the event levy sent, or
	// less by exactly the event levy cancelled, and levy has not recorded
	// it yet; the exporter's next pass records it.
	StatusInFlight = "in_flight"
	// StatusFixed: Stripe held less, and Fix sent the rest.
	StatusFixed = "fixed"
	// StatusNoCustomer: the consumer has no Stripe customer id, so Stripe
	// holds nothing to compare (the exporter keeps its usage).
	StatusNoCustomer = "no_customer"
	// StatusError: Stripe could not be asked; Note says why.
	StatusError = "error"
)

// ReconcileRow is one account: a consumer's billing period on one meter,
// as levy's ledger and Stripe have it.
type ReconcileRow struct {
	Consumer    string    `json:"consumer"`
	Meter       string    `json:"meter"`
	Customer    string    `json:"stripe_customer_id,omitempty"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	// Billed is what levy recorded Stripe accepted (Statement.Billed);
	// Target what the account should bill (Statement.Target); Pending
	// their difference: export work not done yet, or windows Stripe
	// refused. Pending is not a difference with Stripe: the exporter owes
	// it, and levy usage and the export metrics show it.
	Billed  int64 `json:"billed"`
	Target  int64 `json:"target"`
	Pending int64 `json:"pending"`
	// Stripe is the sum of Stripe's meter event summaries for the
	// customer, meter and period (StripeFrom to StripeTo, on minutes);
	// Difference is Stripe - Billed.
	Stripe     int64         `json:"stripe"`
	StripeFrom time.Time     `json:"stripe_from"`
	StripeTo   time.Time     `json:"stripe_to"`
	Difference int64         `json:"difference"`
	Status     string        `json:"status"`
	Note       string        `json:"note,omitempty"`
	Fix        *ReconcileFix `json:"fix,omitempty"`
}

// Differs reports whether the row is a difference between levy and
// Stripe that nobody has put right.
func (r ReconcileRow) Differs() bool { return r.Status == StatusMissing || r.Status == StatusSurplus }

// ReconcileFix is a meter event Reconcile sent for what Stripe was
// missing.
type ReconcileFix struct {
	Identifier string    `json:"identifier"`
	Value      int64     `json:"value"`
	Timestamp  time.Time `json:"timestamp"`
	// Sent: Stripe has it (accepted now, or by an earlier reconcile with
	// the same view of Stripe); otherwise Error says why not.
	Sent  bool   `json:"sent"`
	Error string `json:"error,omitempty"`
}

// ReconcileReport is Reconcile's answer.
type ReconcileReport struct {
	// Period is the selected month (2026-11), or "current".
	Period string         `json:"period"`
	At     time.Time      `json:"at"`
	Rows   []ReconcileRow `json:"rows"`
	// Differences counts the rows where Stripe and levy differ and no fix
	// put it right; Errors those Stripe could not be asked about; Fixed
	// those a fix put right.
	Differences int `json:"differences"`
	Errors      int `json:"errors"`
	Fixed       int `json:"fixed"`
}

// MonthLayout is how a month is written: 2026-11.
const MonthLayout = "2006-01"

// ParseMonth reads a month (2026-11).
func ParseMonth(s string) (time.Time, error) {
	t, err := time.Parse(MonthLayout, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("period %q: want a month such as 2026-11", s)
	}
	return t, nil
}

// stripeMaxAge is how old an event's timestamp may be for Stripe.
const stripeMaxAge = 35 * 24 * time.Hour

// Reconcile compares, per account (consumer, meter, billing period) in the
// selected periods, what levy's ledger says Stripe accepted with what
// Stripe's meter event summaries hold, and with Fix sends what Stripe is
// missing. Failing to ask Stripe about one account is reported in its
// row; the error is for what stops the whole comparison.
func Reconcile(ctx context.Context, cfg ReconcileConfig) (ReconcileReport, error) {
	if cfg.Ledger == nil || cfg.Consumer == nil || cfg.Stripe == nil {
		return ReconcileReport{}, errors.New("reconcile needs a ledger, a way to find consumers and a Stripe client")
	}
	r := newReconciler(cfg)
	rep := ReconcileReport{Period: "current", At: r.now}
	if !cfg.Month.IsZero() {
		rep.Period = cfg.Month.UTC().Format(MonthLayout)
	}
	ids, err := r.consumers(ctx)
	if err != nil {
		return rep, err
	}
	for _, id := range ids {
		rows, err := r.consumer(ctx, id)
		if err != nil {
			return rep, fmt.Errorf("consumer %s: %w", id, err)
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	for _, row := range rep.Rows {
		switch {
		case row.Differs():
			rep.Differences++
		case row.Status == StatusError:
			rep.Errors++
		case row.Status == StatusFixed:
			rep.Fixed++
		}
	}
	return rep, nil
}

// reconciler is one Reconcile call's state.
type reconciler struct {
	cfg ReconcileConfig
	now time.Time
	cat *plan.Catalog
	sel selection
	// meters maps event_name to Stripe meter id once listed; metersErr is
	// why they could not be (not asked again in the same call).
	meters    map[string]string
	metersErr error
}

func newReconciler(cfg ReconcileConfig) *reconciler {
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Quiet <= 0 {
		cfg.Quiet = 10 * time.Minute
	}
	r := &reconciler{cfg: cfg, now: cfg.Clock().UTC()}
	if cfg.Catalog != nil {
		r.cat = cfg.Catalog()
	}
	r.sel = selection{now: r.now}
	if !cfg.Month.IsZero() {
		m := cfg.Month.UTC()
		r.sel.month = time.Date(m.Year(), m.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	return r
}

// consumers are the consumers to reconcile: the one asked for, or those
// with ledger windows that may fall in the selected periods.
func (r *reconciler) consumers(ctx context.Context) ([]string, error) {
	if id := r.cfg.ConsumerID; id != "" {
		if _, ok := r.cfg.Consumer(id); !ok {
			return nil, fmt.Errorf("consumer %q: %w", id, apikey.ErrNotFound)
		}
		return []string{id}, nil
	}
	lister, ok := r.cfg.Ledger.(ConsumerLister)
	if !ok {
		return nil, errors.New("the ledger cannot list its consumers: name a consumer")
	}
	from, to := r.sel.widest()
	ids, err := lister.Consumers(ctx, from, to)
	if err != nil {
		return nil, fmt.Errorf("list the ledger's consumers: %w", err)
	}
	sort.Strings(ids)
	return ids, nil
}

// consumer reconciles one consumer's accounts in the selected periods.
func (r *reconciler) consumer(ctx context.Context, id string) ([]ReconcileRow, error) {
	c, _ := r.cfg.Consumer(id)
	var anchor time.Time
	if c != nil {
		anchor = c.PeriodAnchor
	}
	from, to := r.sel.span(anchor)
	windows, err := r.cfg.Ledger.Windows(ctx, id, from, to)
	if err != nil {
		return nil, fmt.Errorf("ledger windows: %w", err)
	}
	accounts, order := r.accounts(id, c, windows)
	rows := make([]ReconcileRow, 0, len(order))
	for _, a := range order {
		rows = append(rows, r.account(ctx, StatementOf(a, accounts[a], c, r.cat), c))
	}
	return rows, nil
}

// accounts groups a consumer's windows (oldest first) by account, keeping
// the selected ones, and adds the account of the consumer's current plan
// when it bills a meter and has no window yet, so that usage Stripe holds
// and levy does not still shows. order is by meter, then period.
func (r *reconciler) accounts(id string, c *apikey.Consumer, windows []usage.Window) (map[Account][]usage.Window, []Account) {
	accounts := map[Account][]usage.Window{}
	var anchor time.Time
	if c != nil {
		anchor = c.PeriodAnchor
	}
	for _, w := range windows {
		a := AccountOf(&w, TermsOf(&w, c, r.cat), c)
		if r.sel.selects(a.Period) {
			accounts[a] = append(accounts[a], w)
		}
	}
	if c != nil && r.cat != nil {
		if p, ok := r.cat.Get(c.Plan); ok {
			if t := usage.TermsOf(p); t.Billed && (t.Period == plan.Month || t.Period == plan.Year) {
				for _, period := range r.sel.periods(t.Period, anchor) {
					a := Account{Consumer: id, Meter: t.Meter, Period: period}
					if _, seen := accounts[a]; !seen && !period.Start.After(r.now) {
						accounts[a] = nil
					}
				}
			}
		}
	}
	order := make([]Account, 0, len(accounts))
	for a := range accounts {
		order = append(order, a)
	}
	sort.Slice(order, func(i, j int) bool {
		if order[i].Meter != order[j].Meter {
			return order[i].Meter < order[j].Meter
		}
		return order[i].Period.Start.Before(order[j].Period.Start)
	})
	return accounts, order
}

// account compares one account's statement with Stripe.
func (r *reconciler) account(ctx context.Context, st Statement, c *apikey.Consumer) ReconcileRow {
	a := st.Account
	row := ReconcileRow{Consumer: a.Consumer, Meter: a.Meter, PeriodStart: a.Period.Start, PeriodEnd: a.Period.End,
		Billed: st.Billed, Target: st.Target, Pending: st.Target - st.Billed}
	row.StripeFrom, row.StripeTo = stripeRange(a.Period, windowSize(st.Windows))
	switch {
	case c == nil:
		row.Status, row.Note = StatusNoCustomer, "levy does not know this consumer any more"
		return row
	case c.StripeCustomerID == "":
		row.Status, row.Note = StatusNoCustomer, "no Stripe customer id: nothing in Stripe to compare"
		return row
	}
	row.Customer = c.StripeCustomerID
	meter, err := r.meterID(ctx, a.Meter)
	if err == nil && meter != "" {
		row.Stripe, err = r.summary(ctx, meter, row)
	}
	if err != nil {
		row.Status, row.Note = StatusError, "ask Stripe: "+err.Error()
		return row
	}
	row.Difference = row.Stripe - row.Billed
	inflight := int64(0)
	for _, w := range st.Windows {
		inflight += w.Pending
	}
	switch {
	case row.Difference == 0:
		row.Status = StatusOK
	case row.Difference == inflight:
		// An event (positive) or a cancellation (negative) Stripe may
		// have done that levy has not recorded yet.
		row.Status, row.Note = StatusInFlight, "an event or cancellation levy sent is not recorded yet; the exporter's next pass records it"
	case row.Difference > 0:
		row.Status, row.Note = StatusSurplus, "Stripe holds more than levy billed: levy never sends negative usage; check the events (one can be cancelled within 24h of Stripe receiving it)"
	default:
		row.Status = StatusMissing
	}
	if meter == "" {
		row.Note = "Stripe has no meter with event_name " + a.Meter
	}
	if r.cfg.Fix && row.Status == StatusMissing && meter != "" {
		r.fix(ctx, &row, st, inflight)
	}
	return row
}

// windowSize is the size of the account's windows (a minute when it has
// none).
func windowSize(ws []usage.Window) time.Duration {
	for _, w := range ws {
		if w.Size > 0 {
			return w.Size
		}
	}
	return time.Minute
}

// stripeRange is the range of event timestamps Stripe is asked about for a
// period. Stripe wants both ends on a minute. The exporter stamps an event
// with the last second of a window that starts in the period (or of the
// period, when it ends inside the window), so the range
// runs from the first window boundary at or after each end of the period,
// rounded up to a minute: exactly the period for calendar periods and
// anchors on a minute, and, for windows of whole minutes, exactly the
// period's events whatever the anchor. (Windows shorter than a minute and
// an anchor off the minute can put a boundary minute's events in the
// neighbouring period.)
func stripeRange(p plan.Period, size time.Duration) (from, to time.Time) {
	edge := func(t time.Time) time.Time {
		sec := int64(max(size/time.Second, 1))
		n := t.Unix()
		n = (n + sec - 1) / sec * sec // the first window boundary at or after t
		n = (n + 59) / 60 * 60        // on a minute
		return time.Unix(n, 0).UTC()
	}
	return edge(p.Start), edge(p.End)
}

// meterID finds the Stripe meter whose event_name is meter ("" when there
// is none), listing Stripe's meters once per Reconcile: an active meter
// wins over an inactive one.
func (r *reconciler) meterID(ctx context.Context, meter string) (string, error) {
	if r.metersErr != nil {
		return "", r.metersErr
	}
	if r.meters == nil {
		params := &stripe.BillingMeterListParams{}
		params.Context = ctx
		it := r.cfg.Stripe.BillingMeters.List(params)
		meters := map[string]string{}
		for it.Next() {
			m := it.BillingMeter()
			if _, seen := meters[m.EventName]; !seen || m.Status == stripe.BillingMeterStatusActive {
				meters[m.EventName] = m.ID
			}
		}
		if err := it.Err(); err != nil {
			r.metersErr = fmt.Errorf("list billing meters: %w", err)
			return "", r.metersErr
		}
		r.meters = meters
	}
	return r.meters[meter], nil
}

// summary sums Stripe's meter event summaries for the row's customer and
// range.
func (r *reconciler) summary(ctx context.Context, meter string, row ReconcileRow) (int64, error) {
	params := &stripe.BillingMeterEventSummaryListParams{
		ID:        stripe.String(meter),
		Customer:  stripe.String(row.Customer),
		StartTime: stripe.Int64(row.StripeFrom.Unix()),
		EndTime:   stripe.Int64(row.StripeTo.Unix()),
	}
	params.Context = ctx
	it := r.cfg.Stripe.BillingMeterEventSummaries.List(params)
	var sum float64
	for it.Next() {
		sum += it.BillingMeterEventSummary().AggregatedValue
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("meter event summaries of %s: %w", meter, err)
	}
	return int64(math.Round(sum)), nil
}

// fix sends one meter event with what Stripe is missing of the events of
// windows that ended at least Quiet ago: more recent ones may not be in
// Stripe's summaries yet. The identifier is made of the account and
// Stripe's total, so that running fix again before Stripe's summaries show
// the first one sends the same identifier, which Stripe refuses.
func (r *reconciler) fix(ctx context.Context, row *ReconcileRow, st Statement, inflight int64) {
	if inflight != 0 {
		row.Note = "an event or cancellation is in flight: fix after the exporter's next pass"
		return
	}
	var settled int64
	for _, w := range st.Windows {
		if !w.End().After(r.now.Add(-r.cfg.Quiet)) {
			settled += w.Billed
		}
	}
	value := settled - row.Stripe
	if value <= 0 {
		row.Note = fmt.Sprintf("recent events may not be in Stripe's summaries yet: fix again %s after the last window", r.cfg.Quiet)
		return
	}
	ts := minTime(r.now, row.PeriodEnd).Add(-time.Second)
	if ts.Before(row.StripeFrom) {
		ts = row.StripeFrom
	}
	f := &ReconcileFix{Identifier: FixIdentifier(st.Account, row.Stripe), Value: value, Timestamp: ts}
	row.Fix = f
	if r.now.Sub(ts) > stripeMaxAge {
		f.Error = "the period is older than Stripe takes usage for (35 days)"
		return
	}
	params := &stripe.BillingMeterEventParams{
		EventName: stripe.String(row.Meter),
		Payload: map[string]string{
			"stripe_customer_id": row.Customer,
			"value":              strconv.FormatInt(value, 10),
		},
		Identifier: stripe.String(f.Identifier),
		Timestamp:  stripe.Int64(ts.Unix()),
	}
	params.Context = ctx
	_, err := r.cfg.Stripe.BillingMeterEvents.New(params)
	if err != nil && !IsDuplicate(err) {
		f.Error = err.Error()
		r.cfg.Log.Warn("reconcile fix refused", zap.String("consumer", row.Consumer), zap.String("meter", row.Meter),
			zap.String("identifier", f.Identifier), zap.Int64("value", value), zap.Error(err))
		return
	}
	f.Sent = true
	r.cfg.Log.Info("reconcile fix sent", zap.String("consumer", row.Consumer), zap.String("meter", row.Meter),
		zap.String("identifier", f.Identifier), zap.Int64("value", value), zap.Bool("duplicate", err != nil))
	if value == -row.Difference {
		row.Status = StatusFixed
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// FixIdentifier names the meter event that puts right what Stripe is
// missing of account a when it holds stripeTotal: the same for the same
// view of Stripe, a new one once Stripe's total moved.
func FixIdentifier(a Account, stripeTotal int64) string {
	id := "levy:fix:" + a.Consumer + ":" + a.Meter + ":" + strconv.FormatInt(a.Period.Start.Unix(), 10) + ":" +
		strconv.FormatInt(stripeTotal, 10)
	if len(id) <= 100 { // Stripe's limit
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "levy:fix:" + hex.EncodeToString(sum[:20])
}

// selection is the billing periods a Reconcile looks at.
type selection struct {
	month time.Time // first instant of the month; zero: the current periods
	now   time.Time
}

// units are every period unit a window's terms can have.
var units = []plan.Unit{plan.Hour, plan.Day, plan.Week, plan.Month, plan.Year}

// periods lists the selected periods of unit for a consumer anchored at
// anchor: the one in progress now, or those that start in the month (the
// one that holds the month when none does).
func (s selection) periods(unit plan.Unit, anchor time.Time) []plan.Period {
	if s.month.IsZero() {
		return []plan.Period{plan.PeriodAt(s.now, unit, anchor)}
	}
	end := s.month.AddDate(0, 1, 0)
	first := plan.PeriodAt(s.month, unit, anchor)
	var out []plan.Period
	for p := first; p.Start.Before(end); p = plan.PeriodAt(p.End, unit, anchor) {
		if !p.Start.Before(s.month) {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		out = append(out, first)
	}
	return out
}

// selects reports whether p is a selected period.
func (s selection) selects(p plan.Period) bool {
	if s.month.IsZero() {
		return p.Contains(s.now)
	}
	end := s.month.AddDate(0, 1, 0)
	if !p.Start.Before(s.month) && p.Start.Before(end) {
		return true
	}
	// A period that holds the whole month: none starts in it.
	return p.Start.Before(s.month) && !p.End.Before(end)
}

// span is the range of window starts that can hold a selected period's
// windows, for a consumer anchored at anchor.
func (s selection) span(anchor time.Time) (from, to time.Time) {
	for _, u := range units {
		for _, p := range s.periods(u, anchor) {
			if from.IsZero() || p.Start.Before(from) {
				from = p.Start
			}
			if p.End.After(to) {
				to = p.End
			}
		}
	}
	return from, to
}

// widest is span for any anchor: a year and a day either side.
func (s selection) widest() (from, to time.Time) {
	if s.month.IsZero() {
		return s.now.AddDate(-1, 0, -1), s.now.Add(time.Hour)
	}
	return s.month.AddDate(-1, 0, -1), s.month.AddDate(1, 1, 1)
}
