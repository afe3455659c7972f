package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/test/compat"
)

// The admin commands call levy where LEVY_HTTP_ADDR says it listens, as
// levy serve reads the same variable: no --admin-url needed beside it.
func TestAdminCommandsFindLevyAtLEVY_HTTP_ADDR(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Method + " " + r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"id":"acme","plan":"pro","status":"active"}`))
	}))
	t.Cleanup(srv.Close)
	t.Setenv("LEVY_HTTP_ADDR", strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("LEVY_ADMIN_TOKEN", "t")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"consumers", "get", "acme"}, &out, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got != "GET /v1/consumers/acme" || !strings.Contains(out.String(), "plan:   pro") {
		t.Fatalf("levy saw %q; output:\n%s", got, out.String())
	}
}

func TestDialAddrReachesAWildcardListenerOnLoopback(t *testing.T) {
	tests := []struct{ give, want string }{
		{"", "127.0.0.1:8081"},
		{":9000", "127.0.0.1:9000"},
		{"0.0.0.0:9000", "127.0.0.1:9000"},
		{"[::]:9000", "127.0.0.1:9000"},
		{"10.1.2.3:9000", "10.1.2.3:9000"},
		{"levy.svc:8081", "levy.svc:8081"},
	}
	for _, tt := range tests {
		if got := dialAddr(tt.give, "127.0.0.1:8081"); got != tt.want {
			t.Errorf("dialAddr(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

// keys generate labels the hash by what it is, and the line it prints for
// the config makes levy accept the key, with and without a hash secret.
func TestKeysGenerateLabelsTheHashAndTheConfigAcceptsIt(t *testing.T) {
	t.Setenv("LEVY_TEST_PEPPER", "pepper")
	tests := []struct {
		name      string
		args      []string
		wantLabel string
		head      string
	}{
		{"sha256", nil, "sha256:", ""},
		{"hmac", []string{"--hash-secret", "env:LEVY_TEST_PEPPER"}, "hmac-sha256:", "keys: {hash_secret: env:LEVY_TEST_PEPPER}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := run(context.Background(), append([]string{"keys", "generate"}, tt.args...), &out, &out); err != nil {
				t.Fatal(err)
			}
			fields := map[string]string{}
			for line := range strings.Lines(out.String()) {
				label, value, _ := strings.Cut(line, " ")
				fields[label] = strings.TrimSpace(value)
			}
			key, hash := fields["key:"], fields[tt.wantLabel]
			if key == "" || hash == "" {
				t.Fatalf("no key or %s line:\n%s", tt.wantLabel, out.String())
			}
			if tt.wantLabel != "sha256:" && fields["sha256:"] != "" {
				t.Fatalf("an HMAC labelled sha256:\n%s", out.String())
			}
			entry, _, _ := strings.Cut(fields["config:"], "  #")
			cfg, err := config.Parse([]byte(tt.head+"plans: {free: {model: tiered}}\nconsumers: [{id: acme, plan: free, keys: ["+entry+"]}]\n"), "levy.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			if _, keys := cfg.Directory(); len(keys) != 1 || keys[0].Hash != cfg.Hasher().Hash(key) {
				t.Fatalf("levy would not accept the key with %q", entry)
			}
		})
	}
}

// Every command levy has, shell completion included, is in the README's
// Commands table, so a user who reads it finds them all.
func TestEveryCommandIsInTheREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(readme), "## Commands")
	table, _, _ = strings.Cut(table, "\n## ")
	root := rootCmd()
	root.InitDefaultCompletionCmd()
	var names []string
	for _, c := range root.Commands() {
		names = append(names, c.Name())
		if c.Name() != "help" && !strings.Contains(table, "`levy "+c.Name()) {
			t.Errorf("levy %s is not in the README's Commands table", c.Name())
		}
	}
	if !slices.Contains(names, "completion") {
		t.Fatalf("no completion command among %v", names)
	}
}

func TestMain(m *testing.M) { os.Exit(compat.Wrap(m).Run()) }
