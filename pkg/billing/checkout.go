package billing

import (
	"context"
	"errors"
	"fmt"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// ConsumerMetadata is the metadata key that names a levy consumer on the
// Stripe customers, Checkout sessions and subscriptions levy creates.
const ConsumerMetadata = "levy_consumer"

// ErrNoPrice: the plan has no Stripe price to subscribe to.
var ErrNoPrice = errors.New("the plan has no Stripe price (plans.<name>.billing.stripe_prices)")

// PlanChangesConfig configures PlanChanges.
type PlanChangesConfig struct {
	// Stripe is the API client (NewStripeClient).
	Stripe  *client.API
	Catalog func() *plan.Catalog
	// URLs are where Stripe's pages send the customer back: after a paid
	// Checkout, a cancelled one, and from the customer portal.
	URLs func() (success, cancel, back string)
	// Consumers records the Stripe customer levy creates for a consumer
	// (the admin API's store; a stored consumer overrides the file's).
	Consumers ConsumerStore
	Log       *zap.Logger
}

// ConsumerStore reads and writes stored consumers.
type ConsumerStore interface {
	GetConsumer(ctx context.Context, id string) (*apikey.Consumer, error)
	PutConsumer(ctx context.Context, c *apikey.Consumer) error
}

// PlanChanges starts plan changes on Stripe's hosted pages, for the
// developer portal. A consumer already subscribed (a Stripe customer on a
// plan with a Stripe price) changes its subscription in the Stripe
// customer portal; any other subscribes through Stripe Checkout, as the
// Stripe customer levy creates for it and records, so that the webhook
// that follows (customer.subscription.created) finds the consumer and
// applies the plan.
type PlanChanges struct {
	cfg PlanChangesConfig
}

// NewPlanChanges returns the portal's Stripe billing.
func NewPlanChanges(cfg PlanChangesConfig) *PlanChanges {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &PlanChanges{cfg: cfg}
}

// Checkout returns the URL of the Stripe page that moves c to the plan
// named to: a Checkout session (mode subscription, the plan's first Stripe
// price) or, for a consumer subscribed already, a customer portal session.
// back is unused: the configured URLs say where Stripe returns.
func (p *PlanChanges) Checkout(ctx context.Context, c *apikey.Consumer, to, _ string) (string, error) {
	cat := p.cfg.Catalog()
	target, ok := cat.Get(to)
	if !ok {
		return "", fmt.Errorf("checkout: unknown plan %q", to)
	}
	if len(target.StripePrices) == 0 {
		return "", fmt.Errorf("checkout to %s: %w", to, ErrNoPrice)
	}
	if cur, ok := cat.Get(c.Plan); ok && c.StripeCustomerID != "" && len(cur.StripePrices) > 0 {
		return p.CustomerPortal(ctx, c, "")
	}
	customer, err := p.customer(ctx, c)
	if err != nil {
		return "", err
	}
	success, cancel, _ := p.cfg.URLs()
	item := &stripe.CheckoutSessionLineItemParams{Price: stripe.String(target.StripePrices[0])}
	if target.Model != plan.PayG {
		// A metered price (pay as you go) takes no quantity.
		item.Quantity = stripe.Int64(1)
	}
	params := &stripe.CheckoutSessionParams{
		Mode:              stripe.String(string(stripe.CheckoutSessionModeSubscription)),
		Customer:          stripe.String(customer),
		ClientReferenceID: stripe.String(c.ID),
		LineItems:         []*stripe.CheckoutSessionLineItemParams{item},
		SuccessURL:        stripe.String(success),
		CancelURL:         stripe.String(cancel),
		SubscriptionData:  &stripe.CheckoutSessionSubscriptionDataParams{},
	}
	params.Context = ctx
	params.AddMetadata(ConsumerMetadata, c.ID)
	params.SubscriptionData.AddMetadata(ConsumerMetadata, c.ID)
	s, err := p.cfg.Stripe.CheckoutSessions.New(params)
	if err != nil {
		return "", fmt.Errorf("stripe checkout session: %w", err)
	}
	if s.URL == "" {
		return "", errors.New("stripe checkout session: no url in Stripe's answer")
	}
	p.cfg.Log.Info("stripe checkout started", zap.String("consumer", c.ID), zap.String("plan", to), zap.String("session", s.ID))
	return s.URL, nil
}

// CustomerPortal returns the URL of a Stripe customer portal session for
// c, which must be a Stripe customer.
func (p *PlanChanges) CustomerPortal(ctx context.Context, c *apikey.Consumer, _ string) (string, error) {
	if c.StripeCustomerID == "" {
		return "", fmt.Errorf("customer portal: consumer %s has no Stripe customer", c.ID)
	}
	_, _, back := p.cfg.URLs()
	params := &stripe.BillingPortalSessionParams{Customer: stripe.String(c.StripeCustomerID), ReturnURL: stripe.String(back)}
	params.Context = ctx
	s, err := p.cfg.Stripe.BillingPortalSessions.New(params)
	if err != nil {
		return "", fmt.Errorf("stripe customer portal session: %w", err)
	}
	if s.URL == "" {
		return "", errors.New("stripe customer portal session: no url in Stripe's answer")
	}
	return s.URL, nil
}

// customer is c's Stripe customer, created and recorded when it has none.
// The creation's idempotency key is the consumer's, so that two clicks at
// once (or on two replicas) within Stripe's 24 hours make one customer.
func (p *PlanChanges) customer(ctx context.Context, c *apikey.Consumer) (string, error) {
	if c.StripeCustomerID != "" {
		return c.StripeCustomerID, nil
	}
	params := &stripe.CustomerParams{Description: stripe.String("levy consumer " + c.ID)}
	params.Context = ctx
	params.AddMetadata(ConsumerMetadata, c.ID)
	params.SetIdempotencyKey("levy-customer-" + c.ID)
	cus, err := p.cfg.Stripe.Customers.New(params)
	if err != nil {
		return "", fmt.Errorf("stripe customer: %w", err)
	}
	stored, err := p.cfg.Consumers.GetConsumer(ctx, c.ID)
	if errors.Is(err, apikey.ErrNotFound) {
		// A consumer of the config file: the store's copy overrides it.
		cp := *c
		stored, err = &cp, nil
	}
	if err != nil {
		return "", fmt.Errorf("record stripe customer: %w", err)
	}
	next := *stored
	next.StripeCustomerID = cus.ID
	if err := p.cfg.Consumers.PutConsumer(ctx, &next); err != nil {
		return "", fmt.Errorf("record stripe customer: %w", err)
	}
	p.cfg.Log.Info("stripe customer created", zap.String("consumer", c.ID), zap.String("stripe_customer", cus.ID))
	return cus.ID, nil
}
