// Package admin is levy's HTTP admin API: it creates, reads and changes
// consumers (plan, suspension, Stripe customer) and issues and revokes their
// API keys in the run-time store, and reports usage and its reconciliation
// with Stripe. It answers JSON, and RFC 9457 problem
// documents for errors. Every call needs the admin bearer token; without a
// configured token the API is off.
//
// A new key is shown once, in the response that creates it; the store gets
// only its hash, and logs name keys by id only.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/problem"
)

// MaxBody is the largest request body the API reads.
const MaxBody = 64 << 10

// MaxIDLen is the longest consumer or key id.
const MaxIDLen = 128

// Consumer statuses on the wire.
const (
	StatusActive    = "active"
	StatusSuspended = "suspended"
)

// Config configures a Handler.
type Config struct {
	// Store keeps the consumers and keys; nil answers 503 on every route.
	Store apikey.Store
	// Catalog returns the current plans (they reload).
	Catalog func() *plan.Catalog
	// Hasher returns the current key hasher.
	Hasher func() apikey.Hasher
	// Prefix returns the prefix for new keys; nil means apikey.DefaultPrefix.
	Prefix func() string
	// Token is the bearer token every call must carry; empty turns the API
	// off (every route answers 404).
	Token string
	Log   *zap.Logger
	// Clock decides whether an expiry lies in the past; nil means time.Now.
	Clock func() time.Time
	// Usage reports a consumer's current billing period (GET
	// /v1/consumers/{id}/usage), with its ledger windows when asked
	// (?windows=true); apikey.ErrNotFound gives 404.
	Usage func(ctx context.Context, consumerID string, windows bool) (any, error)
	// RateLimit decides a RateLimitService request (POST /json, as
	// envoyproxy/ratelimit's endpoint of that name, for scripts and
	// migration checks).
	RateLimit func(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error)
	// Reconcile compares the usage ledger with what Stripe holds (GET
	// /v1/billing/reconcile; POST with fix=true sends what Stripe is
	// missing); apikey.ErrNotFound gives 404, ErrUnavailable 503.
	Reconcile func(ctx context.Context, q ReconcileQuery) (any, error)
	// PortalLink mints developer-portal sign-in links (POST
	// /v1/consumers/{id}/portal-links).
	PortalLink PortalLinker
	// Export reports usage grouped by a consumer label (GET
	// /v1/usage/export); ErrUnavailable gives 503.
	Export Exporter
	// Series answers a consumer's usage history (GET
	// /v1/consumers/{id}/usage/series); nil answers 503.
	Series SeriesSource
}

// SeriesSource reads usage history (history.Reader, behind a check that
// the consumer exists).
type SeriesSource interface {
	// ParseQuery reads the query's parameters: a *history.QueryError
	// for bad ones.
	ParseQuery(v url.Values) (history.Query, error)
	// Series reads consumer's series; apikey.ErrNotFound gives 404.
	Series(ctx context.Context, consumer string, q history.Query) (*history.Series, error)
}

// ReconcileQuery is what a reconcile call asks for.
type ReconcileQuery struct {
	// Month selects the billing periods that start in it (period=2026-11);
	// zero: the periods in progress.
	Month time.Time
	// Consumer, when set, is the only consumer reconciled.
	Consumer string
	// Fix sends Stripe what it is missing (POST only).
	Fix bool
}

// ErrUnavailable is for a call that cannot be served as levy is set up
// (Reconcile without a Stripe key): the error's text says why.
var ErrUnavailable = errors.New("unavailable")

// Handler serves the admin API under /v1/.
type Handler struct {
	cfg   Config
	log   *zap.Logger
	clock func() time.Time
	token [sha256.Size]byte
	mux   *http.ServeMux
	// unready says why the API cannot work ("" when it can).
	unready string
	// mu serialises read-modify-write of consumers (PATCH) within this
	// process; the store has no compare-and-swap.
	mu sync.Mutex
}

var _ http.Handler = (*Handler)(nil)

