package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/portal"
)

// newPortal builds the developer portal on the store and the config in
// force (portal settings apply on reload).
func (s *Server) newPortal() *portal.Handler {
	// With a Stripe key, plan changes go through Stripe Checkout and the
	// customer portal, and the webhook applies them.
	var stripe portal.Billing
	if key := s.cfg.Billing.Stripe.APIKey.Value(); key != "" {
		stripe = billing.NewPlanChanges(billing.PlanChangesConfig{
			Stripe:    billing.NewStripeClient(key, s.cfg.Billing.Stripe.APIBase),
			Catalog:   func() *plan.Catalog { return s.authz.Snapshot().Catalog },
			URLs:      func() (string, string, string) { return s.live.Load().Portal.StripeURLs() },
			Consumers: s.backend.store,
			Log:       s.log.Named("portal"),
		})
	}
	return portal.New(portal.Config{
		Billing:   stripe,
		Store:     s.backend.portal,
		Keys:      s.backend.store,
		Directory: func() apikey.Directory { return s.authz.Snapshot().Directory },
		Catalog:   func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Hasher:    func() apikey.Hasher { return s.authz.Snapshot().Hasher },
		Prefix:    func() string { return s.live.Load().Keys.Prefix },
		Settings:  s.portalSettings,
		Usage:     portalUsage{s},
		History:   s.historyReader(),
		Log:       s.log.Named("portal"),
		Clock:     s.opts.Clock,
	})
}

// portalSettings are the live config's portal settings.
func (s *Server) portalSettings() portal.Settings {
	p := s.live.Load().Portal
	out := portal.Settings{Enabled: p.PortalEnabled() && s.backend.portal != nil, PublicURL: p.PublicURL,
		LinkTTL: time.Duration(p.LinkTTL), SessionTTL: time.Duration(p.SessionTTL), KeySignIn: p.KeySignIn, Contact: p.Contact}
	for _, pp := range p.Plans {
		out.Plans = append(out.Plans, portal.PlanOffer{Plan: pp.Plan, Description: pp.Description, Price: pp.Price, SelfServe: pp.SelfServe})
	}
	return out
}

// portalLink mints a portal sign-in link for the admin API.
func (s *Server) portalLink(ctx context.Context, id string, ttl time.Duration, scopes []string) (admin.PortalLink, error) {
	l, err := s.portal.Mint(ctx, id, ttl, scopes)
	switch {
	case errors.Is(err, portal.ErrInvalid):
		return admin.PortalLink{}, fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	case errors.Is(err, portal.ErrDisabled):
		return admin.PortalLink{}, fmt.Errorf("%w: %v", admin.ErrUnavailable, err)
	}
	return admin.PortalLink{URL: l.URL, ExpiresAt: l.ExpiresAt}, err
}

// portalUsage gives the portal the figures `levy usage` prints.
type portalUsage struct{ s *Server }

func (u portalUsage) Period(ctx context.Context, c *apikey.Consumer) (portal.PeriodUsage, error) {
	snap := u.s.authz.Snapshot()
	p, ok := snap.Catalog.Get(c.Plan)
	if !ok {
		return portal.PeriodUsage{}, fmt.Errorf("consumer %s has unknown plan %s", c.ID, c.Plan)
	}
	r, err := billing.Report(ctx, u.s.backend.limiter, u.s.backend.ledger, c, p, snap.Catalog)
	if err != nil {
		return portal.PeriodUsage{}, err
	}
	return portal.PeriodUsage{Start: r.PeriodStart, End: r.PeriodEnd, Used: r.Used, Included: r.Included, Overage: r.Overage, Billable: r.Billable, Settled: r.Settled}, nil
}

// historyReader reads the usage history for the portal (nil when
// usage.history is off): the portal asks only for its session's consumer.
func (s *Server) historyReader() *history.Reader {
	if s.backend.history == nil {
		return nil
	}
	return &history.Reader{Store: s.backend.history, Retention: retention(s.cfg), Clock: s.opts.Clock}
}
