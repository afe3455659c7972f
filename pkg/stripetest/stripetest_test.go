package stripetest_test

import (
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	stripe "github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/stripetest"
)

func start(t *testing.T) (*stripetest.Stripe, *client.API) {
	t.Helper()
	s := stripetest.Start(t)
	return s, billing.NewStripeClient("sk_test_levy", s.URL)
}

func send(t *testing.T, sc *client.API, customer, name, id string, value int64, at time.Time) error {
	t.Helper()
	_, err := sc.BillingMeterEvents.New(&stripe.BillingMeterEventParams{
		EventName:  stripe.String(name),
		Identifier: stripe.String(id),
		Timestamp:  stripe.Int64(at.Unix()),
		Payload:    map[string]string{"stripe_customer_id": customer, "value": strconv.FormatInt(value, 10)},
	})
	return err
}

func summary(t *testing.T, sc *client.API, meter, customer string, from, to time.Time) (float64, error) {
	t.Helper()
	it := sc.BillingMeterEventSummaries.List(&stripe.BillingMeterEventSummaryListParams{
		ID: stripe.String(meter), Customer: stripe.String(customer),
		StartTime: stripe.Int64(from.Unix()), EndTime: stripe.Int64(to.Unix()),
	})
	var sum float64
	for it.Next() {
		s := it.BillingMeterEventSummary()
		if s.Object != "billing.meter_event_summary" || s.Meter != meter || s.StartTime != from.Unix() || s.EndTime != to.Unix() {
			t.Fatalf("summary %+v", s)
		}
		sum += s.AggregatedValue
	}
	return sum, it.Err()
}

func stripeErr(t *testing.T, err error) *stripe.Error {
	t.Helper()
	var serr *stripe.Error
	if !errors.As(err, &serr) {
		t.Fatalf("want a Stripe error, got %v", err)
	}
	return serr
}

