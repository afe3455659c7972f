package billing_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/stripetest"
	"github.com/levyhq/levy/pkg/usage"
)

const meterPath = "/v1/billing/meter_events"

type consumers struct {
	mu sync.Mutex
	m  map[string]*apikey.Consumer
}

func (c *consumers) get(id string) (*apikey.Consumer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[id]
	return v, ok
}

func (c *consumers) set(v *apikey.Consumer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[v.ID] = v
}

// admit decides n requests of cost 1 for consumer on its current plan,
// counting the ledger as ext_authz does.
func (r *rig) admit(t *testing.T, lim limiter.Limiter, consumer string, n int) {
	t.Helper()
	c, _ := r.people.get(consumer)
	p, _ := r.catalog.Get(c.Plan)
	for i := 0; i < n; i++ {
		limits := []limiter.Limit{
			{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey(consumer, usage.TermsOf(p)), Cost: 1, WindowSize: time.Minute},
		}
		if d, err := lim.Decide(context.Background(), limits); err != nil || !d.OK {
			t.Fatalf("admit: %v %v", d.OK, err)
		}
	}
}

// settle applies access-log settlements of units (negative: refunds) to
// consumer's requests admitted at `at` on its current plan.
func (r *rig) settle(t *testing.T, ledger usage.Ledger, consumer string, at time.Time, units int64) {
	t.Helper()
	c, _ := r.people.get(consumer)
	p, _ := r.catalog.Get(c.Plan)
	a := usage.Adjustment{Consumer: consumer, Meter: p.Meter, Terms: usage.TermsOf(p), At: at, Units: units}
	if units < 0 {
		a.Refunded = -units
	} else {
		a.Reported = units
	}
	if err := ledger.Adjust(context.Background(), []usage.Adjustment{a}); err != nil {
		t.Fatal(err)
	}
}

