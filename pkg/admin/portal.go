package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
)

// ErrInvalid marks a request a hook refused as invalid (400); the error's
// text says why.
var ErrInvalid = errors.New("invalid")

// PortalLink is a developer-portal sign-in link.
type PortalLink struct {
	URL       string
	ExpiresAt time.Time
}

// PortalLinker mints a portal sign-in link for a consumer: ttl 0 takes
// the portal's default, no scopes all of them. apikey.ErrNotFound gives
// 404, ErrInvalid 400, ErrUnavailable 503.
type PortalLinker func(ctx context.Context, consumerID string, ttl time.Duration, scopes []string) (PortalLink, error)

type portalLinkRequest struct {
	TTL    string   `json:"ttl"`
	Scopes []string `json:"scopes"`
}

type portalLinkResponse struct {
	URL       string `json:"url"`
	ExpiresAt string `json:"expires_at"`
}

// portalLink answers POST /v1/consumers/{id}/portal-links: a single-use
// sign-in link to the developer portal, for the operator to send.
func (h *Handler) portalLink(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	var req portalLinkRequest
	if !decode(w, r, &req, true) {
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			writeProblem(w, http.StatusBadRequest, "invalid_ttl", fmt.Sprintf("ttl %q: want a positive duration such as 15m or 1h", req.TTL))
			return
		}
		ttl = d
	}
	if h.cfg.PortalLink == nil {
		writeProblem(w, http.StatusServiceUnavailable, "portal_unavailable", "the developer portal is not available")
		return
	}
	link, err := h.cfg.PortalLink(r.Context(), id, ttl, req.Scopes)
	switch {
	case errors.Is(err, apikey.ErrNotFound):
		writeProblem(w, http.StatusNotFound, "consumer_not_found", "no consumer "+strconv.Quote(id))
	case errors.Is(err, ErrInvalid):
		writeProblem(w, http.StatusBadRequest, "invalid_portal_link", err.Error())
	case errors.Is(err, ErrUnavailable):
		writeProblem(w, http.StatusServiceUnavailable, "portal_unavailable", err.Error())
	case err != nil:
		h.storeFailed(w, "mint portal link", err, zap.String("consumer", id))
	default:
		// The body holds a secret: keep it out of every cache.
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusCreated, portalLinkResponse{URL: link.URL, ExpiresAt: link.ExpiresAt.UTC().Format(time.RFC3339)})
	}
}
