package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// MaxWebhookBody is the largest webhook body read (Stripe's events are a
// few KiB); a larger one is answered 413.
const MaxWebhookBody = 1 << 20

// EventClaimTTL is how long an applied event id is remembered: Stripe
// retries an event it could not deliver for up to three days.
const EventClaimTTL = 72 * time.Hour

// releaseTimeout bounds the Release of a claim after a failed application.
const releaseTimeout = 5 * time.Second

// Consumers is what webhooks need of the consumer store.
type Consumers interface {
	// ConsumerByStripeCustomer finds the consumer billed to a Stripe
	// customer; apikey.ErrNotFound if none.
	ConsumerByStripeCustomer(ctx context.Context, customerID string) (*apikey.Consumer, error)
	// PutConsumer creates or replaces a consumer.
	PutConsumer(ctx context.Context, c *apikey.Consumer) error
}

// Events remembers which Stripe event ids were applied (each applied once).
type Events interface {
	// Claim reports true the first time an id is claimed within ttl.
	Claim(ctx context.Context, eventID string, ttl time.Duration) (bool, error)
	// Release forgets a claim whose application failed, so that Stripe's
	// retry applies it.
	Release(ctx context.Context, eventID string) error
}

// WebhookConfig configures a Webhook.
type WebhookConfig struct {
	// Secret is the endpoint's signing secret (STRIPE_WEBHOOK_SECRET).
	// Empty turns webhooks off: the endpoint answers 503.
	Secret    string
	Consumers Consumers
	Events    Events
	// Catalog returns the current plans (they reload).
	Catalog func() *plan.Catalog
	// FallbackPlan returns the plan a consumer goes to when its
	// subscription ends; "" leaves the plan as it is. nil means "".
	FallbackPlan func() string
	// PaymentFailed returns what a failed invoice payment does: action
	// "none" or "suspend" (after grace). nil means "none".
	PaymentFailed func() (action string, grace time.Duration)
	// Tolerance is how old a signature's timestamp may be; zero means
	// 300s. stripe-go checks it against the wall clock, not Clock.
	Tolerance time.Duration
	Log       *zap.Logger
	// Clock starts a failed payment's grace period; nil means time.Now.
	Clock func() time.Time
}

// Payment-failure actions (config billing.payment_failed.action).
const (
	PaymentFailedNone    = "none"
	PaymentFailedSuspend = "suspend"
)

// Webhook receives Stripe events (POST /stripe/webhook) and applies them to
// consumers: a subscription's price sets the plan, an ended subscription
// moves to the fallback plan, a failed payment may start a grace period
// after which the consumer is suspended, and a paid invoice ends it.
//
// Every event is verified against the signing secret, applied at most once
// (by event id), and subscription events are applied only when they are
// not older than the event that set the consumer's plan (Stripe does not
// deliver in order). A failure to apply answers 500 and forgets the event
// id, so Stripe's retry applies it.
type Webhook struct {
	cfg WebhookConfig
	log *zap.Logger
	// mu serialises read-modify-write of consumers within this replica.
	mu sync.Mutex
}

var _ http.Handler = (*Webhook)(nil)