func due(t *testing.T, ledger usage.Ledger, before time.Time) []usage.Window {
	t.Helper()
	ws, err := ledger.Due(context.Background(), before)
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

// catalog: payg3 includes 3 units a month, payg0 none, pro is a tiered
// plan with a hard quota (never billed per unit).
func catalog(t *testing.T) *plan.Catalog {
	t.Helper()
	c, err := plan.NewCatalog(
		&plan.Plan{Name: "payg3", Model: plan.PayG, Meter: "api_calls", Quota: &plan.Quota{Requests: 3, Period: plan.Month, Enforcement: plan.Soft}},
		&plan.Plan{Name: "payg0", Model: plan.PayG, Meter: "api_calls"},
		&plan.Plan{Name: "pro", Model: plan.Tiered, Meter: "api_calls", Quota: &plan.Quota{Requests: 1000, Period: plan.Month, Enforcement: plan.Hard}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type rig struct {
	catalog *plan.Catalog
	clock   *limitertest.Clock
	local   *limiter.Local
	stripe  *stripetest.Stripe
	people  *consumers
}

// newRig's clock is mid-month: no test crosses a billing period by chance.
func newRig(t *testing.T) *rig {
	return newRigAt(t, time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC))
}

func newRigAt(t *testing.T, start time.Time) *rig {
	t.Helper()
	r := &rig{clock: limitertest.NewClock(start), stripe: stripetest.Start(t),
		people: &consumers{m: map[string]*apikey.Consumer{}}}
	local, err := limiter.NewLocal(limiter.LocalConfig{Clock: r.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	r.local = local
	t.Cleanup(func() { local.Close() })
	r.people.set(&apikey.Consumer{ID: "acme", Plan: "payg3", StripeCustomerID: "cus_acme"})
	r.people.set(&apikey.Consumer{ID: "beta", Plan: "payg0", StripeCustomerID: "cus_beta"})
	r.catalog = catalog(t)
	return r
}

func (r *rig) exporter(t *testing.T, ledger usage.Ledger, lease billing.Lease, holder string) *billing.Exporter {
	return billing.NewExporter(billing.ExporterConfig{
		Ledger: ledger, Consumer: r.people.get, Catalog: func() *plan.Catalog { return r.catalog }, Lease: lease, Holder: holder,
		APIKey: "sk_test_levy", APIBase: r.stripe.URL, Every: 10 * time.Millisecond, SettleDelay: 5 * time.Second,
		Log: zaptest.NewLogger(t), Clock: r.clock.Now,
	})
}

// sent is the meter events Stripe holds (accepted, not cancelled), by
// identifier.
func sent(t *testing.T, s *stripetest.Stripe) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, e := range s.Events() {
		if !e.Cancelled {
			out[e.Identifier] = e.Value
		}
	}
	return out
}

func total(m map[string]int64) (sum int64) {
	for _, v := range m {
		sum += v
	}
	return sum
}

func TestExportSendsEachAccountsUnitsBeyondIncluded(t *testing.T) {
	r := newRig(t)
	// acme: 7 requests in window 1 (3 included), 4 in window 2; beta: 2
	// with nothing included.
	r.admit(t, r.local, "acme", 7)
	r.admit(t, r.local, "beta", 2)
	r.clock.Advance(time.Minute)
	r.admit(t, r.local, "acme", 4)
	e := r.exporter(t, r.local, nil, "a")

	// Windows still inside the settle delay are not sent yet.
	if n, err := e.ExportOnce(context.Background()); err != nil || n != 0 {
		t.Fatalf("before the settle delay: %d %v", n, err)
	}
	r.clock.Advance(5 * time.Second) // window 1 settled, window 2 not yet
	if n, err := e.ExportOnce(context.Background()); err != nil || n != 2 || total(sent(t, r.stripe)) != 4+2 {
		t.Fatalf("window 1: %d events (%v): %v", n, err, sent(t, r.stripe))
	}
	r.clock.Advance(2 * time.Minute)
	n, err := e.ExportOnce(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("exported %d events (%v), want 1", n, err)
	}
	got := sent(t, r.stripe)
	if len(got) != 3 || total(got) != 4+2+4 {
		t.Fatalf("events %v: want 3 events totalling 10 billable units", got)
	}
	calls := r.stripe.Calls(meterPath)
	for _, c := range calls {
		if c.Form.Get("event_name") != "api_calls" || c.Form.Get("payload[stripe_customer_id]") == "" {
			t.Fatalf("event %v", c.Form)
		}
		ts, _ := strconv.ParseInt(c.Form.Get("timestamp"), 10, 64)
		if ts >= r.clock.Now().Unix() {
			t.Fatalf("timestamp %d is not inside a closed window", ts)
		}
	}
	// Nothing is sent twice.
	if n, _ := e.ExportOnce(context.Background()); n != 0 || len(r.stripe.Calls(meterPath)) != 3 {
		t.Fatalf("second export sent more: %d", len(r.stripe.Calls(meterPath)))
	}
}

func TestStripeFailingThenRecoveringGivesTheSameTotalsAndNoDuplicates(t *testing.T) {
	r := newRig(t)
	for i := 0; i < 5; i++ { // five windows of 3 billable units each
		r.admit(t, r.local, "beta", 3)
		r.clock.Advance(time.Minute)
	}
	r.clock.Advance(time.Minute)
	e := r.exporter(t, r.local, nil, "a")
	r.stripe.Fail(500, 3)
	e.ExportOnce(context.Background()) // 3 fail, 2 get through
	r.stripe.Fail(429, -1)
	for i := 0; i < 3; i++ {
		r.clock.Advance(10 * time.Second) // past every backoff
		e.ExportOnce(context.Background())
	}
	r.stripe.Recover()
	for i := 0; i < 5; i++ {
		r.clock.Advance(5 * time.Minute)
		e.ExportOnce(context.Background())
	}
	got := sent(t, r.stripe)
	if total(got) != 15 {
		t.Fatalf("after recovery: %v, want 15 units", got)
	}
	if left := due(t, r.local, r.clock.Now()); len(left) != 0 {
		t.Fatalf("windows left unexported: %+v", left)
	}
}

func TestConsumerWithoutStripeCustomerIsKeptNotDropped(t *testing.T) {
	r := newRig(t)
	r.people.set(&apikey.Consumer{ID: "nocard", Plan: "payg0"})
	r.admit(t, r.local, "nocard", 4)
	r.clock.Advance(2 * time.Minute)
	e := r.exporter(t, r.local, nil, "a")
	e.ExportOnce(context.Background())
	if len(r.stripe.Calls(meterPath)) != 0 {
		t.Fatal("an event without a Stripe customer was sent")
	}
	if left := due(t, r.local, r.clock.Now()); len(left) != 1 || left[0].Units != 4 {
		t.Fatalf("the window was dropped: %+v", left)
	}
	r.people.set(&apikey.Consumer{ID: "nocard", Plan: "payg0", StripeCustomerID: "cus_late"})
	if n, _ := e.ExportOnce(context.Background()); n != 1 || total(sent(t, r.stripe)) != 4 {
		t.Fatalf("after the customer id arrived: %d", n)
	}
}

// Two replicas on one Redis: one holds the lease and exports, the other
// waits; when the holder stops, the other takes over.
func TestOneExporterAtATimeThroughTheRedisLease(t *testing.T) {
	r := newRig(t)
	rdb := redistest.Start(t)
	client := rdb.Client()
	lim := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Clock: r.clock.Now, Timeout: 5 * time.Second})
	ledger := limiter.NewRedisLedger(client, time.Minute)
	for i := 0; i < 4; i++ {
		r.admit(t, lim, "beta", 2)
		r.clock.Advance(time.Minute)
	}
	r.clock.Advance(time.Minute)
	lease := redisstore.NewLease(client, "usage-export")
	// The lease lasts three intervals: at the rig's 10ms, a pass slowed by
	// a loaded machine (-race, Stripe's mock, Redis) outlasted it and the
	// other replica took over mid-pass. A lease outlasts a pass in
	// production (30 s at the default 10 s); here 200ms intervals give it
	// 600ms.
	exporter := func(holder string) *billing.Exporter {
		return billing.NewExporter(billing.ExporterConfig{
			Ledger: ledger, Consumer: r.people.get, Catalog: func() *plan.Catalog { return r.catalog }, Lease: lease, Holder: holder,
			APIKey: "sk_test_levy", APIBase: r.stripe.URL, Every: 200 * time.Millisecond, SettleDelay: 5 * time.Second,
			Log: zaptest.NewLogger(t), Clock: r.clock.Now,
		})
	}
	a, b := exporter("replica-a"), exporter("replica-b")

	ctxA, stopA := context.WithCancel(context.Background())
	doneA := make(chan struct{})
	go func() { a.Run(ctxA); close(doneA) }()
	ctxB, stopB := context.WithCancel(context.Background())
	doneB := make(chan struct{})
	go func() { b.Run(ctxB); close(doneB) }()
	defer func() { stopB(); <-doneB }()
	stoppedA := false
	defer func() { // a failed check must not leave a logging after the test
		if !stoppedA {
			stopA()
			<-doneA
		}
	}()

	await.NoError(t, 10*time.Second, func() error {
		if s := sent(t, r.stripe); total(s) < 8 {
			return fmt.Errorf("exported %v", s)
		}
		return nil
	}, "8 units exported")
	if n := len(r.stripe.Calls(meterPath)); n != len(sent(t, r.stripe)) {
		t.Fatalf("%d meter event calls for %d events: two exporters ran", n, len(sent(t, r.stripe)))
	}
	stopA()
	<-doneA
	stoppedA = true
	// The next windows go out through b.
	r.admit(t, lim, "beta", 5)
	r.clock.Advance(2 * time.Minute)
	await.NoError(t, 10*time.Second, func() error {
		if s := sent(t, r.stripe); total(s) < 13 {
			return fmt.Errorf("exported %v", s)
		}
		return nil
	}, "b to take over the export")
}

// forgetful loses the first Commit, as a replica killed between Stripe's
// answer and recording it would.
type forgetful struct {
	usage.Ledger
	mu     sync.Mutex
	forgot bool
}

func (f *forgetful) Commit(ctx context.Context, w usage.Window, value int64, accounted []usage.Window) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.forgot {
		f.forgot = true
		return context.DeadlineExceeded
	}
	return f.Ledger.Commit(ctx, w, value, accounted)
}

// Stripe accepted an event but the replica never recorded it: the next
// attempt sends the same identifier and value, Stripe refuses it as a
// duplicate, and it counts as accepted: billed once, even though more
// units arrived in between.
func TestAcceptedButUnrecordedEventIsNotBilledTwice(t *testing.T) {
	r := newRig(t)
	start := r.clock.Now()
	r.admit(t, r.local, "beta", 6)
	r.clock.Advance(2 * time.Minute)
	e := r.exporter(t, &forgetful{Ledger: r.local}, nil, "a")
	if _, err := e.ExportOnce(context.Background()); err == nil {
		t.Fatal("the lost commit was not reported")
	}
	r.settle(t, r.local, "beta", start, 3) // a late log: the upstream reported more
	r.clock.Advance(time.Minute)
	if _, err := e.ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls := r.stripe.Calls(meterPath)
	if len(calls) != 3 || calls[1].Status != 400 || calls[1].Form.Get("identifier") != calls[0].Form.Get("identifier") ||
		calls[1].Form.Get("payload[value]") != "6" || total(sent(t, r.stripe)) != 9 {
		t.Fatalf("calls %+v", calls)
	}
	if left := due(t, r.local, r.clock.Now()); len(left) != 0 {
		t.Fatalf("window still due: %+v", left)
	}
}

// Billable units are those beyond the included ones over the period's
// settled units: a refunded request inside the included units frees its
// unit for a later one, and a plan that bills no overage sends nothing.
func TestBillableUnitsFollowSettlementAcrossWindows(t *testing.T) {
	r := newRig(t)
	start := r.clock.Now()
	r.admit(t, r.local, "acme", 4)          // payg3: 3 included
	r.settle(t, r.local, "acme", start, -2) // two 5xx refunded: 2 units settled in window 1
	r.clock.Advance(time.Minute)
	r.admit(t, r.local, "acme", 3) // 5 settled so far: 2 beyond the 3 included
	r.people.set(&apikey.Consumer{ID: "tier", Plan: "pro", StripeCustomerID: "cus_tier"})
	r.admit(t, r.local, "tier", 50)
	r.clock.Advance(time.Minute) // acme's two windows go in one event
	r.clock.Advance(2 * time.Minute)
	e := r.exporter(t, r.local, nil, "a")
	if _, err := e.ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := sent(t, r.stripe)
	if len(got) != 1 || total(got) != 2 {
		t.Fatalf("events %v: want one event of 2 units (acme's second window); nothing for the tiered plan", got)
	}
	payg3, _ := r.catalog.Get("payg3")
	rep, err := billing.Report(context.Background(), r.local, r.local, &apikey.Consumer{ID: "acme", Plan: "payg3"}, payg3, r.catalog)
	if err != nil || rep.Settled != 5 || rep.Billable != 2 || rep.Exported != 2 || rep.Overage != 2 {
		t.Fatalf("report %+v %v", rep, err)
	}
}

// Windows that must wait (no Stripe customer) do not hold back the others,
// however many there are.
func TestWaitingWindowsDoNotBlockOthers(t *testing.T) {
	r := newRig(t)
	r.people.set(&apikey.Consumer{ID: "nocard", Plan: "payg0"})
	for i := 0; i < 1200; i++ { // more waiting windows than one page used to hold
		r.admit(t, r.local, "nocard", 1)
		r.clock.Advance(time.Minute)
	}
	r.admit(t, r.local, "beta", 2)
	r.clock.Advance(2 * time.Minute)
	e := r.exporter(t, r.local, nil, "a")
	if n, _ := e.ExportOnce(context.Background()); n != 1 || total(sent(t, r.stripe)) != 2 {
		t.Fatalf("exported %d windows, %v", n, sent(t, r.stripe))
	}
}

// A webhook moves a consumer to another plan before the exporter runs: the
// window is still billed under the plan its usage was admitted under.
func TestPlanChangeBeforeExportBillsUnderTheAdmissionPlan(t *testing.T) {
	tests := []struct {
		name   string
		before string // plan at admission
		give   int    // requests before the change
		after  string // plan at export (and for later requests)
		more   int    // requests after the change
		want   int64
	}{
		{name: "payg to a tiered plan that bills nothing", before: "payg0", give: 8, after: "pro", want: 8},
		{name: "payg to payg with included units", before: "payg0", give: 8, after: "payg3", want: 8},
		{name: "included units, then none", before: "payg3", give: 2, after: "payg0", more: 4, want: 4},
		{name: "tiered, then payg with its included units", before: "pro", give: 5, after: "payg3", more: 5, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			r.people.set(&apikey.Consumer{ID: "mover", Plan: tt.before, StripeCustomerID: "cus_mover"})
			r.admit(t, r.local, "mover", tt.give)
			r.people.set(&apikey.Consumer{ID: "mover", Plan: tt.after, StripeCustomerID: "cus_mover"})
			r.admit(t, r.local, "mover", tt.more)
			r.clock.Advance(2 * time.Minute)
			e := r.exporter(t, r.local, nil, "a")
			if _, err := e.ExportOnce(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := total(sent(t, r.stripe)); got != tt.want {
				t.Fatalf("billed %d, want %d (events %v)", got, tt.want, sent(t, r.stripe))
			}
			if left := due(t, r.local, r.clock.Now()); len(left) != 0 {
				t.Fatalf("left: %+v", left)
			}
		})
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
			if label == "" {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}

func (r *rig) exporterWithMetrics(t *testing.T) (*billing.Exporter, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return billing.NewExporter(billing.ExporterConfig{
		Ledger: r.local, Consumer: r.people.get, Catalog: func() *plan.Catalog { return r.catalog },
		APIKey: "sk_test_levy", APIBase: r.stripe.URL, Every: 10 * time.Millisecond, SettleDelay: 5 * time.Second,
		Registerer: reg, Log: zaptest.NewLogger(t), Clock: r.clock.Now,
	}), reg
}

// Stripe's answer for an identifier it already has is recognised in both
// of its forms, and counts as accepted.
func TestDuplicateIsRecognisedInEitherForm(t *testing.T) {
	for _, body := range []string{
		`{"error":{"type":"invalid_request_error","param":"identifier","message":"An event with this identifier already exists."}}`,
		`{"error":{"type":"invalid_request_error","message":"An event with identifier levy:beta already exists."}}`,
		`{"error":{"type":"invalid_request_error","code":"resource_already_exists","message":"Already there."}}`,
	} {
		r := newRig(t)
		r.admit(t, r.local, "beta", 3)
		r.clock.Advance(2 * time.Minute)
		e, reg := r.exporterWithMetrics(t)
		r.stripe.FailWith(400, body, 1)
		if n, err := e.ExportOnce(context.Background()); err != nil || n != 1 {
			t.Fatalf("%s: %d %v", body, n, err)
		}
		if left := due(t, r.local, r.clock.Now()); len(left) != 0 || counter(t, reg, "levy_usage_export_windows_total", "result", "accepted") != 1 {
			t.Fatalf("%s: left %+v", body, left)
		}
	}
}

// A window Stripe refuses for a reason a retry cannot fix is set aside and
// reported, not retried; one refused for a passing reason is retried.
func TestPermanentRefusalIsReportedNotRetried(t *testing.T) {
	r := newRig(t)
	r.people.set(&apikey.Consumer{ID: "gone", Plan: "payg0", StripeCustomerID: "cus_deleted"})
	r.admit(t, r.local, "gone", 3)
	r.clock.Advance(2 * time.Minute)
	e, reg := r.exporterWithMetrics(t)
	r.stripe.FailWith(400, `{"error":{"type":"invalid_request_error","param":"payload[stripe_customer_id]","message":"No such customer: 'cus_deleted'"}}`, -1)
	for range 5 {
		e.ExportOnce(context.Background())
		r.clock.Advance(10 * time.Minute) // past any backoff
	}
	if n := len(r.stripe.Calls(meterPath)); n != 1 {
		t.Fatalf("%d attempts, want 1: the refusal was retried", n)
	}
	if counter(t, reg, "levy_usage_export_windows_total", "result", "rejected") != 1 {
		t.Fatal("rejection not counted")
	}
	ws, _ := r.local.Windows(context.Background(), "gone", time.Time{}, r.clock.Now())
	if len(ws) != 1 || !strings.Contains(ws[0].Rejected, "No such customer") || ws[0].Pending != 0 {
		t.Fatalf("windows %+v", ws)
	}
	// Later usage is still billed, without the rejected units.
	r.stripe.Recover()
	r.admit(t, r.local, "gone", 2)
	r.clock.Advance(2 * time.Minute)
	e.ExportOnce(context.Background())
	if got := total(sent(t, r.stripe)); got != 2 {
		t.Fatalf("billed %d after the rejection, want the later 2", got)
	}

	// 401, 429, 500: retried until Stripe takes it.
	for _, status := range []int{401, 429, 500} {
		r := newRig(t)
		r.admit(t, r.local, "beta", 4)
		r.clock.Advance(2 * time.Minute)
		e := r.exporter(t, r.local, nil, "a")
		r.stripe.Fail(status, 2)
		for range 3 {
			e.ExportOnce(context.Background())
			r.clock.Advance(10 * time.Minute)
		}
		if got := total(sent(t, r.stripe)); got != 4 {
			t.Fatalf("status %d: billed %d, want 4", status, got)
		}
	}
}

// Late access logs correct the bill within the billing period: more units
// are billed by a later event, a refund is taken off the next one.
func TestLateSettlementsCorrectTheBillWithinThePeriod(t *testing.T) {
	r := newRigAt(t, time.Date(2026, 3, 10, 10, 0, 0, 0, time.UTC)) // a day later is the same period
	start := r.clock.Now()
	r.admit(t, r.local, "beta", 5)
	r.clock.Advance(2 * time.Minute)
	e, reg := r.exporterWithMetrics(t)
	e.ExportOnce(context.Background())
	r.settle(t, r.local, "beta", start, 3) // the upstream reported 3 more, late
	r.clock.Advance(time.Minute)
	e.ExportOnce(context.Background())
	got := sent(t, r.stripe)
	if len(got) != 1 || total(got) != 8 {
		t.Fatalf("after late units: %v, want the event of 5 replaced by one of 8", got)
	}
	r.settle(t, r.local, "beta", start, -4) // four refunded, late
	r.clock.Advance(time.Minute)
	e.ExportOnce(context.Background())
	// The event of 8 is cancelled and the period billed again at 4.
	if got := sent(t, r.stripe); len(got) != 1 || total(got) != 5+3-4 {
		t.Fatalf("after a late refund: %v, want one event of 4", got)
	}
	if counter(t, reg, "levy_usage_cancelled_events_total", "", "") != 2 { // 5, then 8
		t.Fatal("cancellations not counted")
	}
	r.admit(t, r.local, "beta", 6) // the period's next usage
	r.clock.Advance(2 * time.Minute)
	e.ExportOnce(context.Background())
	if got := total(sent(t, r.stripe)); got != 5+3-4+6 {
		t.Fatalf("billed %d, want %d", got, 5+3-4+6)
	}
	// A day later Stripe cancels nothing more: a refund is taken off the
	// period's next event.
	r.clock.Advance(24 * time.Hour)
	r.settle(t, r.local, "beta", start, -1)
	e.ExportOnce(context.Background())
	r.admit(t, r.local, "beta", 2)
	r.clock.Advance(2 * time.Minute)
	e.ExportOnce(context.Background())
	if got := total(sent(t, r.stripe)); got != 5+3-4+6-1+2 {
		t.Fatalf("billed %d, want %d", got, 5+3-4+6-1+2)
	}
	if counter(t, reg, "levy_usage_corrected_windows_total", "", "") != 3 {
		t.Fatal("corrections not counted")
	}
	if left := due(t, r.local, r.clock.Now()); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
}

// A late access log for a period whose invoice is final cannot be put
// right: it is counted, not sent and not dropped silently.
func TestLateSettlementAfterThePeriodClosedIsCounted(t *testing.T) {
	r := newRigAt(t, time.Date(2026, 11, 30, 23, 50, 0, 0, time.UTC))
	start := r.clock.Now()
	r.admit(t, r.local, "beta", 5)
	r.clock.Advance(2 * time.Minute)
	e, reg := r.exporterWithMetrics(t)
	e.ExportOnce(context.Background())
	r.clock.Set(time.Date(2026, 12, 1, 1, 30, 0, 0, time.UTC)) // past the period and its grace
	r.settle(t, r.local, "beta", start, 2)
	r.settle(t, r.local, "beta", start, -1)
	e.ExportOnce(context.Background())
	if got := sent(t, r.stripe); len(got) != 1 || total(got) != 5 {
		t.Fatalf("events %v: a closed period was billed again", got)
	}
	if u := counter(t, reg, "levy_usage_uncorrectable_units_total", "direction", "under"); u != 1 {
		t.Fatalf("uncorrectable under = %v, want 1", u)
	}
	if left := due(t, r.local, r.clock.Now()); len(left) != 0 {
		t.Fatalf("left: %+v", left)
	}
}

// A reload that changes a plan's included units mid-period changes the
// plan's allowance; it does not give the consumers on it a second one.
func TestReloadChangingIncludedUnitsDoesNotGrantASecondAllowance(t *testing.T) {
	r := newRig(t)
	r.admit(t, r.local, "acme", 3) // payg3: all 3 included
	r.clock.Advance(time.Minute)
	reloaded, err := plan.NewCatalog(
		&plan.Plan{Name: "payg3", Model: plan.PayG, Meter: "api_calls", Quota: &plan.Quota{Requests: 5, Period: plan.Month, Enforcement: plan.Soft}},
	)
	if err != nil {
		t.Fatal(err)
	}
	r.catalog = reloaded // payg3 now includes 5 units a month
	r.admit(t, r.local, "acme", 4)
	r.clock.Advance(2 * time.Minute)
	if _, err := r.exporter(t, r.local, nil, "a").ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	// 7 units on a plan that includes at most 5.
	if got := total(sent(t, r.stripe)); got != 2 {
		t.Fatalf("billed %d, want 2 (events %v)", got, sent(t, r.stripe))
	}
}

// A consumer's billing cycle starts when its Stripe subscription did, to
// the second. Stripe invoices a meter event in the period its timestamp
// falls in, so the event that bills a period must be stamped inside it,
// even when the period ends inside a window.
func TestAnchoredPeriodsEventsAreStampedInsideThePeriod(t *testing.T) {
	r := newRig(t) // 2026-03-14 12:00:00
	anchor := time.Date(2026, 2, 14, 12, 0, 30, 0, time.UTC)
	r.people.set(&apikey.Consumer{ID: "anch", Plan: "payg0", StripeCustomerID: "cus_anch", PeriodAnchor: anchor})
	r.admit(t, r.local, "anch", 5) // in the window 12:00:00 to 12:01:00, of the period that ends at 12:00:30
	r.clock.Advance(2 * time.Minute)
	if _, err := r.exporter(t, r.local, nil, "a").ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	period := plan.PeriodAt(time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC), plan.Month, anchor)
	calls := r.stripe.Calls(meterPath)
	if len(calls) != 1 || calls[0].Status != 200 {
		t.Fatalf("calls %+v", calls)
	}
	ts, _ := strconv.ParseInt(calls[0].Form.Get("timestamp"), 10, 64)
	if at := time.Unix(ts, 0).UTC(); at.Before(period.Start) || !at.Before(period.End) {
		t.Fatalf("the event of the period %s to %s is stamped %s: Stripe invoices it in the next period", period.Start, period.End, at)
	}
}

// A reload that raises a plan's included units mid-period raises the
// allowance; it does not start the units counted against it again. The
// unit billed beyond the old allowance stays billed: it was admitted then.
func TestReloadChangingIncludedUnitsKeepsThePeriodsCount(t *testing.T) {
	r := newRig(t)
	r.people.set(&apikey.Consumer{ID: "grow", Plan: "payg3", StripeCustomerID: "cus_grow"})
	r.admit(t, r.local, "grow", 4) // 3 included: 1 billable
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "payg3", Model: plan.PayG, Meter: "api_calls", Quota: &plan.Quota{Requests: 5, Period: plan.Month, Enforcement: plan.Soft}},
	)
	if err != nil {
		t.Fatal(err)
	}
	r.catalog = cat                // the reload: 5 included now
	r.admit(t, r.local, "grow", 3) // 7 in the period, 5 included: 2 more billable
	r.clock.Advance(2 * time.Minute)
	e := r.exporter(t, r.local, nil, "a")
	if _, err := e.ExportOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := total(sent(t, r.stripe)); got != 1+2 {
		t.Fatalf("billed %d, want 3 (counted afresh under the new terms it would be 1)", got)
	}
}

