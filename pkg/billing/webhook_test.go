package billing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const webhookTestSecret = "whsec_test_5a1f0c2e9b7d4e8f"

// Event creation times (unix seconds), in order.
const (
	evT1 int64 = 1767225600 // 2026-01-01T00:00:00Z
	evT2 int64 = 1767229200 // one hour later
	evT3 int64 = 1767232800 // two hours later
)

// webhookTestNow is the injected clock's start.
var webhookTestNow = time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)

// fakeConsumers is an in-memory Consumers. Lookups return the stored
// pointer, as an in-process cache might, so that mutating it would show.
type fakeConsumers struct {
	mu        sync.Mutex
	byID      map[string]*apikey.Consumer
	puts      int
	putErr    error
	lookupErr error
}

func newFakeConsumers(cs ...apikey.Consumer) *fakeConsumers {
	f := &fakeConsumers{byID: map[string]*apikey.Consumer{}}
	for _, c := range cs {
		f.byID[c.ID] = &c
	}
	return f
}

func (f *fakeConsumers) ConsumerByStripeCustomer(_ context.Context, customerID string) (*apikey.Consumer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lookupErr != nil {
		return nil, f.lookupErr
	}
	for _, c := range f.byID {
		if c.StripeCustomerID == customerID {
			return c, nil
		}
	}
	return nil, apikey.ErrNotFound
}

func (f *fakeConsumers) PutConsumer(_ context.Context, c *apikey.Consumer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.putErr != nil {
		return f.putErr
	}
	f.puts++
	cp := *c
	f.byID[c.ID] = &cp
	return nil
}

func (f *fakeConsumers) get(id string) apikey.Consumer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.byID[id]
}

func (f *fakeConsumers) fail(put, lookup error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.putErr, f.lookupErr = put, lookup
}

func (f *fakeConsumers) putCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.puts
}

// fakeEvents is an in-memory Events (claims never expire within a test).
type fakeEvents struct {
	mu       sync.Mutex
	claimed  map[string]bool
	ttls     []time.Duration
	released []string
	claimErr error
}

func newFakeEvents() *fakeEvents { return &fakeEvents{claimed: map[string]bool{}} }

func (f *fakeEvents) Claim(_ context.Context, id string, ttl time.Duration) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.claimErr != nil {
		return false, f.claimErr
	}
	f.ttls = append(f.ttls, ttl)
	if f.claimed[id] {
		return false, nil
	}
	f.claimed[id] = true
	return true, nil
}

func (f *fakeEvents) Release(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.claimed, id)
	f.released = append(f.released, id)
	return nil
}

func (f *fakeEvents) claims() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ttls)
}

