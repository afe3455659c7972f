package portal

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
)

// cookieName is the session cookie's name: __Host- prefixed over https,
// so that no other host or path may set it.
func cookieName(secure bool) string {
	if secure {
		return "__Host-levy_portal"
	}
	return "levy_portal"
}

// csrfField and csrfHeader carry the session's CSRF token on a change.
const (
	csrfField  = "csrf"
	csrfHeader = "X-CSRF-Token"
)

// sess is a request's session.
type sess struct {
	sessionRecord
	hash     string
	consumer *apikey.Consumer
}

// loadSession reads the request's session; nil when there is none (no
// cookie, a malformed one, unknown, expired, or its consumer is gone).
func (h *Handler) loadSession(r *http.Request) (*sess, error) {
	c, err := r.Cookie(cookieName(h.settings().secure()))
	if err != nil || !validToken(c.Value) {
		return nil, nil
	}
	hash := tokenHash(c.Value)
	raw, err := h.cfg.Store.Session(r.Context(), hash)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	rec, err := decodeSession(raw)
	if err != nil {
		h.log.Warn("portal session record unreadable; signing out", zap.Error(err))
		return nil, nil
	}
	if !h.clock().Before(rec.ExpiresAt) {
		return nil, nil
	}
	consumer, ok := h.consumer(rec.Consumer)
	if !ok {
		return nil, nil
	}
	return &sess{sessionRecord: rec, hash: hash, consumer: consumer}, nil
}

// session wraps a page that needs a session with scope ("" any): without
// one it sends the browser to sign in.
func (h *Handler) session(scope string, next func(http.ResponseWriter, *http.Request, *sess)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		s, ok := h.sessionOrRefuse(w, r, scope, false)
		if ok {
			next(w, r, s)
		}
	}
}

// change wraps a state change: it needs a session with scope, the
// session's CSRF token, and no cross-site origin. Refused, it changes
// nothing and answers 403.
func (h *Handler) change(scope string, next func(http.ResponseWriter, *http.Request, *sess)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if !h.sameOrigin(w, r) {
			return
		}
		s, ok := h.sessionOrRefuse(w, r, scope, true)
		if !ok {
			return
		}
		got := r.Header.Get(csrfHeader)
		if got == "" {
			got = r.PostFormValue(csrfField)
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(s.CSRF)) != 1 {
			h.log.Warn("portal change refused: missing or wrong CSRF token", zap.String("consumer", s.Consumer), zap.String("path", r.URL.Path))
			h.message(w, r, http.StatusForbidden, "Request refused", "This form has expired or did not come from the portal. Go back, reload the page and try again.")
			return
		}
		next(w, r, s)
	}
}

func (h *Handler) sessionOrRefuse(w http.ResponseWriter, r *http.Request, scope string, change bool) (*sess, bool) {
	s, err := h.loadSession(r)
	switch {
	case err != nil:
		h.log.Error("read portal session", zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "We cannot read your session right now. Try again in a minute.")
		return nil, false
	case s == nil && change:
		h.message(w, r, http.StatusForbidden, "Signed out", "Your session has ended. Sign in again to continue.")
		return nil, false
	case s == nil:
		http.Redirect(w, r, "/portal/sign-in", http.StatusSeeOther)
		return nil, false
	case !s.has(scope):
		h.render(w, r, http.StatusForbidden, "message.html", page{Title: "Not allowed", Session: s,
			Data: message{Text: "Your sign-in link does not allow this page. Ask for a link that includes “" + scope + "”."}})
		return nil, false
	}
	return s, true
}

// sameOrigin refuses a request that a browser says came from another
// site (Sec-Fetch-Site, Origin), answering 403 itself. Under the portal's
// Referrer-Policy no-referrer, browsers send "Origin: null" with the
// portal's own form posts (the Fetch standard's request-origin rules), so
// null tells nothing and Sec-Fetch-Site decides; session changes need the
// CSRF token anyway.
func (h *Handler) sameOrigin(w http.ResponseWriter, r *http.Request) bool {
	ok := true
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		ok = false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" && !strings.EqualFold(o, h.settings().origin()) {
		ok = false
	}
	if !ok {
		h.log.Warn("portal request refused: cross-site", zap.String("origin", r.Header.Get("Origin")),
			zap.String("sec_fetch_site", r.Header.Get("Sec-Fetch-Site")), zap.String("path", r.URL.Path))
		h.message(w, r, http.StatusForbidden, "Request refused", "This request did not come from the portal's own pages.")
	}
	return ok
}