// An event Stripe refuses to cancel for good is not asked again: the
// refund is taken off the period's next event instead.
func TestACancellationStripeRefusesIsNotRetried(t *testing.T) {
	r := newRig(t)
	start := r.clock.Now()
	r.admit(t, r.local, "beta", 5)
	r.clock.Advance(2 * time.Minute)
	e := r.exporter(t, r.local, nil, "a")
	e.ExportOnce(context.Background())
	r.settle(t, r.local, "beta", start, -2)
	r.stripe.FailWith(400, `{"error":{"type":"invalid_request_error","message":"This event can no longer be cancelled."}}`, 1)
	for range 4 {
		r.clock.Advance(10 * time.Minute)
		e.ExportOnce(context.Background())
	}
	if n := len(r.stripe.Calls("/v1/billing/meter_event_adjustments")); n != 1 {
		t.Fatalf("%d cancellations asked, want 1", n)
	}
	if left := due(t, r.local, r.clock.Now()); len(left) != 0 {
		t.Fatalf("left due: %+v", left)
	}
	r.admit(t, r.local, "beta", 4)
	r.clock.Advance(2 * time.Minute)
	e.ExportOnce(context.Background())
	if got := total(sent(t, r.stripe)); got != 5-2+4 {
		t.Fatalf("billed %d, want %d", got, 5-2+4)
	}
}

// A meter event's identifier is what it was before the store's keys moved
// to keyspace's layout: an event sent before an upgrade and retried
// after it is refused by Stripe, not billed twice.
func TestIdentifierOutlivesTheKeyLayout(t *testing.T) {
	terms := usage.Terms{Plan: "payg", Meter: "api_calls", Billed: true, Period: plan.Month}
	w := usage.Window{Consumer: "beta", Meter: "api_calls", Terms: terms, Key: usage.LedgerKey("beta", terms),
		Start: time.Unix(1773489780, 0).UTC()}
	// sha256("{c:beta}:ledger:b=1&i=0&m=api_calls&p=payg&u=month"), the
	// key of the layout before, begins ea7c3433.
	if got, want := billing.Identifier(w, 0), "levy:beta:api_calls:1773489780:ea7c3433"; got != want {
		t.Fatalf("Identifier = %q, want %q", got, want)
	}
}
