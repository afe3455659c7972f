// Package console is levy's operator console: server-rendered pages under
// /console/ on the internal HTTP listener, beside the admin API, where an
// operator signs in with the admin token and lists consumers (search,
// plan and status filters, usage against quota, sorted and paged on the
// server), opens one (plan, period usage, keys) and acts on it: change
// its plan, suspend or resume it, issue or revoke a key, mint a portal
// sign-in link. It also shows totals by plan, the top consumers and the
// chargeback report by label.
//
// Every read of one consumer and every change is a call of the admin API
// handler, in process, with the admin token: the console has the API's
// validation, logs and semantics, and no second copy of them. The list
// reads an Index this replica rebuilds off the request path.
//
// Pages carry the portal's strict Content-Security-Policy, share its
// stylesheet, and need no JavaScript; every POST needs the session's CSRF
// token and a same-origin request.
package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/portal"
)

// Config configures a Handler.
type Config struct {
	// Token returns the admin token; "" turns the console off (404).
	Token func() string
	// Admin is the admin API (admin.Handler): the console's reads of a
	// consumer and all its changes are calls of it.
	Admin http.Handler
	// Index lists the consumers.
	Index   *Index
	Catalog func() *plan.Catalog
	Log     *zap.Logger
	// Clock nil means time.Now.
	Clock func() time.Time
}

// Handler serves the console under /console/.
type Handler struct {
	cfg   Config
	log   *zap.Logger
	clock func() time.Time
	mux   *http.ServeMux
	out   signedOut
}

var _ http.Handler = (*Handler)(nil)

//go:embed templates/*.html assets/*
var files embed.FS

// PageSize is the list's page length.
const PageSize = 50

// New returns a console handler.
func New(cfg Config) *Handler {
	h := &Handler{cfg: cfg, log: cfg.Log, clock: cfg.Clock, mux: http.NewServeMux()}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.clock == nil {
		h.clock = time.Now
	}
	for _, r := range h.routes() {
		h.mux.HandleFunc(r.pattern, r.handler)
	}
	h.mux.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		h.message(w, r, http.StatusNotFound, "Page not found", "There is no such page in the console.")
	})
	return h
}

type route struct {
	pattern string
	handler http.HandlerFunc
}

func (h *Handler) routes() []route {
	return []route{
		{"GET /console/{$}", h.signedIn(h.overview)},
		{"GET /console/sign-in", h.signInPage},
		{"POST /console/sign-in", h.signIn},
		{"POST /console/sign-out", h.change(h.signOut)},
		{"GET /console/consumers", h.signedIn(h.list)},
		{"GET /console/consumers/{id}", h.signedIn(h.consumerPage)},
		{"POST /console/consumers/{id}/plan", h.change(h.changePlan)},
		{"POST /console/consumers/{id}/status", h.change(h.changeStatus)},
		{"POST /console/consumers/{id}/keys", h.change(h.issueKey)},
		{"POST /console/consumers/{id}/keys/{key}/revoke", h.change(h.revokeKey)},
		{"POST /console/consumers/{id}/portal-link", h.change(h.portalLink)},
		{"GET /console/chargeback", h.signedIn(h.chargeback)},
		{"GET /console/assets/{name}", h.asset},
	}
}

// Routes lists the routes the console serves, as api/openapi.yaml names
// them ("GET /console/").
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
	if !strings.HasPrefix(r.URL.Path, "/console/assets/") {
		hd.Set("Cache-Control", "no-store")
	}
	if h.token() == "" {
		h.message(w, r, http.StatusNotFound, "Console not available", "The console is off: set LEVY_ADMIN_TOKEN to turn it on with the admin API.")
		return
	}
	h.mux.ServeHTTP(w, r)
}

// CSP is the console's Content-Security-Policy: its own styles only, no
// scripts, forms to itself, never framed.
const CSP = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func (h *Handler) token() string {
	if h.cfg.Token == nil {
		return ""
	}
	return strings.TrimSpace(h.cfg.Token())
}

// current returns r's session, if it has a valid one.
func (h *Handler) current(r *http.Request) (*session, bool) {
	for _, name := range []string{secureCookieName, cookieName} {
		c, err := r.Cookie(name)
		if err != nil {
			continue
		}
		if s, ok := newSigner(h.token()).check(c.Value, h.clock()); ok && !h.out.has(c.Value) {
			return s, true
		}
	}
	return nil, false
}

// signedIn serves next to a signed-in operator, and sends others to sign
// in.
func (h *Handler) signedIn(next func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, ok := h.current(r)
		if !ok {
			http.Redirect(w, r, "/console/sign-in", http.StatusSeeOther)
			return
		}
		next(w, r, s)
	}
}

// change serves a POST of a signed-in operator that carries the
// session's CSRF token and comes from the console's own pages.
func (h *Handler) change(next func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !sameOrigin(r) {
			h.message(w, r, http.StatusForbidden, "Refused", "This change did not come from the console's own pages.")
			return
		}
		s, ok := h.current(r)
		if !ok {
			h.message(w, r, http.StatusUnauthorized, "Signed out", "Your session has ended: sign in again.")
			return
		}
		if err := r.ParseForm(); err != nil {
			h.message(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.")
			return
		}
		got := r.PostForm.Get("csrf")
		if got == "" {
			got = r.Header.Get("X-CSRF-Token")
		}
		if !tokenEqual(got, s.csrf) {
			h.message(w, r, http.StatusForbidden, "Refused", "The form has expired: reload the page and try again.")
			return
		}
		next(w, r, s)
	}
}

func tokenEqual(a, b string) bool {
	return len(a) == len(b) && b != "" && hmacEqual([]byte(a), []byte(b))
}

