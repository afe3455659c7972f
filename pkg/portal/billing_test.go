package portal_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/portal"
	"github.com/levyhq/levy/pkg/stripetest"
)

// pricedCatalog is catalog's plans with pro sold through Stripe and usage
// alerts at 20% and 50% of pro's quota.
func pricedCatalog(t *testing.T) *plan.Catalog {
	t.Helper()
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "pro", Model: plan.Tiered, Rate: &plan.Rate{Requests: 100, Per: time.Second, Burst: 200},
			Quota: &plan.Quota{Requests: 100000, Period: plan.Month, Enforcement: plan.Hard}, StripePrices: []string{"price_pro"}, Alerts: []int{20, 50}},
		&plan.Plan{Name: "free", Model: plan.Freemium, Rate: &plan.Rate{Requests: 10, Per: time.Minute},
			Quota: &plan.Quota{Requests: 1000, Period: plan.Month, Enforcement: plan.Hard}},
		&plan.Plan{Name: "payg", Model: plan.PayG, Quota: &plan.Quota{Requests: 5000, Period: plan.Month, Enforcement: plan.Soft, Cap: 20000}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// With Stripe, "Subscribe to pro" sends the customer (303) to a Stripe
// Checkout session on pro's price, as the Stripe customer levy made for
// it; a self-serve plan without a price still switches directly.
func TestPlanChangeOpensStripeCheckoutForAPricedPlan(t *testing.T) {
	st := stripetest.Start(t)
	cat := pricedCatalog(t)
	var e *env
	e = newEnv(t, nil, nil, func(c *portal.Config) {
		c.Catalog = func() *plan.Catalog { return cat }
		c.Billing = billing.NewPlanChanges(billing.PlanChangesConfig{
			Stripe: billing.NewStripeClient("sk_test_levy", st.URL), Catalog: c.Catalog,
			URLs: func() (string, string, string) {
				return e.url + "/portal/?done=checkout", e.url + "/portal/plan", e.url + "/portal/plan"
			},
			Consumers: c.Keys, Log: zaptest.NewLogger(t),
		})
	})
	b := e.browser()
	csrf := e.signIn(b, "b") // on free, no Stripe customer
	if page := b.get("/portal/plan"); !strings.Contains(page.body, "Subscribe to pro") || !strings.Contains(page.body, "Switch to payg") {
		t.Fatalf("plan page offers:\n%s", page.body)
	}
	a := b.post("/portal/plan", url.Values{"csrf": {csrf}, "plan": {"pro"}})
	if a.status != 303 || !strings.HasPrefix(a.header.Get("Location"), "https://") {
		t.Fatalf("subscribe to pro: %d %v %s", a.status, a.header, a.body)
	}
	sessions := st.Calls("/v1/checkout/sessions")
	if len(sessions) != 1 {
		t.Fatalf("%d checkout sessions", len(sessions))
	}
	stored, err := e.keys.GetConsumer(context.Background(), "b")
	if err != nil || stored.StripeCustomerID == "" || stored.Plan != "free" {
		t.Fatalf("consumer b after checkout: %+v %v", stored, err)
	}
	if f := sessions[0].Form; f.Get("line_items[0][price]") != "price_pro" || f.Get("customer") != stored.StripeCustomerID ||
		f.Get("success_url") != e.url+"/portal/?done=checkout" {
		t.Errorf("checkout session form %v", f)
	}

	a = b.post("/portal/plan", url.Values{"csrf": {csrf}, "plan": {"payg"}})
	if a.status != 303 || a.header.Get("Location") != "/portal/?done=plan" {
		t.Fatalf("switch to payg: %d %v", a.status, a.header)
	}
	if c, _ := e.keys.GetConsumer(context.Background(), "b"); c.Plan != "payg" {
		t.Errorf("plan %q after the direct switch, want payg", c.Plan)
	}
	if n := len(st.Calls("/v1/checkout/sessions")); n != 1 {
		t.Errorf("the direct switch made a checkout session")
	}
}

// Without Stripe, the self-serve plans switch directly, and the others are
// not offered.
func TestPlanChangeWithoutStripeSwitchesAmongSelfServePlans(t *testing.T) {
	cat := pricedCatalog(t)
	e := newEnv(t, nil, nil, func(c *portal.Config) { c.Catalog = func() *plan.Catalog { return cat } })
	b := e.browser()
	csrf := e.signIn(b, "b")
	if page := b.get("/portal/plan"); strings.Contains(page.body, "Subscribe to") || strings.Contains(page.body, "Switch to pro") {
		t.Fatalf("plan page without Stripe:\n%s", page.body)
	}
	if a := b.post("/portal/plan", url.Values{"csrf": {csrf}, "plan": {"pro"}}); a.status != 400 {
		t.Errorf("switch to pro without Stripe: %d", a.status)
	}
	if a := b.post("/portal/plan", url.Values{"csrf": {csrf}, "plan": {"payg"}}); a.status != 303 || a.header.Get("Location") != "/portal/?done=plan" {
		t.Fatalf("switch to payg: %d %v", a.status, a.header)
	}
	if c, _ := e.keys.GetConsumer(context.Background(), "b"); c.Plan != "payg" {
		t.Errorf("plan %q, want payg", c.Plan)
	}
}

// Once the period's usage crosses an alert threshold, the overview says
// how much is used: 25,000 of pro's 100,000 is past 20%.
func TestOverviewShowsTheUsageAlertCrossed(t *testing.T) {
	cat := pricedCatalog(t)
	e := newEnv(t, nil, nil, func(c *portal.Config) { c.Catalog = func() *plan.Catalog { return cat } })
	b := e.browser()
	e.signIn(b, "a")
	page := b.get("/portal/")
	if !strings.Contains(page.body, "You have used 25% of your monthly quota.") || strings.Contains(page.body, `class="banner over"`) {
		t.Fatalf("overview:\n%s", page.body)
	}
	e2 := newEnv(t, nil, nil)
	b2 := e2.browser()
	e2.signIn(b2, "a")
	if page := b2.get("/portal/"); strings.Contains(page.body, "usage-alert") {
		t.Errorf("a banner for a plan without alerts:\n%s", page.body)
	}
}
