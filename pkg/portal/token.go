package portal

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// tokenLen is the length of a link token, session id or CSRF token: 32
// random bytes (256 bits) in unpadded base64url.
const tokenLen = 43

// newToken returns a fresh random token.
func newToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("read random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// validToken reports whether s has a token's shape: checked before any
// store lookup, so garbage costs nothing.
func validToken(s string) bool {
	if len(s) != tokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	// The last character carries 2 spare bits, which must be zero: one
	// token, one spelling.
	_, err := base64.RawURLEncoding.Strict().DecodeString(s)
	return err == nil
}

// tokenHash is what the store keys a token by.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// linkRecord is a sign-in link as stored.
type linkRecord struct {
	Consumer  string    `json:"consumer"`
	Scopes    []string  `json:"scopes"`
	ExpiresAt time.Time `json:"expires_at"`
}

// sessionRecord is a session as stored.
type sessionRecord struct {
	Consumer  string    `json:"consumer"`
	Scopes    []string  `json:"scopes"`
	CSRF      string    `json:"csrf"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *sessionRecord) has(scope string) bool {
	if scope == "" {
		return true
	}
	for _, x := range s.Scopes {
		if x == scope {
			return true
		}
	}
	return false
}

// decodeLink reads a stored link; a record that is not one is an error.
func decodeLink(b []byte) (linkRecord, error) {
	var l linkRecord
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("portal link record: %w", err)
	}
	if l.Consumer == "" || l.ExpiresAt.IsZero() {
		return l, fmt.Errorf("portal link record: no consumer or expiry")
	}
	if err := checkScopes(l.Scopes); err != nil {
		return l, fmt.Errorf("portal link record: %w", err)
	}
	return l, nil
}

// decodeSession reads a stored session; a record that is not one is an
// error.
func decodeSession(b []byte) (sessionRecord, error) {
	var s sessionRecord
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("portal session record: %w", err)
	}
	if s.Consumer == "" || s.ExpiresAt.IsZero() || !validToken(s.CSRF) {
		return s, fmt.Errorf("portal session record: no consumer, expiry or CSRF token")
	}
	if err := checkScopes(s.Scopes); err != nil {
		return s, fmt.Errorf("portal session record: %w", err)
	}
	return s, nil
}

// checkScopes accepts known scopes, each once.
func checkScopes(scopes []string) error {
	seen := map[string]bool{}
	for _, s := range scopes {
		switch s {
		case ScopeUsage, ScopeKeys, ScopePlan:
		default:
			return fmt.Errorf("%w: unknown scope %q: want usage, keys or plan", ErrInvalid, s)
		}
		if seen[s] {
			return fmt.Errorf("%w: scope %q given twice", ErrInvalid, s)
		}
		seen[s] = true
	}
	return nil
}