// NewWebhook returns the handler for Stripe's webhook endpoint.
func NewWebhook(cfg WebhookConfig) *Webhook {
	if cfg.Tolerance <= 0 {
		cfg.Tolerance = webhook.DefaultTolerance
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.FallbackPlan == nil {
		cfg.FallbackPlan = func() string { return "" }
	}
	if cfg.PaymentFailed == nil {
		cfg.PaymentFailed = func() (string, time.Duration) { return PaymentFailedNone, 0 }
	}
	return &Webhook{cfg: cfg, log: cfg.Log}
}

// webhookApply applies one decoded event; an error means "retry later".
type webhookApply func(ctx context.Context, log *zap.Logger) error

// ServeHTTP implements http.Handler.
func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if h.cfg.Secret == "" || h.cfg.Consumers == nil || h.cfg.Events == nil || h.cfg.Catalog == nil {
		http.Error(w, "webhooks not configured", http.StatusServiceUnavailable)
		return
	}
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxWebhookBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.log.Warn("stripe webhook rejected", zap.String("reason", "body too large"))
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	// IgnoreAPIVersionMismatch: stripe-go v76 otherwise rejects every event
	// rendered in an API version other than the one it was generated for,
	// but the version is the Stripe account's or endpoint's choice (and
	// stripe-mock's) and varies. Only fields that are stable across
	// versions are read: customer, status, items' price ids and period
	// start (see subscriptionPeriodStart).
	ev, err := webhook.ConstructEventWithOptions(payload, r.Header.Get("Stripe-Signature"), h.cfg.Secret,
		webhook.ConstructEventOptions{Tolerance: h.cfg.Tolerance, IgnoreAPIVersionMismatch: true})
	if err == nil && ev.ID == "" {
		err = errors.New("event without id")
	}
	if err != nil {
		// The error, not the payload or the header, is logged: neither
		// names the secret.
		reason := webhookRejectReason(err)
		h.log.Warn("stripe webhook rejected", zap.String("reason", reason))
		http.Error(w, reason, http.StatusBadRequest)
		return
	}
	log := h.log.With(zap.String("event_id", ev.ID), zap.String("event_type", string(ev.Type)))

	apply, err := h.decode(&ev)
	if err != nil {
		log.Warn("stripe webhook rejected", zap.String("reason", "invalid event object"), zap.Error(err))
		http.Error(w, "invalid event object", http.StatusBadRequest)
		return
	}
	if apply == nil {
		log.Debug("stripe event ignored")
		writeWebhookReceived(w, false)
		return
	}

	// Claim first, so that two deliveries of one event (Stripe retries
	// while the first is still being applied, or two replicas) apply it
	// once. A crash between Claim and the store write loses that event
	// until the claim expires; the next subscription event repairs it.
	ctx := r.Context()
	first, err := h.cfg.Events.Claim(ctx, ev.ID, EventClaimTTL)
	if err != nil {
		log.Error("cannot claim stripe event", zap.Error(err))
		http.Error(w, "cannot record event", http.StatusInternalServerError)
		return
	}
	if !first {
		log.Info("duplicate stripe event ignored")
		writeWebhookReceived(w, true)
		return
	}
	if err := apply(ctx, log); err != nil {
		log.Error("cannot apply stripe event; Stripe will retry", zap.Error(err))
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		if err := h.cfg.Events.Release(rctx, ev.ID); err != nil {
			log.Error("cannot release stripe event; its retries count as duplicates until the claim expires",
				zap.Error(err), zap.Duration("ttl", EventClaimTTL))
		}
		http.Error(w, "cannot apply event", http.StatusInternalServerError)
		return
	}
	writeWebhookReceived(w, false)
}

// webhookRejectReason is the short answer for an event that fails
// verification.
func webhookRejectReason(err error) string {
	switch {
	case errors.Is(err, webhook.ErrNotSigned):
		return "missing Stripe-Signature header"
	case errors.Is(err, webhook.ErrInvalidHeader):
		return "invalid Stripe-Signature header"
	case errors.Is(err, webhook.ErrNoValidSignature):
		return "invalid signature"
	case errors.Is(err, webhook.ErrTooOld):
		return "signature timestamp outside tolerance"
	default:
		return "invalid event"
	}
}

func writeWebhookReceived(w http.ResponseWriter, duplicate bool) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if duplicate {
		_, _ = io.WriteString(w, `{"received":true,"duplicate":true}`+"\n")
		return
	}
	_, _ = io.WriteString(w, `{"received":true}`+"\n")
}

// decode reads the event's object for the types that change consumers and
// returns how to apply it; nil for the types that are ignored. It runs
// before the event id is claimed, so a malformed object changes nothing.
func (h *Webhook) decode(ev *stripe.Event) (webhookApply, error) {
	created := time.Unix(ev.Created, 0).UTC()
	switch ev.Type {
	case stripe.EventTypeCustomerSubscriptionCreated,
		stripe.EventTypeCustomerSubscriptionUpdated,
		stripe.EventTypeCustomerSubscriptionDeleted:
		var sub stripe.Subscription
		if err := decodeEventObject(ev, "subscription", &sub); err != nil {
			return nil, err
		}
		period := subscriptionPeriodStart(&sub, ev.Data.Raw)
		ended := ev.Type == stripe.EventTypeCustomerSubscriptionDeleted || subscriptionEnded(sub.Status)
		return func(ctx context.Context, log *zap.Logger) error {
			return h.applySubscription(ctx, log, created, &sub, period, ended)
		}, nil
	case stripe.EventTypeInvoicePaymentFailed:
		var inv stripe.Invoice
		if err := decodeEventObject(ev, "invoice", &inv); err != nil {
			return nil, err
		}
		return func(ctx context.Context, log *zap.Logger) error {
			return h.applyPaymentFailed(ctx, log, customerID(inv.Customer))
		}, nil
	case stripe.EventTypeInvoicePaid, stripe.EventTypeInvoicePaymentSucceeded:
		var inv stripe.Invoice
		if err := decodeEventObject(ev, "invoice", &inv); err != nil {
			return nil, err
		}
		return func(ctx context.Context, log *zap.Logger) error {
			return h.applyPaid(ctx, log, customerID(inv.Customer))
		}, nil
	}
	return nil, nil
}

