package config

import (
	"fmt"
	"net/mail"
	"net/url"
	"strings"
	"time"
)

// Portal configures the developer portal: the pages under /portal/ on the
// public listener where the people who buy the API see their usage,
// manage their keys and change plans. It applies on reload.
type Portal struct {
	// Enabled turns the portal on; unset, it is on when PublicURL is set
	// (its sign-in links need the address customers reach it at).
	Enabled *bool `yaml:"enabled"`
	// PublicURL is the base URL the portal is reached at from outside
	// (https://api.example.com: the portal usually sits behind an
	// ingress); sign-in links are PublicURL + /portal/link/<token>. With
	// https, the session cookie is Secure and __Host- prefixed.
	PublicURL string `yaml:"public_url"`
	// LinkTTL is how long a sign-in link works unless its minting says
	// otherwise (default 15m, at most 24h).
	LinkTTL Duration `yaml:"link_ttl"`
	// SessionTTL is how long a portal session lasts (default 12h, at most
	// 30 days).
	SessionTTL Duration `yaml:"session_ttl"`
	// KeySignIn lets a customer sign in by pasting one of its API keys
	// (scopes usage and keys); off by default.
	KeySignIn bool `yaml:"key_sign_in"`
	// Plans are the plans the portal shows, in this order, with their
	// display text; SelfServe ones a customer may switch to directly when
	// Stripe is not configured.
	Plans []PortalPlan `yaml:"plans"`
	// Contact is whom customers turn to about their account: an email
	// address (billing@example.com) or an http(s) URL of a support page.
	// The overview names it when a payment failed or the account is
	// suspended; unset, it says "your provider".
	Contact string `yaml:"contact"`
	// Stripe says where Stripe's hosted pages send the customer back to
	// when "change plan" opens them (STRIPE_API_KEY set); unset, pages of
	// the portal under PublicURL.
	Stripe PortalStripe `yaml:"stripe"`
}

// PortalStripe are the addresses Stripe Checkout and the Stripe customer
// portal return to.
type PortalStripe struct {
	// SuccessURL: after a paid Checkout (default PublicURL +
	// /portal/?done=checkout). CancelURL: after a cancelled one (default
	// PublicURL + /portal/plan). ReturnURL: the customer portal's way back
	// (default PublicURL + /portal/plan).
	SuccessURL string `yaml:"success_url"`
	CancelURL  string `yaml:"cancel_url"`
	ReturnURL  string `yaml:"return_url"`
}

// StripeURLs are the success, cancel and return addresses in force: the
// file's, or the portal's pages under PublicURL.
func (p Portal) StripeURLs() (success, cancel, back string) {
	base := strings.TrimSuffix(p.PublicURL, "/")
	or := func(v, d string) string {
		if v != "" {
			return v
		}
		return base + d
	}
	return or(p.Stripe.SuccessURL, "/portal/?done=checkout"), or(p.Stripe.CancelURL, "/portal/plan"), or(p.Stripe.ReturnURL, "/portal/plan")
}

// PortalPlan is a plan as the portal shows it.
type PortalPlan struct {
	// Plan names a plan of plans.
	Plan string `yaml:"plan"`
	// Description and Price are display text ("For production traffic",
	// "$49 / month"); levy bills nothing from them.
	Description string `yaml:"description"`
	Price       string `yaml:"price"`
	// SelfServe lets a customer switch to this plan in the portal without
	// Stripe (default false: the operator changes it).
	SelfServe bool `yaml:"self_serve"`
}

// Portal limits.
const (
	DefaultLinkTTL    = 15 * time.Minute
	MaxLinkTTL        = 24 * time.Hour
	DefaultSessionTTL = 12 * time.Hour
	MaxSessionTTL     = 30 * 24 * time.Hour
	maxPlanText       = 500
	maxPriceText      = 64
)