func (h *Handler) signInPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := h.current(r); ok {
		http.Redirect(w, r, "/console/", http.StatusSeeOther)
		return
	}
	h.render(w, r, http.StatusOK, "signin.html", page{Title: "Sign in"})
}

func (h *Handler) signIn(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		h.message(w, r, http.StatusForbidden, "Refused", "Sign in from the console's own page.")
		return
	}
	if err := r.ParseForm(); err != nil || !tokenMatches(r.PostForm.Get("token"), h.token()) {
		h.log.Warn("console sign-in refused: wrong admin token", zap.String("remote", r.RemoteAddr))
		h.render(w, r, http.StatusUnauthorized, "signin.html", page{Title: "Sign in", Error: "That is not the admin token."})
		return
	}
	exp := h.clock().Add(SessionTTL)
	v, err := newSigner(h.token()).mint(exp)
	if err != nil {
		h.message(w, r, http.StatusInternalServerError, "Sign-in failed", "No session could be started.")
		return
	}
	http.SetCookie(w, cookie(r, v, int(SessionTTL/time.Second)))
	h.log.Info("console sign-in", zap.String("remote", r.RemoteAddr))
	http.Redirect(w, r, "/console/", http.StatusSeeOther)
}

func (h *Handler) signOut(w http.ResponseWriter, r *http.Request, s *session) {
	h.out.add(s.value, h.clock().Add(SessionTTL), h.clock())
	http.SetCookie(w, cookie(r, "", -1))
	h.render(w, r, http.StatusOK, "message.html", page{Title: "Signed out", Data: msg{Text: "You are signed out of the console.", SignIn: true}})
}

func (h *Handler) asset(w http.ResponseWriter, r *http.Request) {
	var data []byte
	switch r.PathValue("name") {
	case "portal.css":
		data = portal.Stylesheet()
	case "console.css":
		data, _ = files.ReadFile("assets/console.css")
	}
	if data == nil {
		h.message(w, r, http.StatusNotFound, "Page not found", "There is no such file in the console.")
		return
	}
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(data)
}

// call makes an admin API call in process, with the admin token, and
// decodes a 2xx JSON answer into out; otherwise it returns the status
// and the problem's detail.
func (h *Handler) call(ctx context.Context, r *http.Request, method, path string, body, out any) (int, string) {
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return http.StatusInternalServerError, err.Error()
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, path, rd)
	if err != nil {
		return http.StatusBadRequest, err.Error()
	}
	req.RemoteAddr = r.RemoteAddr
	req.Header.Set("Authorization", "Bearer "+h.token())
	req.Header.Set("Content-Type", "application/json")
	rec := &recorder{header: http.Header{}, code: http.StatusOK}
	h.cfg.Admin.ServeHTTP(rec, req)
	if rec.code/100 != 2 {
		var p struct {
			Detail string `json:"detail"`
		}
		_ = json.Unmarshal(rec.body.Bytes(), &p)
		if p.Detail == "" {
			p.Detail = http.StatusText(rec.code)
		}
		return rec.code, p.Detail
	}
	if out != nil && rec.body.Len() > 0 {
		if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
			return http.StatusBadGateway, "the admin API's answer is not JSON: " + err.Error()
		}
	}
	return rec.code, ""
}

// recorder keeps an in-process admin call's answer.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (c *recorder) Header() http.Header         { return c.header }
func (c *recorder) Write(b []byte) (int, error) { return c.body.Write(b) }
func (c *recorder) WriteHeader(code int)        { c.code = code }

// consumerPath is the admin API path of a consumer.
func consumerPath(id string) string { return "/v1/consumers/" + url.PathEscape(id) }

// page is what every template gets.
type page struct {
	Title   string
	Active  string
	Session *session
	Notice  string
	Error   string
	Data    any
}

// CSRF is the session's CSRF token for forms.
func (p page) CSRF() string {
	if p.Session == nil {
		return ""
	}
	return p.Session.csrf
}

// msg is the data of message.html.
type msg struct {
	Text   string
	SignIn bool
}

func (h *Handler) message(w http.ResponseWriter, r *http.Request, status int, title, text string) {
	h.render(w, r, status, "message.html", page{Title: title, Data: msg{Text: text, SignIn: status == http.StatusUnauthorized}})
}

var funcs = template.FuncMap{
	"units": groupDigits,
	"datetime": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2 Jan 2006 15:04:05 UTC")
	},
	"date": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2 Jan 2006")
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"int64":   func(n int) int64 { return int64(n) },
	"ms":      func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + " ms" },
}

var (
	tmplOnce sync.Once
	tmpls    map[string]*template.Template
	tmplErr  error
)

func templates() (map[string]*template.Template, error) {
	tmplOnce.Do(func() {
		tmpls = map[string]*template.Template{}
		names, err := files.ReadDir("templates")
		if err != nil {
			tmplErr = err
			return
		}
		for _, n := range names {
			if n.Name() == "layout.html" {
				continue
			}
			t, err := template.New(n.Name()).Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+n.Name())
			if err != nil {
				tmplErr = fmt.Errorf("parse %s: %w", n.Name(), err)
				return
			}
			tmpls[n.Name()] = t
		}
	})
	return tmpls, tmplErr
}

// render writes a page, whole or not at all.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	ts, err := templates()
	var buf bytes.Buffer
	if err == nil {
		t, ok := ts[name]
		if !ok {
			err = fmt.Errorf("no template %s", name)
		} else {
			err = t.ExecuteTemplate(&buf, "layout", p)
		}
	}
	if err != nil {
		h.log.Error("render console page", zap.String("page", name), zap.String("path", r.URL.Path), zap.Error(err))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte("The console could not show this page.\n"))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// groupDigits writes n with thousands separators: 100,000.
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
