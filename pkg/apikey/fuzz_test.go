package apikey

import (
	"strings"
	"testing"
)

// FuzzCheck reads API keys as Envoy hands them over: any header value.
// Check accepts exactly the keys Generate makes (and their prefixes), and
// hashing any value is safe.
func FuzzCheck(f *testing.F) {
	key, err := Generate("lv_test")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(key)
	f.Add("")
	f.Add("_")
	f.Add(strings.Repeat("a", MaxLen+1))
	f.Add("lv_\x00\xff" + key[len(key)-bodyLen:])
	h := NewHasher([]byte("secret"))
	f.Fuzz(func(t *testing.T, s string) {
		if Check(s) == nil {
			if len(s) > MaxLen || s[len(s)-bodyLen-1] != '_' {
				t.Fatalf("Check accepted %q", s)
			}
		}
		if hash := h.Hash(s); !IsHash(hash) || IDFromHash(hash) == "" {
			t.Fatalf("Hash(%q) = %q: not a hash", s, hash)
		}
	})
}