func testCatalog(t *testing.T) *plan.Catalog {
	t.Helper()
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "free", Model: plan.Freemium},
		&plan.Plan{Name: "pro", Model: plan.Tiered, StripePrices: []string{"price_pro_monthly", "price_pro_yearly"}},
		&plan.Plan{Name: "business", Model: plan.PayG, StripePrices: []string{"price_business"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// acme starts on the free plan, billed to cus_acme.
var acme = apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_acme"}

type webhookFixture struct {
	h         *Webhook
	consumers *fakeConsumers
	events    *fakeEvents
	mu        sync.Mutex
	now       time.Time
}

type webhookOptions struct {
	secret   string
	fallback string
	action   string
	grace    time.Duration
	log      *zap.Logger
}

func newWebhookFixture(t *testing.T, o webhookOptions, cs ...apikey.Consumer) *webhookFixture {
	t.Helper()
	cat := testCatalog(t)
	f := &webhookFixture{consumers: newFakeConsumers(cs...), events: newFakeEvents(), now: webhookTestNow}
	if o.log == nil {
		o.log = zaptest.NewLogger(t)
	}
	f.h = NewWebhook(WebhookConfig{
		Secret:        o.secret,
		Consumers:     f.consumers,
		Events:        f.events,
		Catalog:       func() *plan.Catalog { return cat },
		FallbackPlan:  func() string { return o.fallback },
		PaymentFailed: func() (string, time.Duration) { return o.action, o.grace },
		Log:           o.log,
		Clock: func() time.Time {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.now
		},
	})
	return f
}

func (f *webhookFixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// signStripe signs a payload the way Stripe does, at ts.
func signStripe(payload []byte, secret string, ts time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{
		Payload: payload, Secret: secret, Timestamp: ts,
	}).Header
}

func (f *webhookFixture) deliver(t *testing.T, method string, payload []byte, sig string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, "/stripe/webhook", bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	if sig != "" {
		req.Header.Set("Stripe-Signature", sig)
	}
	rec := httptest.NewRecorder()
	apitest.Handler(t, f.h).ServeHTTP(rec, req)
	return rec
}

// post delivers a payload signed now with the test secret.
func (f *webhookFixture) post(t *testing.T, payload []byte) *httptest.ResponseRecorder {
	t.Helper()
	return f.deliver(t, http.MethodPost, payload, signStripe(payload, webhookTestSecret, time.Now()))
}

// subEvent describes a customer.subscription.* event.
type subEvent struct {
	id, typ    string
	created    int64
	apiVersion string // default 2023-10-16
	customer   string
	status     string
	prices     []string
	// periodStart is the subscription's current_period_start (API versions
	// before 2025-03-31); itemPeriodStart is the items' (later versions).
	periodStart, itemPeriodStart int64
	// object overrides data.object.object (default "subscription").
	object string
}

// json renders the event as Stripe sends it.
func (e subEvent) json(t *testing.T) []byte {
	t.Helper()
	items := []any{}
	for i, price := range e.prices {
		item := map[string]any{
			"id": fmt.Sprintf("si_%s_%d", e.id, i), "object": "subscription_item",
			"created": e.created, "quantity": 1, "subscription": "sub_" + e.customer,
			"price": map[string]any{
				"id": price, "object": "price", "active": true, "currency": "usd",
				"product": "prod_api", "type": "recurring", "unit_amount": 4900,
				"recurring": map[string]any{"interval": "month", "interval_count": 1, "usage_type": "licensed"},
			},
		}
		if e.itemPeriodStart != 0 {
			item["current_period_start"] = e.itemPeriodStart
			item["current_period_end"] = e.itemPeriodStart + 31*24*3600
		}
		items = append(items, item)
	}
	sub := map[string]any{
		"id": "sub_" + e.customer, "object": "subscription", "customer": e.customer,
		"status": e.status, "livemode": false, "cancel_at_period_end": false,
		"collection_method": "charge_automatically", "currency": "usd", "created": evT1,
		"items": map[string]any{
			"object": "list", "data": items, "has_more": false,
			"url": "/v1/subscription_items?subscription=sub_" + e.customer,
		},
	}
	if e.object != "" {
		sub["object"] = e.object
	}
	if e.periodStart != 0 {
		sub["current_period_start"] = e.periodStart
		sub["current_period_end"] = e.periodStart + 31*24*3600
	}
	return stripeEventJSON(t, e.id, e.typ, e.created, e.apiVersion, sub)
}

// invoiceEvent renders an invoice.* event for a customer.
func invoiceEvent(t *testing.T, id, typ string, created int64, customer string) []byte {
	t.Helper()
	inv := map[string]any{
		"id": "in_" + id, "object": "invoice", "customer": customer, "subscription": "sub_" + customer,
		"status": "open", "amount_due": 4900, "amount_paid": 0, "currency": "usd",
		"attempt_count": 1, "billing_reason": "subscription_cycle", "livemode": false,
	}
	return stripeEventJSON(t, id, typ, created, "", inv)
}

func stripeEventJSON(t *testing.T, id, typ string, created int64, apiVersion string, object any) []byte {
	t.Helper()
	if apiVersion == "" {
		apiVersion = "2023-10-16"
	}
	b, err := json.Marshal(map[string]any{
		"id": id, "object": "event", "api_version": apiVersion, "created": created,
		"livemode": false, "pending_webhooks": 1, "type": typ,
		"request": map[string]any{"id": "req_" + id, "idempotency_key": nil},
		"data":    map[string]any{"object": object},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func subCreated(id string, created int64, price string) subEvent {
	return subEvent{id: id, typ: "customer.subscription.created", created: created, customer: "cus_acme",
		status: "active", prices: []string{price}, periodStart: created}
}

func subUpdated(id string, created int64, status string, prices ...string) subEvent {
	return subEvent{id: id, typ: "customer.subscription.updated", created: created, customer: "cus_acme",
		status: status, prices: prices, periodStart: created}
}

func subDeleted(id string, created int64) subEvent {
	return subEvent{id: id, typ: "customer.subscription.deleted", created: created, customer: "cus_acme",
		status: "canceled", prices: []string{"price_pro_monthly"}, periodStart: evT1}
}

func unix(s int64) time.Time { return time.Unix(s, 0).UTC() }

func TestWebhookAppliesSubscriptionEventsInEventOrder(t *testing.T) {
	tests := []struct {
		name     string
		fallback string
		give     []subEvent
		want     apikey.Consumer
		wantPuts int
		wantBody string // of the last delivery
	}{
		{
			name:     "created sets plan, plan since and period anchor",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly")},
			want:     apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_acme", PlanSince: unix(evT1), PeriodAnchor: unix(evT1)},
			wantPuts: 1,
			wantBody: `{"received":true}`,
		},
		{
			name:     "updated upgrades",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subUpdated("evt_2", evT2, "active", "price_business")},
			want:     apikey.Consumer{ID: "acme", Plan: "business", StripeCustomerID: "cus_acme", PlanSince: unix(evT2), PeriodAnchor: unix(evT2)},
			wantPuts: 2,
			wantBody: `{"received":true}`,
		},
		{
			name:     "an older event after a newer one changes nothing",
			give:     []subEvent{subUpdated("evt_2", evT2, "active", "price_business"), subCreated("evt_1", evT1, "price_pro_monthly")},
			want:     apikey.Consumer{ID: "acme", Plan: "business", StripeCustomerID: "cus_acme", PlanSince: unix(evT2), PeriodAnchor: unix(evT2)},
			wantPuts: 1,
			wantBody: `{"received":true}`,
		},
		{
			name:     "an event of the same second applies in arrival order",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subUpdated("evt_2", evT1, "active", "price_business")},
			want:     apikey.Consumer{ID: "acme", Plan: "business", StripeCustomerID: "cus_acme", PlanSince: unix(evT1), PeriodAnchor: unix(evT1)},
			wantPuts: 2,
			wantBody: `{"received":true}`,
		},
		{
			name:     "the first item whose price maps to a plan decides",
			give:     []subEvent{subUpdated("evt_1", evT1, "active", "price_addon_support", "price_pro_yearly", "price_business")},
			want:     apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_acme", PlanSince: unix(evT1), PeriodAnchor: unix(evT1)},
			wantPuts: 1,
			wantBody: `{"received":true}`,
		},
		{
			name:     "deleted moves to the fallback plan and keeps the anchor",
			fallback: "free",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subDeleted("evt_2", evT3)},
			want:     apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_acme", PlanSince: unix(evT3), PeriodAnchor: unix(evT1)},
			wantPuts: 2,
			wantBody: `{"received":true}`,
		},
		{
			name:     "deleted without a fallback plan leaves the plan",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subDeleted("evt_2", evT3)},
			want:     apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_acme", PlanSince: unix(evT1), PeriodAnchor: unix(evT1)},
			wantPuts: 1,
			wantBody: `{"received":true}`,
		},
		{
			name:     "a late update after deletion does not bring the plan back",
			fallback: "free",
			give:     []subEvent{subDeleted("evt_3", evT3), subUpdated("evt_2", evT2, "active", "price_business")},
			want:     apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_acme", PlanSince: unix(evT3)},
			wantPuts: 1,
			wantBody: `{"received":true}`,
		},
		{
			name:     "canceled status is handled like deleted",
			fallback: "free",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subUpdated("evt_2", evT2, "canceled", "price_pro_monthly")},
			want:     apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_acme", PlanSince: unix(evT2), PeriodAnchor: unix(evT1)},
			wantPuts: 2,
			wantBody: `{"received":true}`,
		},
		{
			name:     "unpaid status is handled like deleted",
			fallback: "free",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subUpdated("evt_2", evT2, "unpaid", "price_pro_monthly")},
			want:     apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_acme", PlanSince: unix(evT2), PeriodAnchor: unix(evT1)},
			wantPuts: 2,
			wantBody: `{"received":true}`,
		},
		{
			name:     "incomplete_expired status is handled like deleted",
			fallback: "free",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subUpdated("evt_2", evT2, "incomplete_expired", "price_pro_monthly")},
			want:     apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_acme", PlanSince: unix(evT2), PeriodAnchor: unix(evT1)},
			wantPuts: 2,
			wantBody: `{"received":true}`,
		},
		{
			name: "unknown customer changes nothing",
			give: []subEvent{{id: "evt_1", typ: "customer.subscription.created", created: evT1, customer: "cus_nobody",
				status: "active", prices: []string{"price_pro_monthly"}, periodStart: evT1}},
			want:     acme,
			wantBody: `{"received":true}`,
		},
		{
			name:     "unknown price changes nothing",
			give:     []subEvent{subCreated("evt_1", evT1, "price_unknown")},
			want:     acme,
			wantBody: `{"received":true}`,
		},
		{
			name:     "duplicate event id is applied once",
			give:     []subEvent{subCreated("evt_1", evT1, "price_pro_monthly"), subCreated("evt_1", evT1, "price_pro_monthly")},
			want:     apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_acme", PlanSince: unix(evT1), PeriodAnchor: unix(evT1)},
			wantPuts: 1,
			wantBody: `{"received":true,"duplicate":true}`,
		},
		{
			name: "a newer API version's item period start is the anchor",
			give: []subEvent{{id: "evt_1", typ: "customer.subscription.created", created: evT2, apiVersion: "2025-03-31.basil",
				customer: "cus_acme", status: "active", prices: []string{"price_pro_monthly"}, itemPeriodStart: evT1}},
			want:     apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_acme", PlanSince: unix(evT2), PeriodAnchor: unix(evT1)},
			wantPuts: 1,
			wantBody: `{"received":true}`,
		},
		{
			name:     "other event types are acknowledged and ignored",
			give:     []subEvent{{id: "evt_1", typ: "customer.created", created: evT1, customer: "cus_acme", object: "customer"}},
			want:     acme,
			wantBody: `{"received":true}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret, fallback: tt.fallback}, acme)
			var rec *httptest.ResponseRecorder
			for _, ev := range tt.give {
				rec = f.post(t, ev.json(t))
				if rec.Code != http.StatusOK {
					t.Fatalf("%s: status %d %q, want 200", ev.id, rec.Code, rec.Body.String())
				}
			}
			if got := strings.TrimSpace(rec.Body.String()); got != tt.wantBody {
				t.Errorf("body %s, want %s", got, tt.wantBody)
			}
			if got := rec.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("content type %q", got)
			}
			if got := f.consumers.get("acme"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("consumer\n got %+v\nwant %+v", got, tt.want)
			}
			if got := f.consumers.putCount(); got != tt.wantPuts {
				t.Errorf("puts %d, want %d", got, tt.wantPuts)
			}
		})
	}
}

func TestWebhookClaimsEachEventForThreeDays(t *testing.T) {
	f := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret}, acme)
	f.post(t, subCreated("evt_1", evT1, "price_pro_monthly").json(t))
	f.post(t, subCreated("evt_1", evT1, "price_pro_monthly").json(t))
	want := []time.Duration{72 * time.Hour, 72 * time.Hour}
	if fmt.Sprint(f.events.ttls) != fmt.Sprint(want) {
		t.Errorf("claim ttls %v, want %v", f.events.ttls, want)
	}
}

func TestWebhookRejectsUnverifiedEventsAndChangesNothing(t *testing.T) {
	good := subCreated("evt_1", evT1, "price_pro_monthly").json(t)
	tampered := bytes.Replace(good, []byte("price_pro_monthly"), []byte("price_business"), 1)
	notJSON := []byte("this is not json")
	wrongObject := subEvent{id: "evt_1", typ: "customer.subscription.created", created: evT1, customer: "cus_acme",
		status: "active", prices: []string{"price_pro_monthly"}, object: "invoice"}.json(t)
	oversized := append(bytes.Repeat([]byte(" "), MaxWebhookBody), good...)
	now := time.Now()
	tests := []struct {
		name       string
		method     string
		give       []byte
		sig        string
		wantStatus int
		wantBody   string
	}{
		{"tampered body", http.MethodPost, tampered, signStripe(good, webhookTestSecret, now), 400, "invalid signature"},
		{"wrong secret", http.MethodPost, good, signStripe(good, "whsec_other", now), 400, "invalid signature"},
		{"missing header", http.MethodPost, good, "", 400, "missing Stripe-Signature header"},
		{"garbage header", http.MethodPost, good, "garbage", 400, "invalid Stripe-Signature header"},
		{"timestamp older than 300s", http.MethodPost, good, signStripe(good, webhookTestSecret, now.Add(-301*time.Second)), 400, "signature timestamp outside tolerance"},
		{"signed but not JSON", http.MethodPost, notJSON, signStripe(notJSON, webhookTestSecret, now), 400, "invalid event"},
		{"signed but the object is not a subscription", http.MethodPost, wrongObject, signStripe(wrongObject, webhookTestSecret, now), 400, "invalid event object"},
		{"body over 1 MiB", http.MethodPost, oversized, signStripe(oversized, webhookTestSecret, now), 413, "body too large"},
		{"not a POST", http.MethodGet, nil, "", 405, "method not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret, fallback: "free"}, acme)
			rec := f.deliver(t, tt.method, tt.give, tt.sig)
			if rec.Code != tt.wantStatus || strings.TrimSpace(rec.Body.String()) != tt.wantBody {
				t.Errorf("got %d %q, want %d %q", rec.Code, rec.Body.String(), tt.wantStatus, tt.wantBody)
			}
			if got := f.consumers.get("acme"); !reflect.DeepEqual(got, acme) {
				t.Errorf("consumer changed: %+v", got)
			}
			if n := f.events.claims(); n != 0 {
				t.Errorf("%d claims, want none", n)
			}
		})
	}
}

func TestWebhookAnswers503WithoutSecret(t *testing.T) {
	f := newWebhookFixture(t, webhookOptions{}, acme)
	payload := subCreated("evt_1", evT1, "price_pro_monthly").json(t)
	rec := f.deliver(t, http.MethodPost, payload, signStripe(payload, "", time.Now()))
	if rec.Code != http.StatusServiceUnavailable || strings.TrimSpace(rec.Body.String()) != "webhooks not configured" {
		t.Errorf("got %d %q, want 503 webhooks not configured", rec.Code, rec.Body.String())
	}
	if got := f.consumers.get("acme"); !reflect.DeepEqual(got, acme) {
		t.Errorf("consumer changed: %+v", got)
	}
}

func TestWebhookReleasesEventSoThatStripesRetryApplies(t *testing.T) {
	storeDown := errors.New("store unreachable")
	tests := []struct {
		name           string
		putErr, getErr error
	}{
		{"put fails", storeDown, nil},
		{"lookup fails", nil, storeDown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret}, acme)
			stored := f.consumers.byID["acme"]
			payload := subCreated("evt_1", evT1, "price_pro_monthly").json(t)

			f.consumers.fail(tt.putErr, tt.getErr)
			if rec := f.post(t, payload); rec.Code != http.StatusInternalServerError {
				t.Fatalf("while the store fails: %d %q, want 500", rec.Code, rec.Body.String())
			}
			if !reflect.DeepEqual(*stored, acme) {
				t.Errorf("stored consumer mutated: %+v", *stored)
			}
			if fmt.Sprint(f.events.released) != "[evt_1]" {
				t.Errorf("released %v, want [evt_1]", f.events.released)
			}

			f.consumers.fail(nil, nil)
			rec := f.post(t, payload)
			if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != `{"received":true}` {
				t.Fatalf("retry: %d %q, want 200 received", rec.Code, rec.Body.String())
			}
			want := apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_acme", PlanSince: unix(evT1), PeriodAnchor: unix(evT1)}
			if got := f.consumers.get("acme"); !reflect.DeepEqual(got, want) {
				t.Errorf("after retry\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestWebhookAnswers500WhenEventsCannotBeClaimed(t *testing.T) {
	f := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret}, acme)
	f.events.claimErr = errors.New("redis down")
	rec := f.post(t, subCreated("evt_1", evT1, "price_pro_monthly").json(t))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("got %d %q, want 500", rec.Code, rec.Body.String())
	}
	if got := f.consumers.get("acme"); !reflect.DeepEqual(got, acme) {
		t.Errorf("consumer changed: %+v", got)
	}
}

func TestWebhookPaymentFailureSchedulesSuspension(t *testing.T) {
	const grace = 72 * time.Hour
	type delivery struct {
		after   time.Duration // the clock advances this much first
		payload []byte
	}
	failed := func(id string, created int64) delivery {
		return delivery{time.Hour, invoiceEvent(t, id, "invoice.payment_failed", created, "cus_acme")}
	}
	paid := func(id, typ string, created int64) delivery {
		return delivery{time.Hour, invoiceEvent(t, id, typ, created, "cus_acme")}
	}
	suspended := acme
	suspended.Suspended = true
	tests := []struct {
		name   string
		action string
		start  apikey.Consumer
		give   []delivery
		want   apikey.Consumer
	}{
		{
			name:   "failed sets suspend at now plus grace",
			action: "suspend",
			start:  acme,
			give:   []delivery{failed("evt_1", evT1)},
			want:   withSuspendAt(acme, webhookTestNow.Add(time.Hour+grace)),
		},
		{
			name:   "a later failure keeps the first deadline",
			action: "suspend",
			start:  acme,
			give:   []delivery{failed("evt_1", evT1), failed("evt_2", evT2)},
			want:   withSuspendAt(acme, webhookTestNow.Add(time.Hour+grace)),
		},
		{
			name:   "invoice.paid after failed clears",
			action: "suspend",
			start:  acme,
			give:   []delivery{failed("evt_1", evT1), paid("evt_2", "invoice.paid", evT2)},
			want:   acme,
		},
		{
			name:   "invoice.payment_succeeded after failed clears",
			action: "suspend",
			start:  acme,
			give:   []delivery{failed("evt_1", evT1), paid("evt_2", "invoice.payment_succeeded", evT2)},
			want:   acme,
		},
		{
			name:   "paid leaves the operator's suspension",
			action: "suspend",
			start:  suspended,
			give:   []delivery{failed("evt_1", evT1), paid("evt_2", "invoice.paid", evT2)},
			want:   suspended,
		},
		{
			name:   "action none changes nothing",
			action: "none",
			start:  acme,
			give:   []delivery{failed("evt_1", evT1)},
			want:   acme,
		},
		{
			name:   "a duplicate paid event is applied once",
			action: "suspend",
			start:  acme,
			give:   []delivery{paid("evt_1", "invoice.paid", evT1), failed("evt_2", evT2), paid("evt_1", "invoice.paid", evT1)},
			want:   withSuspendAt(acme, webhookTestNow.Add(2*time.Hour+grace)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret, action: tt.action, grace: grace}, tt.start)
			for _, d := range tt.give {
				f.advance(d.after)
				if rec := f.post(t, d.payload); rec.Code != http.StatusOK {
					t.Fatalf("status %d %q, want 200", rec.Code, rec.Body.String())
				}
			}
			if got := f.consumers.get("acme"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("consumer\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func withSuspendAt(c apikey.Consumer, at time.Time) apikey.Consumer {
	c.SuspendAt = at
	return c
}

func TestWebhookLogsNeitherSecretNorPayload(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	f := newWebhookFixture(t, webhookOptions{secret: webhookTestSecret, fallback: "free", action: "suspend", grace: time.Hour, log: zap.New(core)}, acme)
	payloads := [][]byte{
		subCreated("evt_1", evT1, "price_pro_monthly").json(t),
		subCreated("evt_1", evT1, "price_pro_monthly").json(t),
		subCreated("evt_2", evT2, "price_unknown").json(t),
		subDeleted("evt_3", evT3).json(t),
		invoiceEvent(t, "evt_4", "invoice.payment_failed", evT3, "cus_acme"),
		invoiceEvent(t, "evt_5", "invoice.payment_failed", evT3, "cus_nobody"),
	}
	var sigs []string
	for _, p := range payloads {
		sig := signStripe(p, webhookTestSecret, time.Now())
		sigs = append(sigs, sig)
		f.deliver(t, http.MethodPost, p, sig)
	}
	bad := bytes.Replace(payloads[0], []byte("pro"), []byte("biz"), 1)
	f.deliver(t, http.MethodPost, bad, sigs[0])

	if logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		forbidden := append([]string{webhookTestSecret, "subscription_item", "charge_automatically", "subscription_cycle"}, sigs...)
		for _, s := range forbidden {
			if strings.Contains(line, s) {
				t.Errorf("log line contains %q: %s", s, line)
			}
		}
	}
	if n := len(logs.FilterField(zap.String("event_id", "evt_1")).All()); n == 0 {
		t.Error("event id not logged")
	}
	if n := len(logs.FilterField(zap.String("customer", "cus_nobody")).All()); n == 0 {
		t.Error("unknown customer id not logged")
	}
}
