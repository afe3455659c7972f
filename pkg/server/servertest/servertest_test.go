package servertest_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const demoConfig = "demo: true\nplans: {free: {model: freemium, rate: {requests: 1, per: 1h}, quota: {requests: 10, period: month}}}\n"

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "levy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A levy started in the test serves on loopback ports, prints its demo
// keys, logs as levy serve does and stops cleanly, leaving no goroutine.
func TestStartServesUntilStop(t *testing.T) {
	l := servertest.Start(t, writeConfig(t, demoConfig), servertest.Options{})
	if !strings.HasPrefix(l.GRPCAddr, "127.0.0.1:") || !strings.HasPrefix(l.HTTPAddr, "127.0.0.1:") {
		t.Fatalf("listening on %s and %s, want loopback", l.GRPCAddr, l.HTTPAddr)
	}
	await.Until(t, 10*time.Second, func() bool {
		resp, err := http.Get("http://" + l.HTTPAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "/readyz to answer 200")
	if key := l.DemoKey("free"); apikey.Check(key) != nil {
		t.Errorf("demo key of plan free: %q", key)
	}
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	if log := l.Log(); !strings.Contains(log, `"msg":"levy serving"`) || !strings.Contains(log, `"msg":"levy stopped"`) {
		t.Errorf("log lacks the serving and stopped lines:\n%s", log)
	}
}

// Flags override the file, as levy serve's flags do.
func TestFlagsOverrideTheFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "elsewhere")
	l := servertest.Start(t, writeConfig(t, demoConfig), servertest.Options{Flags: func(c *config.Config) { c.Store.DataDir = dir }})
	if err := l.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "levy.db")); err != nil {
		t.Fatalf("the data dir the flags set holds no store: %v", err)
	}
}

// WithKeys gives each KEY_ name its own fresh key, the same at every use
// (KEY_PRO2 is not KEY_PRO followed by 2), and Snapshot serves the text.
func TestWithKeysNamesEachKeyOnce(t *testing.T) {
	text, keys := servertest.WithKeys(t, `dev_mode: true
plans: {pro: {model: tiered}}
consumers:
  - {id: a, plan: pro, keys: [{id: a1, key: KEY_PRO}, {id: a2, key: KEY_PRO2}]}
  - {id: b, plan: pro, keys: [{id: b1, key: KEY_B}]}
# KEY_PRO again
`)
	if len(keys) != 3 || keys["KEY_PRO"] == keys["KEY_PRO2"] || strings.Contains(text, "KEY_PRO2") {
		t.Fatalf("keys %v in\n%s", keys, text)
	}
	for name, key := range keys {
		if apikey.Check(key) != nil {
			t.Errorf("%s: %q is no API key", name, key)
		}
	}
	if n := strings.Count(text, keys["KEY_PRO"]); n != 2 {
		t.Errorf("KEY_PRO's key appears %d times, want 2 (each use)", n)
	}
	if _, ok := servertest.Snapshot(t, text).Directory.Consumer("b"); !ok {
		t.Error("the snapshot has no consumer b")
	}
}
