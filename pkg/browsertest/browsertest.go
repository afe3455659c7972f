// Package browsertest finds the Chromium that levy's page tests drive
// (the developer portal's and the operator console's), or skips them.
package browsertest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// RequireEnv set to "require" makes a missing browser a failure, not a
// skip (.ci/run sets it after installing Debian's chromium).
const RequireEnv = "LEVY_BROWSER_TEST"

// PathEnv names the browser to use instead of looking for one.
const PathEnv = "LEVY_CHROMIUM"

// ReportEnv names a file a skipped test appends "1" to, so that make test
// can say how many page tests did not run.
const ReportEnv = "LEVY_BROWSER_REPORT"

// names are where Debian, Ubuntu, Fedora and Google ship the browser.
var names = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// Chromium is the path of the browser to drive: $LEVY_CHROMIUM, else the
// first of chromium, chromium-browser, google-chrome on $PATH. Without
// one the test is skipped (and counted in $LEVY_BROWSER_REPORT), or fails
// with LEVY_BROWSER_TEST=require.
func Chromium(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(PathEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", PathEnv, p, err)
		}
		return p
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv(RequireEnv) == "require" {
		t.Fatalf("no Chromium on $PATH and %s=require: apt-get install chromium (or set %s)", RequireEnv, PathEnv)
	}
	if path := os.Getenv(ReportEnv); path != "" {
		if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(f, 1)
			f.Close()
		}
	}
	t.Skipf("no Chromium on $PATH (apt-get install chromium, or set %s; %s=require makes this a failure)", PathEnv, RequireEnv)
	return ""
}