// New returns a handler. It never fails: a missing dependency shows as a
// 503 problem on every call, a missing token as the API being off.
func New(cfg Config) *Handler {
	// As the presented token is: a Secret made from a file ends in a newline.
	cfg.Token = strings.TrimSpace(cfg.Token)
	h := &Handler{cfg: cfg, log: cfg.Log, clock: cfg.Clock, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.clock == nil {
		h.clock = time.Now
	}
	if h.cfg.Prefix == nil {
		h.cfg.Prefix = func() string { return apikey.DefaultPrefix }
	}
	switch {
	case cfg.Store == nil:
		h.unready = "the admin API has no store to keep consumers and keys in"
	case cfg.Catalog == nil:
		h.unready = "the admin API has no plan catalog"
	case cfg.Hasher == nil:
		h.unready = "the admin API has no key hasher"
	}
	// Hashing first makes the comparison's time independent of the
	// token's length as well as its content.
	h.token = sha256.Sum256([]byte(cfg.Token))
	for _, r := range h.routes() {
		h.mux.HandleFunc(r.Pattern, r.handler)
	}
	return h
}

// Route is one route the admin API serves.
type Route struct {
	// Pattern is the ServeMux pattern ("GET /v1/consumers/{id}").
	Pattern string
	handler http.HandlerFunc
}

// routes is the route table the mux is built from (and that api/'s
// OpenAPI test compares with the description).
func (h *Handler) routes() []Route {
	return []Route{
		{"GET /v1/consumers", h.listConsumers},
		{"PUT /v1/consumers/{id}", h.putConsumer},
		{"GET /v1/consumers/{id}", h.getConsumer},
		{"PATCH /v1/consumers/{id}", h.patchConsumer},
		{"DELETE /v1/consumers/{id}", h.deleteConsumer},
		{"GET /v1/consumers/{id}/keys", h.listKeys},
		{"POST /v1/consumers/{id}/keys", h.createKey},
		{"POST /v1/keys/{id}/rotate", h.rotateKey},
		{"POST /v1/keys/{id}/revoke", h.revokeKey},
		{"GET /v1/consumers/{id}/usage", h.usage},
		{"POST /v1/consumers/{id}/portal-links", h.portalLink},
		{"GET /v1/consumers/{id}/usage/series", h.series},
		{"GET /v1/usage/export", h.usageExport},
		{"GET /v1/billing/reconcile", h.reconcile},
		{"POST /v1/billing/reconcile", h.reconcile},
		{"POST /json", h.rateLimitJSON},
	}
}

// Routes lists the patterns the admin API serves.
func Routes() []string {
	var out []string
	for _, r := range (&Handler{}).routes() {
		out = append(out, r.Pattern)
	}
	return out
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Token == "" {
		writeProblem(w, http.StatusNotFound, "admin_disabled",
			"the admin API is off: set LEVY_ADMIN_TOKEN to turn it on")
		return
	}
	if !h.authorized(r) {
		h.log.Warn("admin call refused: missing or wrong bearer token",
			zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr))
		w.Header().Set("WWW-Authenticate", `Bearer realm="levy-admin"`)
		writeProblem(w, http.StatusUnauthorized, "unauthorized",
			"missing or wrong admin token: send it as 'Authorization: Bearer <token>'")
		return
	}
	if h.unready != "" {
		writeProblem(w, http.StatusServiceUnavailable, "admin_unavailable", h.unready)
		return
	}
	if _, pattern := h.mux.Handler(r); pattern == "" {
		h.noRoute(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) authorized(r *http.Request) bool {
	v := r.Header.Get("Authorization")
	if len(v) < 7 || !strings.EqualFold(v[:7], "bearer ") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(v[7:])))
	return subtle.ConstantTimeCompare(got[:], h.token[:]) == 1
}

// noRoute answers a request no route matches (404) or whose path matches
// with another method (405, with Allow) as a problem document.
func (h *Handler) noRoute(w http.ResponseWriter, r *http.Request) {
	c := &captured{header: http.Header{}}
	h.mux.ServeHTTP(c, r)
	if c.code == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", c.header.Get("Allow"))
		writeProblem(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, c.header.Get("Allow")))
		return
	}
	writeProblem(w, http.StatusNotFound, "not_found", "no admin route "+r.Method+" "+r.URL.Path)
}

