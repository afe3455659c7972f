package billing_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	stripe "github.com/stripe/stripe-go/v76"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/usage"
)

func (r *rig) reconcile(t *testing.T, ledger usage.Ledger, fix bool) billing.ReconcileReport {
	t.Helper()
	rep, err := billing.Reconcile(context.Background(), billing.ReconcileConfig{
		Ledger: ledger, Consumer: r.people.get, Catalog: func() *plan.Catalog { return r.catalog },
		Stripe: billing.NewStripeClient("sk_test_levy", r.stripe.URL), Fix: fix,
		Log: zaptest.NewLogger(t), Clock: r.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// row finds the report's row of consumer (one account each here).
func row(t *testing.T, rep billing.ReconcileReport, consumer string) billing.ReconcileRow {
	t.Helper()
	var found []billing.ReconcileRow
	for _, r := range rep.Rows {
		if r.Consumer == consumer {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d rows for %s in %+v", len(found), consumer, rep.Rows)
	}
	return found[0]
}

// exported admits usage for acme (7: 4 beyond the 3 included) and beta
// (2 in one window, 3 in the next) and exports it: events of 4, 2 and 3.
func (r *rig) exported(t *testing.T, lim limiter.Limiter, ledger usage.Ledger) {
	t.Helper()
	e := r.exporter(t, ledger, nil, "a")
	r.admit(t, lim, "acme", 7)
	r.admit(t, lim, "beta", 2)
	r.clock.Advance(time.Minute)
	r.admit(t, lim, "beta", 3)
	for _, wait := range []time.Duration{5 * time.Second, 2 * time.Minute} {
		r.clock.Advance(wait)
		if _, err := e.ExportOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got := sent(t, r.stripe); len(got) != 3 || total(got) != 4+5 {
		t.Fatalf("exported %v", got)
	}
}

func TestReconcileFindsNoDifferenceAfterExport(t *testing.T) {
	r := newRig(t)
	r.exported(t, r.local, r.local)
	rep := r.reconcile(t, r.local, false)
	if rep.Differences != 0 || rep.Errors != 0 || len(rep.Rows) != 2 {
		t.Fatalf("report %+v", rep)
	}
	period := plan.PeriodAt(r.clock.Now(), plan.Month, time.Time{})
	tests := []struct {
		consumer, customer     string
		billed, target, stripe int64
	}{
		{"acme", "cus_acme", 4, 4, 4},
		{"beta", "cus_beta", 5, 5, 5},
	}
	for _, tt := range tests {
		got := row(t, rep, tt.consumer)
		if got.Status != billing.StatusOK || got.Customer != tt.customer || got.Meter != "api_calls" ||
			got.Billed != tt.billed || got.Target != tt.target || got.Stripe != tt.stripe || got.Difference != 0 || got.Pending != 0 ||
			!got.PeriodStart.Equal(period.Start) || !got.StripeFrom.Equal(period.Start) || !got.StripeTo.Equal(period.End) {
			t.Errorf("%s: %+v", tt.consumer, got)
		}
	}
}

// An event Stripe lost shows as a difference of exactly its value; --fix
// sends it once, and the next reconcile finds nothing.
func TestReconcileShowsALostEventAndFixSendsItOnce(t *testing.T) {
	r := newRig(t)
	r.exported(t, r.local, r.local)
	var lost string
	var value int64
	for id, v := range sent(t, r.stripe) {
		if v == 3 { // beta's second window
			lost, value = id, v
		}
	}
	if !r.stripe.Drop(lost) {
		t.Fatalf("no event %q", lost)
	}
	rep := r.reconcile(t, r.local, false)
	got := row(t, rep, "beta")
	if rep.Differences != 1 || got.Status != billing.StatusMissing || got.Difference != -value || got.Stripe != 5-value || got.Billed != 5 {
		t.Fatalf("after the drop: %+v", rep)
	}
	if row(t, rep, "acme").Status != billing.StatusOK {
		t.Fatalf("acme: %+v", row(t, rep, "acme"))
	}

	// Stripe's summaries lag: a fix right after the export sends nothing.
	before := len(r.stripe.Events())
	if got := row(t, r.reconcile(t, r.local, true), "beta"); got.Fix != nil || got.Status != billing.StatusMissing {
		t.Fatalf("fixed too early: %+v", got)
	}
	r.clock.Advance(10 * time.Minute)
	rep = r.reconcile(t, r.local, true)
	got = row(t, rep, "beta")
	if got.Status != billing.StatusFixed || got.Fix == nil || !got.Fix.Sent || got.Fix.Value != value || rep.Differences != 0 || rep.Fixed != 1 {
		t.Fatalf("fix: %+v %+v", rep, got.Fix)
	}
	if !got.Fix.Timestamp.Before(r.clock.Now()) || got.Fix.Timestamp.Before(got.StripeFrom) {
		t.Fatalf("fix timestamp %s outside the period", got.Fix.Timestamp)
	}
	if n := len(r.stripe.Events()); n != before+1 {
		t.Fatalf("%d events after the fix, want %d", n, before+1)
	}
	rep = r.reconcile(t, r.local, true)
	if rep.Differences != 0 || rep.Fixed != 0 || row(t, rep, "beta").Status != billing.StatusOK || len(r.stripe.Events()) != before+1 {
		t.Fatalf("after the fix: %+v", rep)
	}
	seen := map[string]bool{}
	for _, e := range r.stripe.Events() {
		if seen[e.Identifier] {
			t.Fatalf("identifier %s twice", e.Identifier)
		}
		seen[e.Identifier] = true
	}
}

// A fix sent again before Stripe's summaries show the first one carries
// the same identifier, which Stripe refuses: it never bills twice.
func TestReconcileFixAgainWithTheSameViewOfStripeSendsTheSameIdentifier(t *testing.T) {
	r := newRig(t)
	r.exported(t, r.local, r.local)
	for id, v := range sent(t, r.stripe) {
		if v == 2 {
			r.stripe.Drop(id)
		}
	}
	r.clock.Advance(10 * time.Minute)
	first := row(t, r.reconcile(t, r.local, true), "beta").Fix
	if first == nil || !first.Sent || first.Value != 2 {
		t.Fatalf("first fix %+v", first)
	}
	// The fix is out of Stripe's summary (as if not aggregated yet), and
	// Stripe still knows its identifier.
	_, err := billing.NewStripeClient("sk_test_levy", r.stripe.URL).BillingMeterEventAdjustments.New(&stripe.BillingMeterEventAdjustmentParams{
		EventName: stripe.String("api_calls"), Type: stripe.String("cancel"),
		Cancel: &stripe.BillingMeterEventAdjustmentCancelParams{Identifier: stripe.String(first.Identifier)},
	})
	if err != nil {
		t.Fatal(err)
	}
	again := row(t, r.reconcile(t, r.local, true), "beta").Fix
	calls := r.stripe.Calls(meterPath)
	last := calls[len(calls)-1]
	if again == nil || again.Identifier != first.Identifier || !again.Sent ||
		last.Status != 400 || last.Form.Get("identifier") != first.Identifier {
		t.Fatalf("second fix %+v, last call %+v", again, last)
	}
	want := billing.FixIdentifier(billing.Account{Consumer: "beta", Meter: "api_calls",
		Period: plan.PeriodAt(r.clock.Now(), plan.Month, time.Time{})}, 3)
	if first.Identifier != want {
		t.Fatalf("fix identifier %q, want %q", first.Identifier, want)
	}
}

func sendEvent(r *rig, customer, id string, value int64) error {
	_, err := billing.NewStripeClient("sk_test_levy", r.stripe.URL).BillingMeterEvents.New(&stripe.BillingMeterEventParams{
		EventName: stripe.String("api_calls"), Identifier: stripe.String(id), Timestamp: stripe.Int64(r.clock.Now().Unix() - 60),
		Payload: map[string]string{"stripe_customer_id": customer, "value": strconv.FormatInt(value, 10)},
	})
	return err
}

// Stripe holding more than levy billed is reported, and never "fixed"
// with negative usage.
func TestReconcileReportsASurplusAndDoesNotFixIt(t *testing.T) {
	r := newRig(t)
	r.exported(t, r.local, r.local)
	if err := sendEvent(r, "cus_acme", "someone-else", 6); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(10 * time.Minute)
	before := len(r.stripe.Events())
	rep := r.reconcile(t, r.local, true)
	got := row(t, rep, "acme")
	if got.Status != billing.StatusSurplus || got.Difference != 6 || got.Fix != nil || rep.Differences != 1 || len(r.stripe.Events()) != before {
		t.Fatalf("surplus: %+v", got)
	}
}

// Work the exporter has not done is levy's pending column, not a
// difference with Stripe; a consumer without a Stripe customer is reported
// as such and Stripe is not asked.
func TestReconcileKeepsPendingWorkAndConsumersWithoutCustomerApart(t *testing.T) {
	r := newRig(t)
	r.people.set(&apikey.Consumer{ID: "nocard", Plan: "payg0"})
	r.admit(t, r.local, "nocard", 4)
	r.admit(t, r.local, "beta", 2)
	r.clock.Advance(2 * time.Minute) // closed, not exported
	calls := len(r.stripe.Calls(""))
	rep := r.reconcile(t, r.local, false)
	if rep.Differences != 0 {
		t.Fatalf("report %+v", rep)
	}
	if got := row(t, rep, "beta"); got.Status != billing.StatusOK || got.Pending != 2 || got.Target != 2 || got.Billed != 0 {
		t.Fatalf("beta: %+v", got)
	}
	if got := row(t, rep, "nocard"); got.Status != billing.StatusNoCustomer || got.Pending != 4 {
		t.Fatalf("nocard: %+v", got)
	}
	for _, c := range r.stripe.Calls("")[calls:] {
		if c.Path != "/v1/billing/meters" && c.Form.Get("customer") != "cus_beta" {
			t.Fatalf("Stripe asked without a customer: %+v", c)
		}
	}
}

func TestReconcileOneConsumerAndAnUnknownOne(t *testing.T) {
	r := newRig(t)
	r.exported(t, r.local, r.local)
	cfg := billing.ReconcileConfig{Ledger: r.local, Consumer: r.people.get, Catalog: func() *plan.Catalog { return r.catalog },
		Stripe: billing.NewStripeClient("sk_test_levy", r.stripe.URL), Clock: r.clock.Now, ConsumerID: "acme"}
	rep, err := billing.Reconcile(context.Background(), cfg)
	if err != nil || len(rep.Rows) != 1 || rep.Rows[0].Consumer != "acme" || rep.Rows[0].Status != billing.StatusOK {
		t.Fatalf("acme only: %+v %v", rep, err)
	}
	cfg.ConsumerID = "nobody"
	if _, err := billing.Reconcile(context.Background(), cfg); !errors.Is(err, apikey.ErrNotFound) {
		t.Fatalf("unknown consumer: %v", err)
	}
}

// A month with no usage still shows the account of each consumer's plan,
// so usage Stripe holds that levy lost would show.
func TestReconcileAPastMonthAsksStripeForTheConsumersPlanMeter(t *testing.T) {
	r := newRig(t)
	r.exported(t, r.local, r.local)
	month := plan.PeriodAt(r.clock.Now(), plan.Month, time.Time{}).Start.AddDate(0, -1, 0)
	rep, err := billing.Reconcile(context.Background(), billing.ReconcileConfig{Ledger: r.local, Consumer: r.people.get,
		Catalog: func() *plan.Catalog { return r.catalog }, Stripe: billing.NewStripeClient("sk_test_levy", r.stripe.URL),
		Clock: r.clock.Now, ConsumerID: "beta", Month: month})
	if err != nil || rep.Period != month.Format("2006-01") || len(rep.Rows) != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
	if got := rep.Rows[0]; got.Status != billing.StatusOK || got.Billed != 0 || !got.PeriodStart.Equal(month) {
		t.Fatalf("row %+v", got)
	}
}

func TestReconcileOverTheRedisLedger(t *testing.T) {
	r := newRig(t)
	client := redistest.Start(t).Client()
	lim := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: r.clock.Now, Timeout: 5 * time.Second})
	ledger := limiter.NewRedisLedger(client, time.Minute)
	r.exported(t, lim, ledger)
	rep := r.reconcile(t, ledger, false)
	if rep.Differences != 0 || len(rep.Rows) != 2 || row(t, rep, "beta").Stripe != 5 {
		t.Fatalf("report %+v", rep)
	}
	for id, v := range sent(t, r.stripe) {
		if v == 4 {
			r.stripe.Drop(id)
		}
	}
	if got := row(t, r.reconcile(t, ledger, false), "acme"); got.Difference != -4 || got.Status != billing.StatusMissing {
		t.Fatalf("acme after the drop: %+v", got)
	}
}

func TestLedgersListTheConsumersWithWindowsInARange(t *testing.T) {
	r := newRig(t)
	client := redistest.Start(t).Client()
	lim := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: r.clock.Now, Timeout: 5 * time.Second})
	start := r.clock.Now()
	for _, l := range []limiter.Limiter{r.local, lim} {
		r.admit(t, l, "acme", 1)
	}
	r.clock.Advance(time.Hour)
	for _, l := range []limiter.Limiter{r.local, lim} {
		r.admit(t, l, "beta", 1)
	}
	tests := []struct {
		name     string
		from, to time.Time
		want     string
	}{
		{"both", start, start.Add(2 * time.Hour), "acme,beta"},
		{"the first hour", start, start.Add(time.Hour), "acme"},
		{"to is exclusive", start.Add(time.Minute), start.Add(time.Hour), ""},
	}
	ledgers := map[string]billing.ConsumerLister{"local": r.local, "redis": limiter.NewRedisLedger(client, time.Minute)}
	for name, l := range ledgers {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				got, err := l.Consumers(context.Background(), tt.from, tt.to)
				if err != nil || join(got) != tt.want {
					t.Fatalf("got %v (%v), want %q", got, err, tt.want)
				}
			})
		}
	}
}

