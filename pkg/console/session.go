package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"strings"
	"sync"
	"time"
)

// A session is a cookie levy signs with a key derived from the admin
// token: nothing is stored, every replica with the same token accepts
// it, and a new admin token signs every operator out. Its value is
// base64(expiry, 16 random bytes) "." base64(HMAC); the CSRF token of
// its forms is another HMAC of it.
const (
	cookieName       = "levy_console"
	secureCookieName = "__Host-levy_console"
)

// SessionTTL is how long a console session lasts.
const SessionTTL = 8 * time.Hour

// session is a signed-in operator.
type session struct {
	value string
	csrf  string
}

// signer signs and checks sessions with the key of one admin token.
type signer struct{ key []byte }

func newSigner(token string) signer {
	m := hmac.New(sha256.New, []byte("levy console session v1"))
	m.Write([]byte(token))
	return signer{key: m.Sum(nil)}
}

func (s signer) mac(parts ...string) []byte {
	m := hmac.New(sha256.New, s.key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}

// mint returns a new session's cookie value, valid until exp.
func (s signer) mint(exp time.Time) (string, error) {
	body := make([]byte, 8+16)
	binary.BigEndian.PutUint64(body, uint64(exp.Unix()))
	if _, err := rand.Read(body[8:]); err != nil {
		return "", err
	}
	b := base64.RawURLEncoding.EncodeToString(body)
	return b + "." + base64.RawURLEncoding.EncodeToString(s.mac("session", b)), nil
}

// check returns the session of a cookie value, if it is signed and not
// expired at now.
func (s signer) check(v string, now time.Time) (*session, bool) {
	b, sig, ok := strings.Cut(v, ".")
	if !ok || len(v) > 200 {
		return nil, false
	}
	// Strict: one value per signature, no spare bits to vary.
	got, err := base64.RawURLEncoding.Strict().DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac("session", b)) {
		return nil, false
	}
	body, err := base64.RawURLEncoding.Strict().DecodeString(b)
	if err != nil || len(body) != 24 {
		return nil, false
	}
	if exp := time.Unix(int64(binary.BigEndian.Uint64(body)), 0); !now.Before(exp) {
		return nil, false
	}
	return &session{value: v, csrf: base64.RawURLEncoding.EncodeToString(s.mac("csrf", v))}, true
}

// tokenMatches compares a presented admin token with the configured one
// in constant time (of both lengths: they are hashed first).
func tokenMatches(presented, token string) bool {
	a := sha256.Sum256([]byte(strings.TrimSpace(presented)))
	b := sha256.Sum256([]byte(token))
	return token != "" && subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// signedOut remembers sessions signed out on this replica until they
// expire, so that a copied cookie stops working here at sign-out (on
// other replicas it lasts until it expires or the token changes).
type signedOut struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func (o *signedOut) add(v string, exp, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]time.Time{}
	}
	for k, e := range o.m {
		if !now.Before(e) {
			delete(o.m, k)
		}
	}
	o.m[v] = exp
}

func (o *signedOut) has(v string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.m[v]
	return ok
}

// cookie is the session cookie for r's connection: __Host- and Secure
// over TLS.
func cookie(r *http.Request, value string, maxAge int) *http.Cookie {
	c := &http.Cookie{Name: cookieName, Value: value, Path: "/console/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: maxAge}
	if r.TLS != nil {
		c.Name, c.Secure, c.Path = secureCookieName, true, "/"
	}
	return c
}

// sameOrigin refuses what a browser says came from another site.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		scheme := "http://"
		if r.TLS != nil {
			scheme = "https://"
		}
		return strings.EqualFold(o, scheme+r.Host)
	}
	return true
}

func hmacEqual(a, b []byte) bool { return hmac.Equal(a, b) }
