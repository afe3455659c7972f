package billing_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/stripetest"
)

// consumerStore is the admin API's store, in memory.
type consumerStore struct {
	mu sync.Mutex
	m  map[string]apikey.Consumer
}

func (s *consumerStore) GetConsumer(_ context.Context, id string) (*apikey.Consumer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.m[id]
	if !ok {
		return nil, apikey.ErrNotFound
	}
	return &c, nil
}

func (s *consumerStore) PutConsumer(_ context.Context, c *apikey.Consumer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[c.ID] = *c
	return nil
}

func planChanges(t *testing.T) (*billing.PlanChanges, *stripetest.Stripe, *consumerStore) {
	t.Helper()
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "free", Model: plan.Freemium},
		&plan.Plan{Name: "pro", Model: plan.Tiered, StripePrices: []string{"price_pro", "price_pro_old"}},
		&plan.Plan{Name: "payg", Model: plan.PayG, StripePrices: []string{"price_metered"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	st := stripetest.Start(t)
	store := &consumerStore{m: map[string]apikey.Consumer{}}
	pc := billing.NewPlanChanges(billing.PlanChangesConfig{
		Stripe:  billing.NewStripeClient("sk_test_levy", st.URL),
		Catalog: func() *plan.Catalog { return cat },
		URLs: func() (string, string, string) {
			return "https://api.example.com/portal/?done=checkout", "https://api.example.com/portal/plan", "https://api.example.com/portal/plan"
		},
		Consumers: store, Log: zaptest.NewLogger(t),
	})
	return pc, st, store
}

// A consumer without a subscription subscribes through Checkout: levy
// makes it a Stripe customer (recorded, so that the webhook that follows
// finds it) and opens a subscription session on the plan's first price.
func TestCheckoutSubscribesAConsumerWithoutSubscriptionToThePlansPrice(t *testing.T) {
	pc, st, store := planChanges(t)
	u, err := pc.Checkout(context.Background(), &apikey.Consumer{ID: "acme", Plan: "free"}, "pro", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(u, "https://") {
		t.Errorf("session URL %q", u)
	}
	customers := st.Calls("/v1/customers")
	if len(customers) != 1 || customers[0].Form.Get("metadata[levy_consumer]") != "acme" {
		t.Fatalf("customer creation: %+v", customers)
	}
	stored, err := store.GetConsumer(context.Background(), "acme")
	if err != nil || stored.StripeCustomerID == "" || stored.Plan != "free" {
		t.Fatalf("stored consumer %+v, %v: want its new Stripe customer, plan unchanged", stored, err)
	}
	sessions := st.Calls("/v1/checkout/sessions")
	if len(sessions) != 1 {
		t.Fatalf("%d checkout sessions, want 1", len(sessions))
	}
	f := sessions[0].Form
	for field, want := range map[string]string{
		"mode": "subscription", "line_items[0][price]": "price_pro", "line_items[0][quantity]": "1",
		"customer": stored.StripeCustomerID, "client_reference_id": "acme",
		"subscription_data[metadata][levy_consumer]": "acme",
		"success_url": "https://api.example.com/portal/?done=checkout", "cancel_url": "https://api.example.com/portal/plan",
	} {
		if got := f.Get(field); got != want {
			t.Errorf("checkout session %s = %q, want %q", field, got, want)
		}
	}
}

// A metered price takes no quantity (Stripe refuses one).
func TestCheckoutSendsNoQuantityForAMeteredPrice(t *testing.T) {
	pc, st, _ := planChanges(t)
	if _, err := pc.Checkout(context.Background(), &apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_known"}, "payg", ""); err != nil {
		t.Fatal(err)
	}
	if n := len(st.Calls("/v1/customers")); n != 0 {
		t.Errorf("%d customers created for a consumer that has one", n)
	}
	f := st.Calls("/v1/checkout/sessions")[0].Form
	if f.Get("line_items[0][price]") != "price_metered" || f.Has("line_items[0][quantity]") || f.Get("customer") != "cus_known" {
		t.Errorf("checkout session form %v", f)
	}
}

// A subscribed consumer changes plan in the Stripe customer portal, which
// returns to the portal's plan page.
func TestCheckoutSendsASubscribedConsumerToTheCustomerPortal(t *testing.T) {
	pc, st, _ := planChanges(t)
	c := &apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_acme"}
	u, err := pc.Checkout(context.Background(), c, "payg", "")
	if err != nil || u == "" {
		t.Fatalf("Checkout = %q, %v", u, err)
	}
	if n := len(st.Calls("/v1/checkout/sessions")); n != 0 {
		t.Errorf("%d checkout sessions for a subscribed consumer", n)
	}
	calls := st.Calls("/v1/billing_portal/sessions")
	if len(calls) != 1 || calls[0].Form.Get("customer") != "cus_acme" || calls[0].Form.Get("return_url") != "https://api.example.com/portal/plan" {
		t.Fatalf("customer portal sessions: %+v", calls)
	}
}

// What cannot work is an error, with no half-made session: a plan without
// a price, a customer portal without a customer, Stripe failing.
func TestCheckoutRefusesWhatCannotWork(t *testing.T) {
	pc, st, _ := planChanges(t)
	ctx := context.Background()
	if _, err := pc.Checkout(ctx, &apikey.Consumer{ID: "acme", Plan: "pro"}, "free", ""); !errors.Is(err, billing.ErrNoPrice) {
		t.Errorf("to a plan without price: %v, want ErrNoPrice", err)
	}
	if _, err := pc.Checkout(ctx, &apikey.Consumer{ID: "acme", Plan: "free"}, "gold", ""); err == nil {
		t.Error("to an unknown plan: no error")
	}
	if _, err := pc.CustomerPortal(ctx, &apikey.Consumer{ID: "acme", Plan: "free"}, ""); err == nil {
		t.Error("customer portal without a Stripe customer: no error")
	}
	if n := len(st.Calls("")); n != 0 {
		t.Fatalf("%d calls to Stripe for requests that cannot work", n)
	}
	st.Fail(500, -1)
	if u, err := pc.Checkout(ctx, &apikey.Consumer{ID: "acme", Plan: "free", StripeCustomerID: "cus_acme"}, "pro", ""); err == nil || u != "" {
		t.Errorf("with Stripe failing: %q, %v", u, err)
	}
}