// PortalEnabled reports whether the portal is on.
func (p Portal) PortalEnabled() bool {
	if p.Enabled != nil {
		return *p.Enabled
	}
	return p.PublicURL != ""
}

// defaultPortal is the portal's built-in settings.
func defaultPortal() Portal {
	return Portal{LinkTTL: Duration(DefaultLinkTTL), SessionTTL: Duration(DefaultSessionTTL)}
}

func (c *Config) validatePortal(errs *Errors) {
	p := c.Portal
	if p.PublicURL != "" {
		if err := checkPublicURL(p.PublicURL); err != nil {
			c.problem(errs, "portal.public_url", "%q: %v", p.PublicURL, err)
		}
	} else if p.Enabled != nil && *p.Enabled {
		c.problem(errs, "portal.public_url", "the portal is enabled but has no public_url: its sign-in links need the URL customers reach it at, e.g. https://api.example.com")
	}
	if d := time.Duration(p.LinkTTL); d <= 0 || d > MaxLinkTTL {
		c.problem(errs, "portal.link_ttl", "%v: want a duration from 1s to %v (default %v)", d, MaxLinkTTL, DefaultLinkTTL)
	}
	if d := time.Duration(p.SessionTTL); d < time.Minute || d > MaxSessionTTL {
		c.problem(errs, "portal.session_ttl", "%v: want a duration from 1m to %v (default %v)", d, MaxSessionTTL, DefaultSessionTTL)
	}
	for path, v := range map[string]string{"portal.stripe.success_url": p.Stripe.SuccessURL, "portal.stripe.cancel_url": p.Stripe.CancelURL,
		"portal.stripe.return_url": p.Stripe.ReturnURL} {
		if u, err := url.Parse(v); v != "" && (err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "") {
			c.problem(errs, path, "%q: want an absolute http or https URL", v)
		}
	}
	if err := checkContact(p.Contact); p.Contact != "" && err != nil {
		c.problem(errs, "portal.contact", "%q: %v", p.Contact, err)
	}
	seen := map[string]bool{}
	for i, pp := range p.Plans {
		at := fmt.Sprintf("portal.plans[%d]", i)
		if _, ok := c.Plans[pp.Plan]; !ok {
			c.problem(errs, at+".plan", "%q is not a plan of plans (known: %s)", pp.Plan, strings.Join(sortedKeys(c.Plans), ", "))
		}
		if seen[pp.Plan] {
			c.problem(errs, at+".plan", "%q is listed twice", pp.Plan)
		}
		seen[pp.Plan] = true
		if len(pp.Description) > maxPlanText {
			c.problem(errs, at+".description", "%d bytes long: at most %d", len(pp.Description), maxPlanText)
		}
		if len(pp.Price) > maxPriceText {
			c.problem(errs, at+".price", "%d bytes long: at most %d", len(pp.Price), maxPriceText)
		}
	}
}

// checkPublicURL accepts an absolute http or https URL without user
// info, query or fragment.
func checkPublicURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %v", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("want an http or https URL such as https://api.example.com")
	case u.Host == "":
		return fmt.Errorf("no host: want e.g. https://api.example.com")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return fmt.Errorf("want a base URL without user, query or fragment")
	}
	return nil
}

// maxContact bounds portal.contact (an email address is at most 254).
const maxContact = 254

// checkContact accepts an email address alone (no name, no angle
// brackets) or an absolute http or https URL.
func checkContact(s string) error {
	if len(s) > maxContact {
		return fmt.Errorf("%d bytes long: at most %d", len(s), maxContact)
	}
	if strings.Contains(s, "://") {
		if u, err := url.Parse(s); err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("want an email address (billing@example.com) or an http or https URL")
		}
		return nil
	}
	if a, err := mail.ParseAddress(s); err != nil || a.Address != s || a.Name != "" {
		return fmt.Errorf("want an email address (billing@example.com) or an http or https URL")
	}
	return nil
}