// decodeEventObject decodes data.object, which must be of the given kind.
func decodeEventObject(ev *stripe.Event, object string, v any) error {
	if ev.Data == nil || len(ev.Data.Raw) == 0 {
		return errors.New("no data.object")
	}
	var head struct {
		Object string `json:"object"`
	}
	if err := json.Unmarshal(ev.Data.Raw, &head); err != nil {
		return fmt.Errorf("data.object: %w", err)
	}
	if head.Object != object {
		return fmt.Errorf("data.object is %q, want %q", head.Object, object)
	}
	if err := json.Unmarshal(ev.Data.Raw, v); err != nil {
		return fmt.Errorf("data.object: %w", err)
	}
	return nil
}

func customerID(c *stripe.Customer) string {
	if c == nil {
		return ""
	}
	return c.ID
}

// subscriptionEnded reports whether a subscription in this status no
// longer pays for its plan: it is handled like a deleted one.
func subscriptionEnded(s stripe.SubscriptionStatus) bool {
	switch s {
	case stripe.SubscriptionStatusCanceled, stripe.SubscriptionStatusIncompleteExpired, stripe.SubscriptionStatusUnpaid:
		return true
	}
	return false
}

// subscriptionPeriodStart returns the current billing period's start, or
// zero if the event has none. API versions before 2025-03-31 carry it on
// the subscription; later ones only on each item (stripe-go v76 has no
// field for that, so it is read from the raw object).
func subscriptionPeriodStart(sub *stripe.Subscription, raw json.RawMessage) time.Time {
	// The billing cycle anchor, not the current period's start: a cycle
	// anchored on the 31st has a February period starting on the 28th, and
	// anchoring on that would move every later period to the 28th.
	if sub.BillingCycleAnchor > 0 {
		return time.Unix(sub.BillingCycleAnchor, 0).UTC()
	}
	if sub.CurrentPeriodStart > 0 {
		return time.Unix(sub.CurrentPeriodStart, 0).UTC()
	}
	var items struct {
		Items struct {
			Data []struct {
				CurrentPeriodStart int64 `json:"current_period_start"`
			} `json:"data"`
		} `json:"items"`
	}
	if json.Unmarshal(raw, &items) != nil {
		return time.Time{}
	}
	for _, it := range items.Items.Data {
		if it.CurrentPeriodStart > 0 {
			return time.Unix(it.CurrentPeriodStart, 0).UTC()
		}
	}
	return time.Time{}
}

// consumer finds the consumer billed to a Stripe customer; nil, nil (and a
// warning) if there is none: such an event changes nothing and is not
// retried.
func (h *Webhook) consumer(ctx context.Context, log *zap.Logger, customer string) (*apikey.Consumer, error) {
	if customer == "" {
		log.Warn("stripe event names no customer; nothing to change")
		return nil, nil
	}
	c, err := h.cfg.Consumers.ConsumerByStripeCustomer(ctx, customer)
	if errors.Is(err, apikey.ErrNotFound) || err == nil && c == nil {
		log.Warn("no consumer for stripe customer; nothing to change", zap.String("customer", customer))
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find consumer of stripe customer %q: %w", customer, err)
	}
	return c, nil
}

