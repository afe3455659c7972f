// Package portal is levy's developer portal: server-rendered pages under
// /portal/ on the public listener where the people who buy the API sign
// in with a short-lived, single-use link the operator mints (or, when
// allowed, with one of their API keys), see their usage against their
// plan, create, revoke and roll their keys, and change plans.
//
// Links and sessions live in a Store every replica shares; a link's token
// and a session's id are stored only as hashes. Every state change needs
// the session's CSRF token; pages carry a strict Content-Security-Policy,
// so the portal's CSS and JavaScript are files embedded in the binary.
package portal

import (
	"context"
	"embed"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/plan"
)

// Scopes a link or session may carry.
const (
	ScopeUsage = "usage" // the overview's usage figures and the usage page
	ScopeKeys  = "keys"  // list, create, revoke and roll keys
	ScopePlan  = "plan"  // see plans and switch
)

// AllScopes are every scope, the default of a link.
var AllScopes = []string{ScopeUsage, ScopeKeys, ScopePlan}

// Errors of Mint.
var (
	// ErrInvalid: a bad ttl or scope; the text says which.
	ErrInvalid = errors.New("invalid")
	// ErrDisabled: the portal is off.
	ErrDisabled = errors.New("the developer portal is off: set portal.public_url (or portal.enabled) in the config")
)

// Settings are the portal's live settings (config.Portal, as the server
// builds them).
type Settings struct {
	Enabled bool
	// PublicURL is the base URL customers reach the portal at.
	PublicURL  string
	LinkTTL    time.Duration
	SessionTTL time.Duration
	// KeySignIn lets a customer sign in with one of its API keys.
	KeySignIn bool
	// Plans are the plans shown, in order.
	Plans []PlanOffer
	// Contact is whom customers turn to about their account: an email
	// address or an http(s) URL ("" : their provider, unnamed).
	Contact string
}

// PlanOffer is a plan as the portal shows it.
type PlanOffer struct {
	Plan, Description, Price string
	// SelfServe: a customer may switch to it directly (without Stripe).
	SelfServe bool
}

// Usage reports a consumer's current billing period: the same figures
// `levy usage` prints.
type Usage interface {
	Period(ctx context.Context, c *apikey.Consumer) (PeriodUsage, error)
}

// PeriodUsage is a consumer's current billing period.
type PeriodUsage struct {
	Start, End time.Time
	// Used is the period's units; Included what the plan includes (soft)
	// or allows (hard); Overage the units beyond; Billable what is
	// invoiced.
	Used, Included, Overage, Billable int64
	// Settled is the period's units after access-log settlement: what the
	// usage history's billed units add up to.
	Settled int64
}

// Billing starts Stripe-hosted flows for a consumer. Without it, plans
// switch directly among the self-serve ones.
type Billing interface {
	// Checkout returns the URL of a Stripe Checkout session that moves c
	// to plan; back is where Stripe sends the customer afterwards.
	Checkout(ctx context.Context, c *apikey.Consumer, plan, back string) (string, error)
	// CustomerPortal returns the URL of a Stripe customer portal session
	// for c.
	CustomerPortal(ctx context.Context, c *apikey.Consumer, back string) (string, error)
}

// Config configures a Handler.
type Config struct {
	// Store keeps links and sessions.
	Store Store
	// Keys keeps consumers and keys (the admin API's store): key
	// operations and plan switches write there.
	Keys apikey.Store
	// Directory returns the consumers in force (the config file's and the
	// store's), to look up keys and consumers as Check does.
	Directory func() apikey.Directory
	Catalog   func() *plan.Catalog
	Hasher    func() apikey.Hasher
	// Prefix returns the prefix of new keys.
	Prefix   func() string
	Settings func() Settings
	// Usage, when set, gives the overview its figures.
	Usage Usage
	// History, when set, gives the usage page its chart and the keys
	// page its counts (read for the session's consumer only).
	History *history.Reader
	// Billing, when set, sends plan changes through Stripe.
	Billing Billing
	Log     *zap.Logger
	// Clock nil means time.Now.
	Clock func() time.Time
}

// Handler serves the portal under /portal/.
type Handler struct {
	cfg      Config
	log      *zap.Logger
	clock    func() time.Time
	mux      *http.ServeMux
	failures *failures
}

