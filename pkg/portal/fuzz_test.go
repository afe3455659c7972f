package portal

import (
	"strings"
	"testing"
)

// FuzzTokenAndRecords reads what comes from outside: a link token from a
// URL, a session id from a cookie, and a record from the store. Garbage
// is refused, never a panic; a token accepted has exactly one spelling.
func FuzzTokenAndRecords(f *testing.F) {
	tok, err := newToken()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add("")
	f.Add(strings.Repeat("A", tokenLen))
	f.Add(strings.Repeat("A", tokenLen-1) + "B")
	f.Add(`{"consumer":"a","scopes":["keys"],"csrf":"` + tok + `","expires_at":"2026-01-01T00:00:00Z"}`)
	f.Add(`{"consumer":"a","scopes":["admin"],"expires_at":"2026-01-01T00:00:00Z"}`)
	f.Fuzz(func(t *testing.T, s string) {
		if validToken(s) {
			if len(s) != tokenLen || tokenHash(s) == tokenHash(s+"x") {
				t.Fatalf("validToken accepted %q", s)
			}
		}
		if l, err := decodeLink([]byte(s)); err == nil && (l.Consumer == "" || checkScopes(l.Scopes) != nil) {
			t.Fatalf("decodeLink accepted %q", s)
		}
		if r, err := decodeSession([]byte(s)); err == nil && (r.Consumer == "" || !validToken(r.CSRF)) {
			t.Fatalf("decodeSession accepted %q", s)
		}
	})
}
