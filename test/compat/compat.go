// Package compat finds envoyproxy/ratelimit's own config fixtures, which
// the workplace keeps beside the repository (shared/compat/), for levy's
// compatibility tests.
package compat

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir returns the envoyproxy-ratelimit fixture directory: $LEVY_COMPAT_DIR,
// or shared/compat/envoyproxy-ratelimit in the nearest parent directory
// that has one. It fails the test when there is none: the compatibility
// tests must not pass by not running.
func Dir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("LEVY_COMPAT_DIR"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		candidate := filepath.Join(dir, "shared", "compat", "envoyproxy-ratelimit")
		if st, err := os.Stat(candidate); err == nil && st.IsDir() {
			return candidate
		}
		if filepath.Dir(dir) == dir {
			t.Fatalf("no shared/compat/envoyproxy-ratelimit above %s: set LEVY_COMPAT_DIR to envoyproxy/ratelimit's fixtures", wd)
			return ""
		}
	}
}
