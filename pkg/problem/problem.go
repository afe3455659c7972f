// Package problem renders RFC 9457 problem documents: the body of every
// denial levy answers (ext_authz, RateLimitService) and of every admin API
// error.
package problem

import (
	"encoding/json"
	"net/http"
	"strings"
)

// ContentType is the media type of a problem document.
const ContentType = "application/problem+json"

// Doc is one problem document.
type Doc struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	// Reason is the machine-readable reason, e.g. rate_limited.
	Reason string `json:"reason"`
	Detail string `json:"detail"`
	// Limit names the limit that denied, when one did.
	Limit string `json:"limit,omitempty"`
}

// New returns a document for an HTTP status and a reason.
func New(status int, reason, detail string) Doc {
	return Doc{
		Type:   "https://levy.dev/problems/" + strings.ReplaceAll(reason, "_", "-"),
		Title:  http.StatusText(status),
		Status: status,
		Reason: reason,
		Detail: detail,
	}
}

// JSON encodes the document.
func (d Doc) JSON() []byte {
	b, _ := json.Marshal(d) // strings and an int: cannot fail
	return b
}

// Write sends the document as an HTTP response.
func Write(w http.ResponseWriter, d Doc) {
	w.Header().Set("Content-Type", ContentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(d.Status)
	w.Write(append(d.JSON(), '\n'))
}
