// Package compat finds envoyproxy/ratelimit's own config fixtures, which
// the workplace keeps beside the repository (shared/compat/), for levy's
// compatibility tests. They are an extra check: levy's own fixtures
// (pkg/rls/testdata) cover the same behaviours in every clone.
package compat

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// ReportEnv names a file that test binaries append their skip counts to
// ("N package" lines), so that `make test`, whose go test shows nothing of
// a package that passed, can say how many compat tests did not run.
const ReportEnv = "LEVY_COMPAT_REPORT"

// skipped counts the tests of this test binary that Dir skipped.
var skipped atomic.Int64

// Wrap returns m, whose Run also reports the tests Dir skipped: a line on
// stderr (shown by go test -v, or for one package) and one in $ReportEnv's
// file. Use it in TestMain: os.Exit(compat.Wrap(m).Run()), or
// goleak.VerifyTestMain(compat.Wrap(m)).
func Wrap(m interface{ Run() int }) interface{ Run() int } { return wrapped{m} }

type wrapped struct{ m interface{ Run() int } }

func (w wrapped) Run() int {
	code := w.m.Run()
	n := skipped.Load()
	if n == 0 {
		return code
	}
	fmt.Fprintf(os.Stderr, "envoyproxy/ratelimit fixtures not found: skipped %d compat tests (set LEVY_COMPAT_DIR)\n", n)
	if path := os.Getenv(ReportEnv); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			wd, _ := os.Getwd()
			fmt.Fprintf(f, "%d %s\n", n, filepath.Base(wd))
			f.Close()
		}
	}
	return code
}

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
			skipped.Add(1)
			t.Skipf("skipped: envoyproxy/ratelimit's fixtures are not beside this clone (no shared/compat/envoyproxy-ratelimit above %s); set LEVY_COMPAT_DIR to run this check too (levy's own, pkg/rls/testdata, ran)", wd)
			return ""
		}
	}
}