// captured records the status the mux would send.
type captured struct {
	header http.Header
	code   int
}

func (c *captured) Header() http.Header         { return c.header }
func (c *captured) Write(b []byte) (int, error) { return len(b), nil }
func (c *captured) WriteHeader(code int)        { c.code = code }

// consumerJSON is a consumer on the wire.
type consumerJSON struct {
	ID               string            `json:"id"`
	Plan             string            `json:"plan"`
	Status           string            `json:"status"`
	StripeCustomerID string            `json:"stripe_customer_id,omitempty"`
	PeriodAnchor     string            `json:"period_anchor,omitempty"`
	Labels           map[string]string `json:"labels,omitempty"`
}

// toJSON shows c as it is at now: suspended too once a failed payment's
// grace has run out, as ext_authz then treats it.
func toJSON(c *apikey.Consumer, now time.Time) consumerJSON {
	out := consumerJSON{ID: c.ID, Plan: c.Plan, Status: StatusActive, StripeCustomerID: c.StripeCustomerID, Labels: c.Labels}
	if c.SuspendedAt(now) {
		out.Status = StatusSuspended
	}
	if !c.PeriodAnchor.IsZero() {
		out.PeriodAnchor = c.PeriodAnchor.UTC().Format(time.RFC3339)
	}
	return out
}

type putConsumerRequest struct {
	Plan             string            `json:"plan"`
	Status           string            `json:"status"`
	StripeCustomerID string            `json:"stripe_customer_id"`
	PeriodAnchor     string            `json:"period_anchor"`
	Labels           map[string]string `json:"labels"`
}

func (h *Handler) putConsumer(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	var req putConsumerRequest
	if !decode(w, r, &req, false) {
		return
	}
	c := &apikey.Consumer{ID: id, StripeCustomerID: req.StripeCustomerID}
	if err := apikey.ValidateLabels(req.Labels); err != nil {
		writeProblem(w, http.StatusBadRequest, "invalid_label", err.Error())
		return
	}
	if len(req.Labels) > 0 {
		c.Labels = req.Labels
	}
	var p apiError
	if c.Plan, p = h.checkPlan(req.Plan); p.status != 0 {
		p.write(w)
		return
	}
	if c.Suspended, p = checkStatus(req.Status); p.status != 0 {
		p.write(w)
		return
	}
	if c.PeriodAnchor, p = checkTime("period_anchor", req.PeriodAnchor); p.status != 0 {
		p.write(w)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.customerFree(w, r, id, c.StripeCustomerID) {
		return
	}
	// Replacing a consumer keeps what billing set on it: the time of the
	// Stripe event behind its plan (so older events stay ignored) and a
	// pending suspension for a failed payment.
	if old, err := h.cfg.Store.GetConsumer(r.Context(), id); err == nil {
		c.PlanSince, c.SuspendAt = old.PlanSince, old.SuspendAt
	}
	if err := h.cfg.Store.PutConsumer(r.Context(), c); err != nil {
		h.storeFailed(w, "put consumer", err, zap.String("consumer", id))
		return
	}
	h.log.Info("consumer put", zap.String("consumer", id), zap.String("plan", c.Plan), zap.Bool("suspended", c.Suspended))
	writeJSON(w, http.StatusOK, toJSON(c, h.clock()))
}

func (h *Handler) getConsumer(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	c, ok := h.consumer(w, r, id)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, toJSON(c, h.clock()))
}

