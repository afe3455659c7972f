package portal_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
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

// A consumer in a failed payment's grace period is told to pay by the
// deadline, with the button to Stripe's customer portal when the session
// may open it, else whom to contact; once the deadline passed, that it is
// suspended until it pays.
func TestOverviewTellsAConsumerWhosePaymentFailedWhatToDo(t *testing.T) {
	st := stripetest.Start(t)
	cat := pricedCatalog(t)
	stripe := func(c *portal.Config) {
		c.Catalog = func() *plan.Catalog { return cat }
		c.Billing = billing.NewPlanChanges(billing.PlanChangesConfig{
			Stripe: billing.NewStripeClient("sk_test_levy", st.URL), Catalog: c.Catalog,
			URLs:      func() (string, string, string) { return "https://x/ok", "https://x/cancel", "https://x/back" },
			Consumers: c.Keys, Log: zaptest.NewLogger(t),
		})
	}
	e := newEnv(t, nil, nil, stripe)
	deadline := e.clock.Now().Add(72 * time.Hour)
	if err := e.keys.PutConsumer(context.Background(), &apikey.Consumer{ID: "a", Plan: "pro", StripeCustomerID: "cus_a", SuspendAt: deadline}); err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	csrf := e.signIn(b, "a")
	page := b.get("/portal/").body
	for _, want := range []string{`<h2 id="status-title">Payment failed</h2>`, "Your keys work until 13 Mar 2026 12:00 UTC",
		"<strong>Update your payment method by 13 Mar 2026 12:00 UTC.</strong>", `<button type="submit" id="update-payment">`,
		`<dd id="status">Payment failed`} {
		if !strings.Contains(page, want) {
			t.Errorf("overview lacks %s", want)
		}
	}
	if a := b.post("/portal/billing", url.Values{"csrf": {csrf}}); a.status != 303 || !strings.HasPrefix(a.header.Get("Location"), "https://") {
		t.Fatalf("update payment method: %d %v", a.status, a.header)
	}
	if n := len(st.Calls("/v1/billing_portal/sessions")); n != 1 {
		t.Errorf("%d customer portal sessions", n)
	}

	// Without scope plan, the session cannot open Stripe's pages.
	b = e.browser()
	e.signIn(b, "a", portal.ScopeUsage)
	if page := b.get("/portal/").body; strings.Contains(page, "update-payment") ||
		!strings.Contains(page, "Contact your provider to update your payment method by 13 Mar 2026 12:00 UTC.") {
		t.Errorf("overview without scope plan:\n%s", page)
	}

	// Past the deadline, the account is suspended until the invoice is paid.
	e.clock.Add(73 * time.Hour)
	b = e.browser()
	e.signIn(b, "a")
	if page := b.get("/portal/").body; !strings.Contains(page, `<h2 id="status-title">Suspended</h2>`) ||
		!strings.Contains(page, "was not settled by 13 Mar 2026 12:00 UTC") || !strings.Contains(page, "update-payment") {
		t.Errorf("overview past the deadline:\n%s", page)
	}
}

// Without Stripe, a customer is told whom to contact: the operator's
// portal.contact, linked.
func TestOverviewNamesTheContactWithoutStripe(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.set(func(s *portal.Settings) { s.Contact = "billing@example.com" })
	if err := e.keys.PutConsumer(context.Background(), &apikey.Consumer{ID: "a", Plan: "pro", Suspended: true}); err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	e.signIn(b, "a")
	page := b.get("/portal/").body
	if !strings.Contains(page, `Contact <a href="mailto:billing@example.com">billing@example.com</a> to find out why and to have it resumed.`) ||
		!strings.Contains(page, "Your provider has suspended this account") || strings.Contains(page, "update-payment") {
		t.Errorf("overview of a suspended consumer:\n%s", page)
	}
}

// The overview prices the period from the plan's pricing: a fixed price
// so far and at the end, and whether the quota lasts at this rate.
func TestOverviewShowsTheCostSoFarAndAtThePeriodsEnd(t *testing.T) {
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "pro", Model: plan.Tiered, Quota: &plan.Quota{Requests: 100000, Period: plan.Month, Enforcement: plan.Hard},
			Pricing: &plan.Pricing{Currency: "USD", Fixed: 49_000_000}},
		&plan.Plan{Name: "free", Model: plan.Freemium, Quota: &plan.Quota{Requests: 1000, Period: plan.Month, Enforcement: plan.Hard}},
	)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, nil, nil, func(c *portal.Config) { c.Catalog = func() *plan.Catalog { return cat } })
	b := e.browser()
	e.signIn(b, "a") // 25,000 units 9.5 days into March
	page := b.get("/portal/").body
	for _, want := range []string{`<dd id="cost-so-far">$49.00</dd>`, `<dd id="cost-at-end">$49.00</dd>`,
		"this period comes to 81,578 units and $49.00.", "At this rate your quota of 100,000 units lasts the period.", "Price: $49.00 per month."} {
		if !strings.Contains(page, want) {
			t.Errorf("overview lacks %s", want)
		}
	}
	// Without scope usage, no figures.
	b = e.browser()
	e.signIn(b, "a", portal.ScopeKeys)
	if page := b.get("/portal/").body; strings.Contains(page, "cost-so-far") {
		t.Error("the cost shows without scope usage")
	}
}