// applySubscription sets the plan a subscription pays for, or the fallback
// plan if it has ended. It is skipped if the event is older than the one
// that set the consumer's plan (PlanSince); an event of the same second
// applies, in arrival order.
func (h *Webhook) applySubscription(ctx context.Context, log *zap.Logger, created time.Time,
	sub *stripe.Subscription, period time.Time, ended bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, err := h.consumer(ctx, log, customerID(sub.Customer))
	if c == nil {
		return err
	}
	log = log.With(zap.String("consumer", c.ID), zap.String("subscription", sub.ID))
	if created.Before(c.PlanSince) {
		log.Info("stripe event older than the consumer's plan; ignored",
			zap.Time("event_created", created), zap.Time("plan_since", c.PlanSince))
		return nil
	}

	catalog := h.cfg.Catalog()
	next := *c
	if ended {
		fallback := h.cfg.FallbackPlan()
		if fallback == "" {
			log.Info("subscription ended; no fallback plan, plan left as is",
				zap.String("status", string(sub.Status)), zap.String("plan", c.Plan))
			return nil
		}
		if _, ok := catalogPlan(catalog, fallback); !ok {
			log.Error("subscription ended but the fallback plan is not in the catalog; plan left as is",
				zap.String("plan", fallback))
			return nil
		}
		// The period anchor stays: moving it would restart the quota
		// period in the middle.
		next.Plan = fallback
	} else {
		p, ok := subscriptionPlan(catalog, sub)
		if !ok {
			log.Warn("no price of the subscription maps to a plan; nothing to change",
				zap.Strings("prices", subscriptionPrices(sub)))
			return nil
		}
		next.Plan = p.Name
		if !period.IsZero() {
			next.PeriodAnchor = period
		}
	}
	next.PlanSince = created
	if err := h.cfg.Consumers.PutConsumer(ctx, &next); err != nil {
		return fmt.Errorf("put consumer %q: %w", c.ID, err)
	}
	log.Info("plan set by stripe subscription", zap.String("from", c.Plan), zap.String("plan", next.Plan),
		zap.String("status", string(sub.Status)), zap.Time("period_anchor", next.PeriodAnchor))
	return nil
}

func catalogPlan(catalog *plan.Catalog, name string) (*plan.Plan, bool) {
	if catalog == nil {
		return nil, false
	}
	return catalog.Get(name)
}

// subscriptionPlan is the plan of the first item whose price maps to one.
func subscriptionPlan(catalog *plan.Catalog, sub *stripe.Subscription) (*plan.Plan, bool) {
	if catalog == nil || sub.Items == nil {
		return nil, false
	}
	for _, it := range sub.Items.Data {
		if it == nil || it.Price == nil {
			continue
		}
		if p, ok := catalog.ByStripePrice(it.Price.ID); ok {
			return p, true
		}
	}
	return nil, false
}

func subscriptionPrices(sub *stripe.Subscription) []string {
	var prices []string
	if sub.Items != nil {
		for _, it := range sub.Items.Data {
			if it != nil && it.Price != nil {
				prices = append(prices, it.Price.ID)
			}
		}
	}
	return prices
}

// applyPaymentFailed starts the grace period when the action is suspend:
// SuspendAt = now + grace, unless a deadline no later than that is already
// set (the first failure of a run of retries starts the grace period).
//
// Invoice events are not ordered against each other: a paid invoice always
// clears the deadline, and a failure always sets one if none is set. So a
// failure delivered after the success that followed it (Stripe retried its
// delivery) sets a deadline that the next paid invoice, or an operator,
// clears.
func (h *Webhook) applyPaymentFailed(ctx context.Context, log *zap.Logger, customer string) error {
	action, grace := h.cfg.PaymentFailed()
	if action != PaymentFailedSuspend {
		log.Info("invoice payment failed; action is none", zap.String("customer", customer))
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c, err := h.consumer(ctx, log, customer)
	if c == nil {
		return err
	}
	log = log.With(zap.String("consumer", c.ID))
	deadline := h.cfg.Clock().Add(max(grace, 0))
	if !c.SuspendAt.IsZero() && !c.SuspendAt.After(deadline) {
		log.Info("invoice payment failed; suspension already scheduled", zap.Time("suspend_at", c.SuspendAt))
		return nil
	}
	next := *c
	next.SuspendAt = deadline
	if err := h.cfg.Consumers.PutConsumer(ctx, &next); err != nil {
		return fmt.Errorf("put consumer %q: %w", c.ID, err)
	}
	log.Info("invoice payment failed; consumer will be suspended", zap.Time("suspend_at", deadline))
	return nil
}

// applyPaid clears a scheduled suspension. Suspended, the operator's
// switch, is left as it is.
func (h *Webhook) applyPaid(ctx context.Context, log *zap.Logger, customer string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, err := h.consumer(ctx, log, customer)
	if c == nil {
		return err
	}
	log = log.With(zap.String("consumer", c.ID))
	if c.SuspendAt.IsZero() {
		log.Debug("invoice paid; no suspension scheduled")
		return nil
	}
	next := *c
	next.SuspendAt = time.Time{}
	if err := h.cfg.Consumers.PutConsumer(ctx, &next); err != nil {
		return fmt.Errorf("put consumer %q: %w", c.ID, err)
	}
	log.Info("invoice paid; scheduled suspension cleared", zap.Time("was", c.SuspendAt))
	return nil
}