func (h *Handler) usage(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	v := r.URL.Query()
	for name := range v {
		if name != "windows" {
			writeProblem(w, http.StatusBadRequest, "unknown_parameter", "unknown parameter "+strconv.Quote(name)+"; known: windows")
			return
		}
	}
	windows := v.Get("windows")
	if windows != "" && windows != "true" && windows != "false" {
		writeProblem(w, http.StatusBadRequest, "invalid_windows", fmt.Sprintf("windows %q: want true or false", windows))
		return
	}
	if h.cfg.Usage == nil {
		writeProblem(w, http.StatusServiceUnavailable, "usage_unavailable", "usage reports are not available")
		return
	}
	rep, err := h.cfg.Usage(r.Context(), id, windows == "true")
	switch {
	case errors.Is(err, apikey.ErrNotFound):
		writeProblem(w, http.StatusNotFound, "consumer_not_found", "no consumer "+strconv.Quote(id))
	case err != nil:
		h.log.Error("usage report", zap.String("consumer", id), zap.Error(err))
		writeProblem(w, http.StatusServiceUnavailable, "store_unavailable", "the usage report cannot be read right now")
	default:
		writeJSON(w, http.StatusOK, rep)
	}
}

// series answers a consumer's usage history as JSON, or as CSV with
// format=csv or an Accept that asks for text/csv (and not JSON first).
func (h *Handler) series(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	if h.cfg.Series == nil {
		writeProblem(w, http.StatusServiceUnavailable, "history_unavailable", "the usage history is off (usage.history.enabled)")
		return
	}
	q, err := h.cfg.Series.ParseQuery(r.URL.Query())
	var qe *history.QueryError
	if errors.As(err, &qe) {
		writeProblem(w, http.StatusBadRequest, qe.Reason, qe.Detail)
		return
	}
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "invalid_query", err.Error())
		return
	}
	s, err := h.cfg.Series.Series(r.Context(), id, q)
	switch {
	case errors.As(err, &qe):
		writeProblem(w, http.StatusBadRequest, qe.Reason, qe.Detail)
	case errors.Is(err, apikey.ErrNotFound):
		writeProblem(w, http.StatusNotFound, "consumer_not_found", "no consumer "+strconv.Quote(id))
	case err != nil:
		h.log.Error("usage series", zap.String("consumer", id), zap.Error(err))
		writeProblem(w, http.StatusServiceUnavailable, "store_unavailable", "the usage history cannot be read right now")
	case q.CSV || r.URL.Query().Get("format") == "" && wantsCSV(r.Header.Get("Accept")):
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		if err := history.WriteCSV(w, s); err != nil {
			h.log.Warn("write usage series CSV", zap.String("consumer", id), zap.Error(err))
		}
	default:
		writeJSON(w, http.StatusOK, s)
	}
}

// wantsCSV reports whether an Accept header lists text/csv before any
// JSON type.
func wantsCSV(accept string) bool {
	for _, part := range strings.Split(accept, ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		switch strings.ToLower(strings.TrimSpace(mt)) {
		case "text/csv":
			return true
		case "application/json", "application/*", "*/*":
			return false
		}
	}
	return false
}

// reconcile answers the comparison of the ledger with Stripe; the report
// says whether they differ (the call succeeds either way).
// reconcileTime is how long a reconcile may take to answer: it asks
// Stripe about every account, past the listener's usual write timeout.
const reconcileTime = 5 * time.Minute

func (h *Handler) reconcile(w http.ResponseWriter, r *http.Request) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(reconcileTime))
	q, p := reconcileQuery(r)
	if p.status != 0 {
		p.write(w)
		return
	}
	if h.cfg.Reconcile == nil {
		writeProblem(w, http.StatusServiceUnavailable, "reconcile_unavailable", "reconcile is not available")
		return
	}
	rep, err := h.cfg.Reconcile(r.Context(), q)
	switch {
	case errors.Is(err, apikey.ErrNotFound):
		writeProblem(w, http.StatusNotFound, "consumer_not_found", "no consumer "+strconv.Quote(q.Consumer))
	case errors.Is(err, ErrUnavailable):
		writeProblem(w, http.StatusServiceUnavailable, "reconcile_unavailable", err.Error())
	case err != nil:
		h.log.Error("reconcile", zap.String("consumer", q.Consumer), zap.Error(err))
		writeProblem(w, http.StatusServiceUnavailable, "store_unavailable", "the ledger cannot be read right now")
	default:
		if q.Fix {
			h.log.Info("reconcile with fix", zap.String("consumer", q.Consumer), zap.Time("month", q.Month))
		}
		writeJSON(w, http.StatusOK, rep)
	}
}

