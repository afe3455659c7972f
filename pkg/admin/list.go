package admin

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/apikey"
)

// Page sizes of GET /v1/consumers: DefaultLimit without ?limit=, and a
// larger limit is capped at MaxLimit.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// maxScan bounds the consumers one page examines: a filter that matches
// few answers a short page and a cursor rather than reading the whole
// store in one call.
const maxScan = 5000

type consumerList struct {
	Consumers []consumerJSON `json:"consumers"`
	// Next is the cursor of the following page; absent on the last.
	Next string `json:"next,omitempty"`
}

// listConsumers answers a page of the store's consumers in id order:
// ?plan=, ?status=active|suspended, ?label=key=value or ?label=key
// (repeatable, all must match), ?prefix= (id prefix), ?limit= and
// ?cursor= (the previous page's next).
func (h *Handler) listConsumers(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	for name := range v {
		switch name {
		case "plan", "status", "label", "prefix", "limit", "cursor":
		default:
			writeProblem(w, http.StatusBadRequest, "unknown_parameter",
				"unknown parameter "+strconv.Quote(name)+"; known: plan, status, label, prefix, limit, cursor")
			return
		}
	}
	q := apikey.ListQuery{Prefix: v.Get("prefix"), Limit: DefaultLimit, MaxScan: maxScan}
	if q.Prefix != "" {
		if p := checkID("prefix", q.Prefix); p.status != 0 {
			p.write(w)
			return
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeProblem(w, http.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit %q: want a whole number from 1 (at most %d are returned)", s, MaxLimit))
			return
		}
		q.Limit = min(n, MaxLimit)
	}
	if s := v.Get("cursor"); s != "" {
		after, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || checkID("cursor", string(after)).status != 0 {
			writeProblem(w, http.StatusBadRequest, "invalid_cursor", "cursor "+strconv.Quote(s)+" is not one this API gave: pass a page's next as it is")
			return
		}
		q.After = string(after)
	}
	planName, status := v.Get("plan"), v.Get("status")
	if status != "" && status != StatusActive && status != StatusSuspended {
		writeProblem(w, http.StatusBadRequest, "invalid_status", fmt.Sprintf("status %q: want %q or %q", status, StatusActive, StatusSuspended))
		return
	}
	type label struct {
		key, value string
		any        bool
	}
	var labels []label
	for _, s := range v["label"] {
		k, val, hasValue := strings.Cut(s, "=")
		err := apikey.ValidateLabelKey(k)
		if err == nil && hasValue {
			err = apikey.ValidateLabelValue(k, val)
		}
		if err != nil {
			writeProblem(w, http.StatusBadRequest, "invalid_label", "label filter "+strconv.Quote(s)+": "+err.Error())
			return
		}
		labels = append(labels, label{k, val, !hasValue})
	}
	now := h.clock()
	q.Match = func(c *apikey.Consumer) bool {
		if planName != "" && c.Plan != planName {
			return false
		}
		if status != "" && c.SuspendedAt(now) != (status == StatusSuspended) {
			return false
		}
		for _, l := range labels {
			if got, ok := c.Labels[l.key]; !ok || !l.any && got != l.value {
				return false
			}
		}
		return true
	}
	page, err := h.cfg.Store.ListConsumers(r.Context(), q)
	if err != nil {
		h.storeFailed(w, "list consumers", err)
		return
	}
	out := consumerList{Consumers: make([]consumerJSON, 0, len(page.Consumers))}
	for _, c := range page.Consumers {
		out.Consumers = append(out.Consumers, toJSON(c, now))
	}
	if page.Next != "" {
		out.Next = base64.RawURLEncoding.EncodeToString([]byte(page.Next))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) deleteConsumer(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	err := h.cfg.Store.DeleteConsumer(r.Context(), id)
	if errors.Is(err, apikey.ErrNotFound) {
		writeProblem(w, http.StatusNotFound, "consumer_not_found",
			"no consumer with id "+id+" in the store (consumers declared in the config file are removed there)")
		return
	}
	if err != nil {
		h.storeFailed(w, "delete consumer", err, zap.String("consumer", id))
		return
	}
	h.log.Info("consumer deleted with its keys", zap.String("consumer", id))
	w.WriteHeader(http.StatusNoContent)
}

// Key statuses on the wire.
const (
	KeyActive  = "active"
	KeyRevoked = "revoked"
	KeyExpired = "expired"
)

// keyJSON is a key on the wire: never its secret or hash.
type keyJSON struct {
	ID         string `json:"id"`
	Consumer   string `json:"consumer"`
	Status     string `json:"status"`
	CreatedAt  string `json:"created_at,omitempty"`
	ExpiresAt  string `json:"expires_at,omitempty"`
	ReplacedBy string `json:"replaced_by,omitempty"`
	// Hint is the key's prefix and first random characters (apikey.Hint);
	// absent for keys stored before levy recorded it.
	Hint string `json:"hint,omitempty"`
}

func (h *Handler) keyJSON(k *apikey.Key) keyJSON {
	out := keyJSON{ID: k.ID, Consumer: k.ConsumerID, Status: KeyActive, CreatedAt: rfc3339(k.CreatedAt),
		ExpiresAt: rfc3339(k.ExpiresAt), ReplacedBy: k.ReplacedBy, Hint: k.Hint}
	switch {
	case k.Revoked:
		out.Status = KeyRevoked
	case k.Expired(h.clock()):
		out.Status = KeyExpired
	}
	return out
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func (h *Handler) listKeys(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r, "consumer")
	if !ok {
		return
	}
	if _, ok := h.consumer(w, r, id); !ok {
		return
	}
	keys, err := h.cfg.Store.ListKeys(r.Context(), id)
	if err != nil {
		h.storeFailed(w, "list keys", err, zap.String("consumer", id))
		return
	}
	out := struct {
		Keys []keyJSON `json:"keys"`
	}{Keys: make([]keyJSON, 0, len(keys))}
	for _, k := range keys {
		out.Keys = append(out.Keys, h.keyJSON(k))
	}
	writeJSON(w, http.StatusOK, out)
}

// DefaultGrace is how long a rotated key keeps working when the rotation
// names no deadline.
const DefaultGrace = 24 * time.Hour

type rotateKeyRequest struct {
	// Grace is how long the old key keeps working ("24h"; "0s" stops it
	// now); OldExpiresAt names the deadline instead.
	Grace        string `json:"grace"`
	OldExpiresAt string `json:"old_expires_at"`
	// ID and ExpiresAt are the new key's, as in createKey.
	ID        string `json:"id"`
	ExpiresAt string `json:"expires_at"`
}

type rotateKeyResponse struct {
	createKeyResponse
	// Replaces is the old key, with the deadline it works until.
	Replaces keyJSON `json:"replaces"`
}

// rotateKey issues a new key for the old key's consumer and sets the old
// key to expire at a deadline (the sooner of the deadline and its own
// expiry); after it, the old key is refused as rotated.
func (h *Handler) rotateKey(w http.ResponseWriter, r *http.Request) {
	oldID, ok := pathID(w, r, "key")
	if !ok {
		return
	}
	var req rotateKeyRequest
	if !decode(w, r, &req, true) {
		return
	}
	now := h.clock()
	deadline := now.Add(DefaultGrace)
	switch {
	case req.Grace != "" && req.OldExpiresAt != "":
		writeProblem(w, http.StatusBadRequest, "invalid_deadline", "give grace or old_expires_at, not both")
		return
	case req.Grace != "":
		d, err := time.ParseDuration(req.Grace)
		if err != nil || d < 0 {
			writeProblem(w, http.StatusBadRequest, "invalid_deadline", fmt.Sprintf("grace %q: want a duration such as 24h, 30m or 0s", req.Grace))
			return
		}
		deadline = now.Add(d)
	case req.OldExpiresAt != "":
		t, p := checkTime("old_expires_at", req.OldExpiresAt)
		if p.status != 0 {
			p.write(w)
			return
		}
		deadline = t
	}
	expires, ok := checkNewKey(w, req.ID, req.ExpiresAt, now)
	if !ok {
		return
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	old, err := h.cfg.Store.GetKey(r.Context(), oldID)
	if err == nil {
		err = apikey.Rotatable(old, now)
	}
	switch {
	case errors.Is(err, apikey.ErrNotFound):
		writeProblem(w, http.StatusNotFound, "key_not_found", "no key with id "+oldID)
		return
	case errors.Is(err, apikey.ErrKeyRevoked):
		writeProblem(w, http.StatusConflict, "key_revoked", "key "+oldID+" is revoked: create a new key instead")
		return
	case errors.Is(err, apikey.ErrKeyRotated):
		writeProblem(w, http.StatusConflict, "key_rotated", "key "+oldID+" was already rotated; its replacement is "+old.ReplacedBy)
		return
	case errors.Is(err, apikey.ErrKeyExpired):
		writeProblem(w, http.StatusConflict, "key_expired", "key "+oldID+" expired at "+rfc3339(old.ExpiresAt)+": create a new key instead")
		return
	case err != nil:
		h.storeFailed(w, "get key", err, zap.String("key_id", oldID))
		return
	}
	if _, ok := h.consumer(w, r, old.ConsumerID); !ok {
		return
	}
	created, key, next, err := h.keyOps().Rotate(r.Context(), old, deadline, req.ID, expires)
	if errors.Is(err, apikey.ErrKeyIDTaken) {
		writeProblem(w, http.StatusConflict, "key_id_taken", "key id "+created.ID+" is taken: choose another, or omit id to have one derived from the key")
		return
	}
	if !h.keyOpFailed(w, err, zap.String("key_id", oldID)) {
		return
	}
	h.log.Info("key created", zap.String("consumer", old.ConsumerID), zap.String("key_id", created.ID))
	h.log.Info("key rotated", zap.String("consumer", old.ConsumerID), zap.String("key_id", oldID),
		zap.String("new_key_id", created.ID), zap.Time("old_key_expires_at", next.ExpiresAt))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, rotateKeyResponse{
		createKeyResponse: createKeyResponse{ID: created.ID, Key: key, Consumer: old.ConsumerID, ExpiresAt: rfc3339(expires)},
		Replaces:          h.keyJSON(next),
	})
}
