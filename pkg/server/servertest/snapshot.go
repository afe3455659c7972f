package servertest

import (
	"regexp"
	"testing"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/server"
)

// keyName is a placeholder for an API key in a config text: KEY_PRO,
// KEY_PRO2.
var keyName = regexp.MustCompile(`\bKEY_[A-Z0-9_]+\b`)

// WithKeys is text with a fresh API key in place of each KEY_ name, the
// same key for every use of a name, and the keys by name: a config whose
// consumers' keys a test can send.
func WithKeys(t testing.TB, text string) (string, map[string]string) {
	t.Helper()
	keys := map[string]string{}
	text = keyName.ReplaceAllStringFunc(text, func(name string) string {
		if k, ok := keys[name]; ok {
			return k
		}
		k, err := apikey.Generate("levy_test")
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = k
		return k
	})
	return text, keys
}

// Snapshot is the ext_authz snapshot levy serve builds from config text,
// parsed and validated as levy serve does, without demo consumers or a
// run-time store: for a test of the ext_authz server alone.
func Snapshot(t testing.TB, text string) *authz.Snapshot {
	t.Helper()
	cfg, err := config.Parse([]byte(text), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	snap, err := server.AuthzSnapshot(cfg, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}