// reconcileQuery reads ?period=2026-11&consumer=ID&fix=true; fix only on
// POST, since it sends Stripe usage.
func reconcileQuery(r *http.Request) (ReconcileQuery, apiError) {
	var q ReconcileQuery
	v := r.URL.Query()
	for name := range v {
		if name != "period" && name != "consumer" && name != "fix" {
			return q, apiError{http.StatusBadRequest, "unknown_parameter", "unknown parameter " + strconv.Quote(name) + "; known: period, consumer, fix"}
		}
	}
	if s := v.Get("period"); s != "" {
		m, err := time.Parse("2006-01", s)
		if err != nil {
			return q, apiError{http.StatusBadRequest, "invalid_period", fmt.Sprintf("period %q: want a month such as 2026-11", s)}
		}
		q.Month = m
	}
	if q.Consumer = v.Get("consumer"); v.Has("consumer") {
		if p := checkID("consumer", q.Consumer); p.status != 0 {
			return q, p
		}
	}
	if s := v.Get("fix"); s != "" {
		fix, err := strconv.ParseBool(s)
		if err != nil {
			return q, apiError{http.StatusBadRequest, "invalid_fix", fmt.Sprintf("fix %q: want true or false", s)}
		}
		if fix && r.Method != http.MethodPost {
			return q, apiError{http.StatusBadRequest, "fix_needs_post", "fix=true sends Stripe usage: use POST"}
		}
		q.Fix = fix
	}
	return q, apiError{}
}

type patchConsumerRequest struct {
	Plan             *string `json:"plan"`
	Status           *string `json:"status"`
	StripeCustomerID *string `json:"stripe_customer_id"`
	PeriodAnchor     *string `json:"period_anchor"`
	// Labels merge into the consumer's (RFC 7396): a null value removes
	// the label.
	Labels map[string]*string `json:"labels"`
}