// Stripe's documented summary semantics: start_time inclusive, end_time
// exclusive, both on a minute; only the customer's events of that meter.
func TestSummariesSumTheCustomersEventsFromStartUpToEnd(t *testing.T) {
	s, sc := start(t)
	base := time.Now().UTC().Truncate(time.Minute).Add(-time.Hour)
	for i, e := range []struct {
		customer, name string
		value          int64
		at             time.Duration
	}{
		{"cus_a", "api_calls", 1, 0},                           // on start: in
		{"cus_a", "api_calls", 2, 59 * time.Second},            // inside
		{"cus_a", "api_calls", 4, 2*time.Minute - time.Second}, // last second: in
		{"cus_a", "api_calls", 8, 2 * time.Minute},             // on end: out
		{"cus_a", "api_calls", 16, -time.Second},               // before: out
		{"cus_b", "api_calls", 32, time.Minute},                // another customer
		{"cus_a", "tokens", 64, time.Minute},                   // another meter
	} {
		if err := send(t, sc, e.customer, e.name, "ev"+strconv.Itoa(i), e.value, base.Add(e.at)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		customer string
		from, to time.Duration
		want     float64
	}{
		{"start inclusive, end exclusive", "cus_a", 0, 2 * time.Minute, 1 + 2 + 4},
		{"end moved a minute", "cus_a", 0, 3 * time.Minute, 1 + 2 + 4 + 8},
		{"from a minute before", "cus_a", -time.Minute, time.Minute, 16 + 1 + 2},
		{"other customer", "cus_b", 0, 2 * time.Minute, 32},
		{"nobody", "cus_c", 0, 2 * time.Minute, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := summary(t, sc, stripetest.MeterID("api_calls"), tt.customer, base.Add(tt.from), base.Add(tt.to))
			if err != nil || got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	if n := len(s.Events()); n != 7 {
		t.Fatalf("%d events recorded", n)
	}
}

func TestSummariesRefuseBoundsOffTheMinuteAndUnknownMeters(t *testing.T) {
	_, sc := start(t)
	base := time.Now().UTC().Truncate(time.Minute)
	if err := send(t, sc, "cus_a", "api_calls", "ev", 1, base); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		meter      string
		from, to   time.Time
		wantStatus int
		wantParam  string
	}{
		{"start off the minute", stripetest.MeterID("api_calls"), base.Add(time.Second), base.Add(time.Minute), 400, "start_time"},
		{"end off the minute", stripetest.MeterID("api_calls"), base, base.Add(90 * time.Second), 400, "end_time"},
		{"unknown meter", "mtr_nope", base, base.Add(time.Minute), 404, "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := summary(t, sc, tt.meter, "cus_a", tt.from, tt.to)
			if serr := stripeErr(t, err); serr.HTTPStatusCode != tt.wantStatus || serr.Param != tt.wantParam {
				t.Fatalf("%d %q: %v", serr.HTTPStatusCode, serr.Param, err)
			}
		})
	}
}

func TestMetersAreThoseRegisteredAndThoseEventsWereSentFor(t *testing.T) {
	s, sc := start(t)
	if id := s.Meter("tokens"); id != "mtr_tokens" {
		t.Fatalf("id %q", id)
	}
	if err := send(t, sc, "cus_a", "api_calls", "ev", 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	it := sc.BillingMeters.List(&stripe.BillingMeterListParams{})
	var got []string
	for it.Next() {
		m := it.BillingMeter()
		if m.Status != stripe.BillingMeterStatusActive || m.ID != stripetest.MeterID(m.EventName) {
			t.Fatalf("meter %+v", m)
		}
		got = append(got, m.EventName)
	}
	if err := it.Err(); err != nil || len(got) != 2 || got[0] != "api_calls" || got[1] != "tokens" {
		t.Fatalf("meters %v (%v)", got, err)
	}
	m, err := sc.BillingMeters.Get("mtr_tokens", nil)
	if err != nil || m.EventName != "tokens" {
		t.Fatalf("get: %+v %v", m, err)
	}
}

// A second event with an identifier Stripe has is refused with Stripe's
// answer; a dropped one is as if Stripe never had it.
func TestDuplicateIdentifiersAreRefusedAndDroppedOnesForgotten(t *testing.T) {
	s, sc := start(t)
	at := time.Now().UTC().Truncate(time.Minute)
	if err := send(t, sc, "cus_a", "api_calls", "ev-1", 5, at); err != nil {
		t.Fatal(err)
	}
	err := send(t, sc, "cus_a", "api_calls", "ev-1", 5, at)
	if serr := stripeErr(t, err); serr.HTTPStatusCode != 400 || serr.Param != "identifier" ||
		serr.Msg != "An event with this identifier already exists." || !billing.IsDuplicate(err) {
		t.Fatalf("duplicate: %v", err)
	}
	sum := func() float64 {
		v, err := summary(t, sc, stripetest.MeterID("api_calls"), "cus_a", at, at.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got := sum(); got != 5 {
		t.Fatalf("sum %v", got)
	}
	if !s.Drop("ev-1") || s.Drop("ev-1") {
		t.Fatal("Drop")
	}
	if got := sum(); got != 0 || len(s.Events()) != 0 {
		t.Fatalf("after drop: %v %v", got, s.Events())
	}
	if err := send(t, sc, "cus_a", "api_calls", "ev-1", 3, at); err != nil {
		t.Fatalf("resend after drop: %v", err)
	}
	if got := sum(); got != 3 {
		t.Fatalf("sum %v", got)
	}
}

func TestCancelTakesAnEventOutWithin24Hours(t *testing.T) {
	s, sc := start(t)
	now := time.Now().UTC()
	clock := now
	s.SetClock(func() time.Time { return clock })
	at := now.Truncate(time.Minute)
	for i, v := range []int64{5, 7} {
		if err := send(t, sc, "cus_a", "api_calls", "ev-"+strconv.Itoa(i), v, at); err != nil {
			t.Fatal(err)
		}
	}
	cancel := func(id string) error {
		_, err := sc.BillingMeterEventAdjustments.New(&stripe.BillingMeterEventAdjustmentParams{
			EventName: stripe.String("api_calls"), Type: stripe.String("cancel"),
			Cancel: &stripe.BillingMeterEventAdjustmentCancelParams{Identifier: stripe.String(id)},
		})
		return err
	}
	if err := cancel("ev-0"); err != nil {
		t.Fatal(err)
	}
	if got, _ := summary(t, sc, stripetest.MeterID("api_calls"), "cus_a", at, at.Add(time.Minute)); got != 7 {
		t.Fatalf("after cancel: %v", got)
	}
	if ev := s.Events(); len(ev) != 2 || !ev[0].Cancelled || ev[1].Cancelled {
		t.Fatalf("events %+v", ev)
	}
	clock = now.Add(24*time.Hour + time.Second)
	if serr := stripeErr(t, cancel("ev-1")); serr.HTTPStatusCode != 400 || serr.Param != "cancel[identifier]" {
		t.Fatalf("late cancel: %v", serr)
	}
	if serr := stripeErr(t, cancel("ev-unknown")); serr.HTTPStatusCode != 400 {
		t.Fatalf("unknown: %v", serr)
	}
}

// Injected failures answer every route, the proxy's own included.
func TestFailAnswersTheProxysOwnRoutesToo(t *testing.T) {
	s, sc := start(t)
	s.Fail(http.StatusServiceUnavailable, 1)
	it := sc.BillingMeters.List(&stripe.BillingMeterListParams{})
	for it.Next() {
	}
	if serr := stripeErr(t, it.Err()); serr.HTTPStatusCode != 503 {
		t.Fatalf("%v", serr)
	}
	if calls := s.Calls("/v1/billing/meters"); len(calls) != 1 || calls[0].Status != 503 {
		t.Fatalf("calls %+v", calls)
	}
	if err := send(t, sc, "cus_a", "api_calls", "ev", 1, time.Now()); err != nil {
		t.Fatalf("after the failure: %v", err)
	}
}
