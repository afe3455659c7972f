package console

import (
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/admin"
)

// A session cookie is bytes from outside: any value is refused or
// accepted without a panic, and one accepted stops being so when any
// byte of its signature changes (mint's values are random, so the seed
// is another process's: the property cannot be "equals the seed").
func FuzzSessionCookie(f *testing.F) {
	s := newSigner("token")
	now := time.Unix(1_800_000_000, 0)
	good, err := s.mint(now.Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add("")
	f.Add(".")
	f.Add(strings.Repeat("A", 32) + "." + strings.Repeat("B", 43))
	f.Fuzz(func(t *testing.T, v string) {
		if _, ok := s.check(v, now); !ok {
			return
		}
		dot := strings.IndexByte(v, '.')
		for i := dot + 1; i < len(v); i++ {
			b := []byte(v)
			b[i] ^= 1
			if _, ok := s.check(string(b), now); ok {
				t.Fatalf("%q is accepted, and so is %q", v, b)
			}
		}
	})
}

// An export's query is bytes from outside: parsing it never panics, and
// what it accepts is a month, a label key and a known format.
func FuzzExportQuery(f *testing.F) {
	f.Add("2026-11", "label:team", "csv")
	f.Add("", "team", "")
	f.Add("2026-13", "Team!", "xml")
	f.Fuzz(func(t *testing.T, period, by, format string) {
		q, fm, err := admin.ParseExportQuery(period, by, format)
		if err == nil && (q.Label == "" || fm != admin.FormatCSV && fm != admin.FormatJSON) {
			t.Fatalf("accepted %q %q %q as %+v %q", period, by, format, q, fm)
		}
	})
}