func (h *Handler) patchConsumer(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	var req patchConsumerRequest
	if !decode(w, r, &req, false) {
		return
	}
	// Check the whole request before touching the store.
	var (
		planName  string
		suspended bool
		at        time.Time
		p         apiError
	)
	if req.Plan != nil {
		if planName, p = h.checkPlan(*req.Plan); p.status != 0 {
			p.write(w)
			return
		}
	}
	if req.Status != nil {
		if suspended, p = checkStatus(*req.Status); p.status != 0 {
			p.write(w)
			return
		}
	}
	if req.PeriodAnchor != nil {
		if at, p = checkTime("period_anchor", *req.PeriodAnchor); p.status != 0 {
			p.write(w)
			return
		}
	}
	for k, v := range req.Labels {
		err := apikey.ValidateLabelKey(k)
		if err == nil && v != nil {
			err = apikey.ValidateLabelValue(k, *v)
		}
		if err != nil {
			writeProblem(w, http.StatusBadRequest, "invalid_label", err.Error())
			return
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.consumer(w, r, id)
	if !ok {
		return
	}
	c := *old
	if req.Plan != nil {
		c.Plan = planName
	}
	if req.Status != nil {
		c.Suspended = suspended
		if !suspended {
			c.SuspendAt = time.Time{} // "active" lifts a pending payment suspension too
		}
	}
	if req.StripeCustomerID != nil {
		if !h.customerFree(w, r, id, *req.StripeCustomerID) {
			return
		}
		c.StripeCustomerID = *req.StripeCustomerID
	}
	if req.PeriodAnchor != nil {
		c.PeriodAnchor = at
	}
	if len(req.Labels) > 0 {
		labels := maps.Clone(c.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		for k, v := range req.Labels {
			if v == nil {
				delete(labels, k)
			} else {
				labels[k] = *v
			}
		}
		if err := apikey.ValidateLabels(labels); err != nil {
			writeProblem(w, http.StatusBadRequest, "invalid_label", err.Error())
			return
		}
		c.Labels = labels
		if len(labels) == 0 {
			c.Labels = nil
		}
	}
	if err := h.cfg.Store.PutConsumer(r.Context(), &c); err != nil {
		h.storeFailed(w, "patch consumer", err, zap.String("consumer", id))
		return
	}
	h.log.Info("consumer updated", zap.String("consumer", id), zap.String("plan", c.Plan), zap.Bool("suspended", c.Suspended))
	writeJSON(w, http.StatusOK, toJSON(&c, h.clock()))
}

type createKeyRequest struct {
	ID        string `json:"id"`
	ExpiresAt string `json:"expires_at"`
}

type createKeyResponse struct {
	ID        string `json:"id"`
	Key       string `json:"key"`
	Consumer  string `json:"consumer"`
	ExpiresAt string `json:"expires_at,omitempty"`
}

func (h *Handler) createKey(w http.ResponseWriter, r *http.Request) {
	consumerID, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	var req createKeyRequest
	if !decode(w, r, &req, true) {
		return
	}
	expires, ok := checkNewKey(w, req.ID, req.ExpiresAt, h.clock())
	if !ok {
		return
	}
	// Held from the consumer's check to the key's write: a deletion of
	// the consumer, or another key taking the same id, cannot fall between.
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.consumer(w, r, consumerID); !ok {
		return
	}
	k, key, ok := h.issueKey(w, r, consumerID, req.ID, expires)
	if !ok {
		return
	}
	resp := createKeyResponse{ID: k.ID, Key: key, Consumer: consumerID, ExpiresAt: rfc3339(expires)}
	// The body holds a secret: keep it out of every cache.
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, resp)
}

// checkNewKey checks a new key's chosen id (none: derived from the key)
// and expiry (none, or after now), answering the problem itself; it
// returns the expiry.
func checkNewKey(w http.ResponseWriter, id, expiresAt string, now time.Time) (time.Time, bool) {
	if id != "" {
		if p := checkID("key", id); p.status != 0 {
			p.write(w)
			return time.Time{}, false
		}
	}
	expires, p := checkTime("expires_at", expiresAt)
	if p.status != 0 {
		p.write(w)
		return time.Time{}, false
	}
	if !expires.IsZero() && !expires.After(now) {
		writeProblem(w, http.StatusBadRequest, "invalid_expiry", "expires_at "+expiresAt+" is not in the future")
		return time.Time{}, false
	}
	return expires, true
}

// issueKey generates a key for a consumer and stores its hash, answering
// the failure itself; it returns the stored key and the secret. Call with
// mu held. An id another key has is a conflict: the id would then name
// the new key, and the other one, still working, could no longer be
// revoked, rotated or deleted with its consumer by its id.
func (h *Handler) issueKey(w http.ResponseWriter, r *http.Request, consumerID, id string, expires time.Time) (*apikey.Key, string, bool) {
	k, key, err := h.keyOps().Issue(r.Context(), consumerID, id, expires)
	if errors.Is(err, apikey.ErrKeyIDTaken) {
		writeProblem(w, http.StatusConflict, "key_id_taken", "key id "+k.ID+" is taken: choose another, or omit id to have one derived from the key")
		return nil, "", false
	}
	if !h.keyOpFailed(w, err, zap.String("consumer", consumerID), zap.String("key_id", id)) {
		return nil, "", false
	}
	h.log.Info("key created", zap.String("consumer", consumerID), zap.String("key_id", k.ID))
	return k, key, true
}

// keyOps are the key operations the admin API shares with the portal.
func (h *Handler) keyOps() apikey.Ops {
	return apikey.Ops{Store: h.cfg.Store, Hasher: h.cfg.Hasher, Prefix: h.cfg.Prefix, Clock: h.clock}
}

// keyOpFailed answers a failed key operation's error (none: true).
func (h *Handler) keyOpFailed(w http.ResponseWriter, err error, fields ...zap.Field) bool {
	var se *apikey.StoreError
	switch {
	case err == nil:
		return true
	case errors.As(err, &se):
		h.storeFailed(w, se.Op, se.Err, fields...)
	default:
		h.log.Error("generate key", append(fields, zap.Error(err))...)
		writeProblem(w, http.StatusInternalServerError, "internal", "could not generate a key: "+err.Error())
	}
	return false
}

func (h *Handler) revokeKey(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "key")
	if !ok {
		return
	}
	err := h.cfg.Store.RevokeKey(r.Context(), id)
	if errors.Is(err, apikey.ErrNotFound) {
		writeProblem(w, http.StatusNotFound, "key_not_found", "no key with id "+id)
		return
	}
	if err != nil {
		h.storeFailed(w, "revoke key", err, zap.String("key_id", id))
		return
	}
	h.log.Info("key revoked", zap.String("key_id", id))
	w.WriteHeader(http.StatusNoContent)
}

// customerFree reports whether consumer id may be billed to Stripe
// customer cus: no other consumer of the store is. A customer bills one
// consumer, the one its webhooks change; it answers 409 or 503 itself.
func (h *Handler) customerFree(w http.ResponseWriter, r *http.Request, id, cus string) bool {
	if cus == "" {
		return true
	}
	other, err := h.cfg.Store.ConsumerByStripeCustomer(r.Context(), cus)
	switch {
	case errors.Is(err, apikey.ErrNotFound) || err == nil && (other == nil || other.ID == id):
		return true
	case err != nil:
		h.storeFailed(w, "find consumer by Stripe customer", err, zap.String("consumer", id))
		return false
	}
	writeProblem(w, http.StatusConflict, "stripe_customer_taken",
		"Stripe customer "+strconv.Quote(cus)+" is billed to consumer "+other.ID+": a customer bills one consumer")
	return false
}

// consumer reads a consumer, answering 404 or 503 itself when it cannot.
func (h *Handler) consumer(w http.ResponseWriter, r *http.Request, id string) (*apikey.Consumer, bool) {
	c, err := h.cfg.Store.GetConsumer(r.Context(), id)
	if errors.Is(err, apikey.ErrNotFound) || err == nil && c == nil {
		writeProblem(w, http.StatusNotFound, "consumer_not_found", "no consumer with id "+id)
		return nil, false
	}
	if err != nil {
		h.storeFailed(w, "get consumer", err, zap.String("consumer", id))
		return nil, false
	}
	return c, true
}

func (h *Handler) storeFailed(w http.ResponseWriter, op string, err error, fields ...zap.Field) {
	h.log.Error(op, append(fields, zap.Error(err))...)
	writeProblem(w, http.StatusServiceUnavailable, "store_unavailable", op+": the store failed; try again")
}

func (h *Handler) checkPlan(name string) (string, apiError) {
	catalog := h.cfg.Catalog()
	if catalog == nil {
		return "", apiError{http.StatusServiceUnavailable, "admin_unavailable", "no plans are loaded"}
	}
	if _, ok := catalog.Get(name); ok {
		return name, apiError{}
	}
	known := "known plans: " + strings.Join(catalog.Names(), ", ")
	if name == "" {
		return "", apiError{http.StatusBadRequest, "unknown_plan", "plan is required; " + known}
	}
	return "", apiError{http.StatusBadRequest, "unknown_plan", fmt.Sprintf("unknown plan %q; %s", name, known)}
}

// checkStatus returns whether status means suspended; empty is active.
func checkStatus(status string) (bool, apiError) {
	switch status {
	case "", StatusActive:
		return false, apiError{}
	case StatusSuspended:
		return true, apiError{}
	}
	return false, apiError{http.StatusBadRequest, "invalid_status",
		fmt.Sprintf("status %q: want %q or %q", status, StatusActive, StatusSuspended)}
}

// checkTime parses an optional RFC 3339 time; empty is the zero time.
func checkTime(field, v string) (time.Time, apiError) {
	if v == "" {
		return time.Time{}, apiError{}
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, apiError{http.StatusBadRequest, "invalid_time",
			fmt.Sprintf("%s %q: want an RFC 3339 time such as 2026-01-31T00:00:00Z", field, v)}
	}
	return t, apiError{}
}

func pathID(w http.ResponseWriter, r *http.Request, what string) (string, bool) {
	id := r.PathValue("id")
	if p := checkID(what, id); p.status != 0 {
		p.write(w)
		return "", false
	}
	return id, true
}

// checkID accepts 1 to 128 characters of [A-Za-z0-9._:-], not all dots.
func checkID(what, id string) apiError {
	const want = "want 1 to 128 characters of A-Z a-z 0-9 . _ : -"
	if len(id) > MaxIDLen {
		return apiError{http.StatusBadRequest, "invalid_id", fmt.Sprintf("%s id is %d bytes long: %s", what, len(id), want)}
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return apiError{http.StatusBadRequest, "invalid_id", fmt.Sprintf("%s id %q: %s", what, id, want)}
		}
	}
	if id == "" {
		return apiError{http.StatusBadRequest, "invalid_id", what + " id is empty: " + want}
	}
	if strings.Trim(id, ".") == "" {
		// "." and ".." name directories in a URL: %2e%2e would reach here.
		return apiError{http.StatusBadRequest, "invalid_id", fmt.Sprintf("%s id %q: not only dots", what, id)}
	}
	return apiError{}
}

