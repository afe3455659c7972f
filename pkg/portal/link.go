package portal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
)

// MaxLinkTTL bounds a sign-in link's life.
const MaxLinkTTL = 24 * time.Hour

// linkAfterlife is how long a link's record outlives the link: a used or
// expired link is then told apart from an unknown one.
const linkAfterlife = time.Hour

// Link is a minted sign-in link.
type Link struct {
	URL       string
	ExpiresAt time.Time
}

// Mint makes a sign-in link for a consumer: ttl 0 takes the configured
// link_ttl, scopes none all of them. apikey.ErrNotFound for an unknown
// consumer, ErrInvalid for a bad ttl or scope, ErrDisabled when the
// portal is off.
func (h *Handler) Mint(ctx context.Context, consumerID string, ttl time.Duration, scopes []string) (Link, error) {
	s := h.settings()
	if !s.Enabled || s.PublicURL == "" {
		return Link{}, ErrDisabled
	}
	if ttl == 0 {
		ttl = s.LinkTTL
	}
	if ttl < time.Second || ttl > MaxLinkTTL {
		return Link{}, fmt.Errorf("%w: ttl %v: want 1s to %v", ErrInvalid, ttl, MaxLinkTTL)
	}
	if len(scopes) == 0 {
		scopes = AllScopes
	}
	if err := checkScopes(scopes); err != nil {
		return Link{}, err
	}
	if _, ok := h.consumer(consumerID); !ok {
		return Link{}, apikey.ErrNotFound
	}
	token, err := newToken()
	if err != nil {
		return Link{}, err
	}
	expires := h.clock().Add(ttl).UTC().Truncate(time.Second)
	rec, err := json.Marshal(linkRecord{Consumer: consumerID, Scopes: scopes, ExpiresAt: expires})
	if err != nil {
		return Link{}, err
	}
	if err := h.cfg.Store.PutLink(ctx, tokenHash(token), rec, ttl+linkAfterlife); err != nil {
		return Link{}, fmt.Errorf("store portal link: %w", err)
	}
	h.log.Info("portal link minted", zap.String("consumer", consumerID), zap.Strings("scopes", scopes), zap.Time("expires_at", expires))
	return Link{URL: strings.TrimRight(s.PublicURL, "/") + "/portal/link/" + token, ExpiresAt: expires}, nil
}

// linkState reads the link a request names, answering a refusal page
// itself when it cannot be used: 404 unknown, 410 used or expired.
func (h *Handler) linkState(w http.ResponseWriter, r *http.Request, take bool) (linkRecord, bool) {
	token := r.PathValue("token")
	if !validToken(token) {
		h.message(w, r, http.StatusNotFound, "Unknown sign-in link", "This sign-in link is not one we issued. Check that you copied all of it, or ask for a new one.")
		return linkRecord{}, false
	}
	var raw []byte
	var err error
	if take {
		raw, err = h.cfg.Store.TakeLink(r.Context(), tokenHash(token))
	} else {
		raw, err = h.cfg.Store.PeekLink(r.Context(), tokenHash(token))
	}
	var l linkRecord
	if err == nil {
		l, err = decodeLink(raw)
	}
	switch {
	case errors.Is(err, ErrNotFound):
		h.message(w, r, http.StatusNotFound, "Unknown sign-in link", "This sign-in link is not one we know: it may be older than a day. Ask for a new one.")
	case errors.Is(err, ErrLinkUsed):
		h.message(w, r, http.StatusGone, "Link already used", "This sign-in link has been used: each link signs in once. Ask for a new one.")
	case err != nil:
		h.log.Error("read portal link", zap.Error(err))
		h.message(w, r, http.StatusServiceUnavailable, "Try again", "We cannot check sign-in links right now. Try again in a minute.")
	case !h.clock().Before(l.ExpiresAt):
		h.message(w, r, http.StatusGone, "Link expired", "This sign-in link expired at "+l.ExpiresAt.UTC().Format("2 Jan 2006 15:04 UTC")+". Ask for a new one.")
	default:
		return l, true
	}
	return linkRecord{}, false
}

// linkPage shows a link's confirmation page: a GET never uses the link
// up, so mail scanners that fetch links do not burn it.
func (h *Handler) linkPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	l, ok := h.linkState(w, r, false)
	if !ok {
		return
	}
	h.render(w, r, http.StatusOK, "link.html", page{Title: "Sign in", Data: map[string]any{
		"Consumer": l.Consumer, "Scopes": l.Scopes, "ExpiresAt": l.ExpiresAt, "Action": r.URL.Path}})
}

// followLink uses a link up and starts a session.
func (h *Handler) followLink(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !h.sameOrigin(w, r) {
		return
	}
	l, ok := h.linkState(w, r, true)
	if !ok {
		return
	}
	if _, ok := h.consumer(l.Consumer); !ok {
		h.message(w, r, http.StatusNotFound, "Account not found", "The account this link was made for no longer exists.")
		return
	}
	if !h.startSession(w, r, l.Consumer, l.Scopes) {
		return
	}
	h.log.Info("portal sign-in by link", zap.String("consumer", l.Consumer))
	http.Redirect(w, r, "/portal/", http.StatusSeeOther)
}