func join(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}

// An event Stripe accepted and levy has not recorded yet is in flight, not
// a difference: the exporter's next pass records it.
func TestReconcileCountsAnEventInFlightAsNoDifference(t *testing.T) {
	r := newRig(t)
	r.admit(t, r.local, "beta", 6)
	r.clock.Advance(2 * time.Minute)
	if _, err := r.exporter(t, &forgetful{Ledger: r.local}, nil, "a").ExportOnce(context.Background()); err == nil {
		t.Fatal("the lost commit was not reported")
	}
	rep := r.reconcile(t, r.local, true)
	got := row(t, rep, "beta")
	if got.Status != billing.StatusInFlight || got.Difference != 6 || got.Billed != 0 || rep.Differences != 0 || got.Fix != nil {
		t.Fatalf("in flight: %+v", got)
	}
}

// lostCancel loses the record of the first cancellation, as a replica
// killed between Stripe cancelling an event and recording it would.
type lostCancel struct {
	usage.Ledger
	lost bool
}

func (l *lostCancel) Commit(ctx context.Context, w usage.Window, value int64, accounted []usage.Window) error {
	if value < 0 && !l.lost {
		l.lost = true
		return errors.New("killed")
	}
	return l.Ledger.Commit(ctx, w, value, accounted)
}

// A cancellation Stripe did and levy has not recorded yet is in flight,
// like an event: fix must not bill its units again, or the customer pays
// them twice once the exporter records the cancellation.
func TestReconcileDoesNotFixACancellationInFlight(t *testing.T) {
	r := newRig(t)
	start := r.clock.Now()
	r.admit(t, r.local, "beta", 5)
	r.clock.Advance(2 * time.Minute)
	e := r.exporter(t, &lostCancel{Ledger: r.local}, nil, "a")
	if _, err := e.ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.settle(t, r.local, "beta", start, -4) // four refunded, late
	r.clock.Advance(time.Minute)
	if _, err := e.ExportOnce(context.Background()); err == nil {
		t.Fatal("the lost cancellation was not reported")
	}
	r.clock.Advance(10 * time.Minute) // Stripe's summaries have settled
	rep := r.reconcile(t, r.local, true)
	if got := row(t, rep, "beta"); got.Fix != nil || got.Status != billing.StatusInFlight {
		t.Fatalf("a cancellation in flight: %+v %+v", got, got.Fix)
	}
	if _, err := e.ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := total(sent(t, r.stripe)); got != 1 {
		t.Fatalf("Stripe holds %d, want 1 (%v)", got, sent(t, r.stripe))
	}
}