// decode reads one JSON object into v, strictly: unknown fields, trailing
// data and bodies over MaxBody are errors it answers itself. An empty body
// is accepted only when optional.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	body := http.MaxBytesReader(w, r.Body, MaxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		if optional {
			return true
		}
		writeProblem(w, http.StatusBadRequest, "invalid_json", "a JSON object body is required")
		return false
	}
	if err == nil {
		// Exactly one value: anything after it is an error too (read raw,
		// so that a second object is not blamed on an unknown field).
		var rest json.RawMessage
		if err = dec.Decode(&rest); errors.Is(err, io.EOF) {
			return true
		}
		if err == nil {
			err = errors.New("more than one JSON value")
		}
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeProblem(w, http.StatusRequestEntityTooLarge, "body_too_large",
			fmt.Sprintf("the request body is over %d bytes", MaxBody))
		return false
	}
	if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		writeProblem(w, http.StatusBadRequest, "unknown_field", "unknown field "+field)
		return false
	}
	writeProblem(w, http.StatusBadRequest, "invalid_json", "the request body is not valid JSON: "+
		strings.TrimPrefix(err.Error(), "json: "))
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// apiError is an admin API error, sent as a problem document; the zero
// value means none.
type apiError struct {
	status         int
	reason, detail string
}

func (p apiError) write(w http.ResponseWriter) { writeProblem(w, p.status, p.reason, p.detail) }

