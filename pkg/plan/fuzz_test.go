package plan

import "testing"

// A price from a config file reads back as written: what String writes
// parses to the same amount, and no text panics.
func FuzzParseAmount(f *testing.F) {
	for _, s := range []string{"49", "49.00", "0.0005", "1000000", "1e3", "-1", ".5", "0.0000001", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAmount(s)
		if err != nil {
			return
		}
		if a < 0 || a > MaxAmount {
			t.Fatalf("ParseAmount(%q) = %d, out of range", s, a)
		}
		back, err := ParseAmount(a.String())
		if err != nil || back != a {
			t.Fatalf("ParseAmount(%q) = %d, written %q, read back %d, %v", s, a, a.String(), back, err)
		}
		for _, c := range []Currency{"USD", "JPY", "KWD"} {
			if got := c.FormatAmount(a); got == "" {
				t.Fatalf("%s FormatAmount(%d) is empty", c, a)
			}
		}
	})
}