// startSession starts a session for consumer (ending the request's
// current one) and sets its cookie; it answers a failure itself.
func (h *Handler) startSession(w http.ResponseWriter, r *http.Request, consumer string, scopes []string) bool {
	st := h.settings()
	if old, err := r.Cookie(cookieName(st.secure())); err == nil && validToken(old.Value) {
		_ = h.cfg.Store.DeleteSession(r.Context(), tokenHash(old.Value))
	}
	id, err := newToken()
	var csrf string
	if err == nil {
		csrf, err = newToken()
	}
	var raw []byte
	expires := h.clock().Add(st.SessionTTL)
	if err == nil {
		raw, err = json.Marshal(sessionRecord{Consumer: consumer, Scopes: scopes, CSRF: csrf, ExpiresAt: expires})
	}
	if err == nil {
		err = h.cfg.Store.PutSession(r.Context(), tokenHash(id), raw, st.SessionTTL)
	}
	if err != nil {
		h.log.Error("start portal session", zap.String("consumer", consumer), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "We cannot start your session right now. Try again in a minute.")
		return false
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName(st.secure()), Value: id, Path: "/", MaxAge: int(st.SessionTTL / time.Second),
		HttpOnly: true, Secure: st.secure(), SameSite: http.SameSiteLaxMode})
	return true
}

func (h *Handler) signOut(w http.ResponseWriter, r *http.Request, s *sess) {
	if err := h.cfg.Store.DeleteSession(r.Context(), s.hash); err != nil {
		h.log.Error("end portal session", zap.String("consumer", s.Consumer), zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "We cannot sign you out right now. Try again in a minute.")
		return
	}
	st := h.settings()
	http.SetCookie(w, &http.Cookie{Name: cookieName(st.secure()), Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: st.secure(), SameSite: http.SameSiteLaxMode})
	h.log.Info("portal sign-out", zap.String("consumer", s.Consumer))
	http.Redirect(w, r, "/portal/sign-in?signed_out=1", http.StatusSeeOther)
}

func (h *Handler) signInPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if s, err := h.loadSession(r); err == nil && s != nil {
		http.Redirect(w, r, "/portal/", http.StatusSeeOther)
		return
	}
	h.render(w, r, http.StatusOK, "signin.html", page{Title: "Sign in", Data: map[string]any{
		"KeySignIn": h.settings().KeySignIn, "SignedOut": r.URL.Query().Get("signed_out") != ""}})
}

// keySignIn signs in with one of the consumer's API keys, looked up as
// Check does; failed attempts are limited per client address.
func (h *Handler) keySignIn(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !h.settings().KeySignIn {
		h.notFound(w, r)
		return
	}
	if !h.sameOrigin(w, r) {
		return
	}
	addr := clientAddr(r)
	if !h.failures.allowed(addr) {
		h.message(w, r, http.StatusTooManyRequests, "Too many attempts", "Too many failed sign-ins from your address. Wait a few minutes and try again.")
		return
	}
	key := strings.TrimSpace(r.PostFormValue("key"))
	c, ok := h.lookupKey(r, key)
	if !ok {
		h.failures.fail(addr)
		h.render(w, r, http.StatusUnauthorized, "signin.html", page{Title: "Sign in", Data: map[string]any{
			"KeySignIn": true, "Error": "That key does not sign in: it is unknown, revoked, expired, or its account is suspended."}})
		return
	}
	if !h.startSession(w, r, c.ID, []string{ScopeUsage, ScopeKeys}) {
		return
	}
	h.log.Info("portal sign-in by key", zap.String("consumer", c.ID))
	http.Redirect(w, r, "/portal/", http.StatusSeeOther)
}

// lookupKey finds the consumer of a working key, as Check would admit it.
func (h *Handler) lookupKey(r *http.Request, key string) (*apikey.Consumer, bool) {
	if apikey.Check(key) != nil || h.cfg.Directory == nil || h.cfg.Hasher == nil {
		return nil, false
	}
	k, c, err := h.cfg.Directory().Lookup(r.Context(), h.cfg.Hasher().Hash(key))
	now := h.clock()
	if err != nil || k == nil || c == nil || k.Revoked || k.Expired(now) || c.SuspendedAt(now) {
		return nil, false
	}
	return c, true
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// failures counts failed key sign-ins per client address in fixed
// windows, on this replica.
type failures struct {
	clock func() time.Time
	mu    sync.Mutex
	m     map[string]*failWindow
}

type failWindow struct {
	start time.Time
	n     int
}

// Failed key sign-ins allowed per address and window; the map holds at
// most maxFailAddrs addresses (past it, it starts over).
const (
	maxFails     = 10
	failWindowOf = 10 * time.Minute
	maxFailAddrs = 10000
)

func newFailures(clock func() time.Time) *failures {
	return &failures{clock: clock, m: map[string]*failWindow{}}
}

func (f *failures) allowed(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.m[addr]
	return w == nil || f.clock().Sub(w.start) >= failWindowOf || w.n < maxFails
}

func (f *failures) fail(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock()
	w := f.m[addr]
	if w == nil || now.Sub(w.start) >= failWindowOf {
		if len(f.m) >= maxFailAddrs {
			for a, x := range f.m {
				if now.Sub(x.start) >= failWindowOf {
					delete(f.m, a)
				}
			}
			if len(f.m) >= maxFailAddrs {
				f.m = map[string]*failWindow{}
			}
		}
		w = &failWindow{start: now}
		f.m[addr] = w
	}
	w.n++
}
