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
// that has one. They are an extra check where they are present (.ci/run
// sets LEVY_COMPAT_DIR when it finds them), never something a user's
// clone needs: without them the test is skipped, saying so. A
// LEVY_COMPAT_DIR that is not a directory fails the test: a check that was
// asked for must not pass by not running.
func Dir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("LEVY_COMPAT_DIR"); d != "" {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			t.Fatalf("LEVY_COMPAT_DIR=%s is not a directory of envoyproxy/ratelimit's fixtures", d)
		}
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
			t.Skipf("skipped: envoyproxy/ratelimit's fixtures are not beside this clone (no shared/compat/envoyproxy-ratelimit above %s); set LEVY_COMPAT_DIR to run this check", wd)
			return ""
		}
	}
}