// writeProblem answers an RFC 9457 problem document, shaped like the ones
// levy's ext_authz denials carry.
func writeProblem(w http.ResponseWriter, status int, reason, detail string) {
	problem.Write(w, problem.New(status, reason, detail))
}

// rateLimitJSON answers a RateLimitRequest written as JSON with the
// RateLimitResponse as JSON: 200 when OK, 429 when over the limit, as
// envoyproxy/ratelimit's /json does. It counts like any other request.
func (h *Handler) rateLimitJSON(w http.ResponseWriter, r *http.Request) {
	if h.cfg.RateLimit == nil {
		writeProblem(w, http.StatusServiceUnavailable, "ratelimit_unavailable", "the RateLimitService is not available here")
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		writeProblem(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the request body is over %d bytes", MaxBody))
		return
	}
	var req rlsv3.RateLimitRequest
	if err := protojson.Unmarshal(data, &req); err != nil {
		writeProblem(w, http.StatusBadRequest, "invalid_json", "the body is not a RateLimitRequest in JSON: "+err.Error())
		return
	}
	resp, err := h.cfg.RateLimit(r.Context(), &req)
	if err != nil {
		code := http.StatusServiceUnavailable
		if status.Code(err) == codes.InvalidArgument {
			code = http.StatusBadRequest
		}
		writeProblem(w, code, "ratelimit_error", status.Convert(err).Message())
		return
	}
	out, err := protojson.Marshal(resp)
	if err != nil {
		writeProblem(w, http.StatusInternalServerError, "ratelimit_error", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
		w.WriteHeader(http.StatusTooManyRequests)
	}
	w.Write(out)
}