var _ http.Handler = (*Handler)(nil)

//go:embed templates/*.html assets/*
var files embed.FS

// New returns a portal handler.
func New(cfg Config) *Handler {
	h := &Handler{cfg: cfg, log: cfg.Log, clock: cfg.Clock, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.clock == nil {
		h.clock = time.Now
	}
	h.failures = newFailures(h.clock)
	for _, r := range h.routes() {
		h.mux.HandleFunc(r.pattern, r.handler)
	}
	h.mux.HandleFunc("/portal/", h.notFound)
	return h
}

type route struct {
	pattern string
	handler http.HandlerFunc
}

func (h *Handler) routes() []route {
	return []route{
		{"GET /portal/{$}", h.session("", h.overview)},
		{"GET /portal/sign-in", h.signInPage},
		{"POST /portal/sign-in", h.keySignIn},
		{"GET /portal/link/{token}", h.linkPage},
		{"POST /portal/link/{token}", h.followLink},
		{"POST /portal/sign-out", h.change("", h.signOut)},
		{"GET /portal/keys", h.session(ScopeKeys, h.keysPage)},
		{"POST /portal/keys", h.change(ScopeKeys, h.createKey)},
		{"POST /portal/keys/{id}/revoke", h.change(ScopeKeys, h.revokeKey)},
		{"POST /portal/keys/{id}/roll", h.change(ScopeKeys, h.rollKey)},
		{"GET /portal/usage", h.session(ScopeUsage, h.usagePage)},
		{"GET /portal/usage/series", h.session(ScopeUsage, h.seriesRoute)},
		{"GET /portal/plan", h.session(ScopePlan, h.planPage)},
		{"POST /portal/plan", h.change(ScopePlan, h.changePlan)},
		{"POST /portal/billing", h.change(ScopePlan, h.manageBilling)},
		{"GET /portal/assets/{name}", h.asset},
	}
}

// Routes lists the routes the portal serves, as api/openapi.yaml names
// them ("GET /portal/").
func Routes() []string {
	var out []string
	for _, r := range (&Handler{}).routes() {
		out = append(out, strings.TrimSuffix(r.pattern, "{$}"))
	}
	return out
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", CSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	if !h.settings().Enabled {
		hd.Set("Cache-Control", "no-store")
		h.message(w, r, http.StatusNotFound, "Portal not available", "This service has no developer portal.")
		return
	}
	h.mux.ServeHTTP(w, r)
}

// CSP is the portal's Content-Security-Policy: its own scripts and styles
// only, forms to itself and Stripe's hosted pages, never framed.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"form-action 'self' https://checkout.stripe.com https://billing.stripe.com; frame-ancestors 'none'; base-uri 'none'"

func (h *Handler) settings() Settings {
	if h.cfg.Settings == nil {
		return Settings{}
	}
	s := h.cfg.Settings()
	if s.LinkTTL <= 0 {
		s.LinkTTL = 15 * time.Minute
	}
	if s.SessionTTL <= 0 {
		s.SessionTTL = 12 * time.Hour
	}
	return s
}

// secure reports whether the portal is reached over https (cookies are
// then Secure and __Host- prefixed).
func (s Settings) secure() bool { return strings.HasPrefix(s.PublicURL, "https://") }

// origin is PublicURL's scheme://host.
func (s Settings) origin() string {
	u, err := url.Parse(s.PublicURL)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// consumer returns the consumer in force with id.
func (h *Handler) consumer(id string) (*apikey.Consumer, bool) {
	if h.cfg.Directory == nil {
		return nil, false
	}
	d := h.cfg.Directory()
	if d == nil {
		return nil, false
	}
	return d.Consumer(id)
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	h.message(w, r, http.StatusNotFound, "Page not found", "There is no such page in the portal.")
}

func (h *Handler) asset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	types := map[string]string{".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
	i := strings.LastIndexByte(name, '.')
	if i < 0 || types[name[i:]] == "" || strings.ContainsAny(name, "/\\") {
		h.notFound(w, r)
		return
	}
	data, err := files.ReadFile("assets/" + name)
	if err != nil {
		h.notFound(w, r)
		return
	}
	w.Header().Set("Content-Type", types[name[i:]])
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(data)
}
