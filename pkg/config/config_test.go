package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// Every failure mode has a fixture; its error names the file, the line and
// the key.
func TestLoadRejectsBadFilesNamingFileLineAndKey(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"unknown_key.yaml", []string{"unknown_key.yaml:4:", `unknown key "plans.free.ratelimit"`}},
		{"unknown_top_key.yaml", []string{"unknown_top_key.yaml:3:", `unknown key "listen.htp"`}},
		{"bad_yaml.yaml", []string{"bad_yaml.yaml:3:", "invalid YAML"}},
		{"bad_duration.yaml", []string{"bad_duration.yaml:4:", `invalid duration "fortnight"`}},
		{"wrong_type.yaml", []string{"wrong_type.yaml:5:", "plans.free.rate.requests", "lots"}},
		{"unknown_model.yaml", []string{"unknown_model.yaml:3:", "plans.gold.model", `"premium" is not one of tiered, payg, freemium`}},
		{"unknown_plan_ref.yaml", []string{"unknown_plan_ref.yaml:6:", "consumers[0].plan", `unknown plan "enterprise"`}},
		{"plaintext_key_without_dev_mode.yaml", []string{"plaintext_key_without_dev_mode.yaml:7:", "consumers[0].keys[0].key", "dev_mode"}},
		{"bad_hash.yaml", []string{"bad_hash.yaml:7:", "consumers[0].keys[0].sha256", "64 lower-case hex"}},
		{"duplicate_consumer.yaml", []string{"duplicate_consumer.yaml:6:", "consumers[1].id", `duplicate consumer "acme"`}},
		{"freemium_soft_quota.yaml", []string{"freemium_soft_quota.yaml:5:", "plans.free.quota.enforcement", "hard"}},
		{"cap_on_hard_quota.yaml", []string{"cap_on_hard_quota.yaml:4:", "plans.pro.quota.cap"}},
		{"bad_period.yaml", []string{"bad_period.yaml:4:", "plans.pro.quota.period", "fortnight"}},
		{"no_plans.yaml", []string{"no_plans.yaml", "plans", "at least one plan"}},
		{"bad_listen.yaml", []string{"bad_listen.yaml:2:", "listen.grpc", "host:port"}},
		{"inline_secret.yaml", []string{"inline_secret.yaml:2:", "env:NAME or file:/path"}},
		{"two_documents.yaml", []string{"two_documents.yaml:3:", "one YAML document"}},
		{"bad_store_type.yaml", []string{"bad_store_type.yaml:2:", "store.type", "local, redis"}},
		{"negative_max_counters.yaml", []string{"negative_max_counters.yaml:2:", "store.max_counters", "negative"}},
		{"uppercase_key_header.yaml", []string{"uppercase_key_header.yaml:2:", "keys.headers[0]", "lower-case"}},
		{"bad_cost.yaml", []string{"bad_cost.yaml:5:", "plans.pro.costs.v1/search", "path prefix"}},
		{"malformed_dev_key.yaml", []string{"malformed_dev_key.yaml:8:", "consumers[0].keys[0].key", "well-formed"}},
		{"limit_too_large.yaml", []string{"limit_too_large.yaml:4:", "plans.pro.quota", "1099511627776"}},
		{"bad_near_limit_ratio.yaml", []string{"bad_near_limit_ratio.yaml:2:", "ratelimit.near_limit_ratio", "at most 1"}},
		{"bad_alert_threshold.yaml", []string{"bad_alert_threshold.yaml:5:", `invalid alert threshold "lots"`, "80%"}},
		{"alerts_without_quota.yaml", []string{"alerts_without_quota.yaml:5:", "plans.pro.alerts", "no quota or spend cap"}},
		{"alerts_without_secret.yaml", []string{"alerts_without_secret.yaml:1:", "alerts.secret", "LEVY_ALERTS_SECRET"}},
		{"bad_price.yaml", []string{"bad_price.yaml:6:", `price "$49"`, "decimal number such as 49, 49.00"}},
		{"bad_currency.yaml", []string{"bad_currency.yaml:4:", "plans.pro.pricing.currency", "ISO 4217"}},
		{"price_too_precise.yaml", []string{"price_too_precise.yaml:6:", "plans.pro.pricing.fixed", "JPY prices have no decimals"}},
		{"per_1k_on_hard_quota.yaml", []string{"per_1k_on_hard_quota.yaml:8:", "plans.pro.pricing.per_1k", "soft quota"}},
		{"priced_freemium.yaml", []string{"priced_freemium.yaml:6:", "plans.free.pricing", "freemium plan is free"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", tt.file))
			if err == nil {
				t.Fatal("loaded without error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// Every fixture under testdata is in the table above, or is the valid base.
func TestEveryFixtureIsCovered(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.yaml")
	if len(files) < 20 {
		t.Fatalf("only %d fixtures", len(files))
	}
	for _, f := range files {
		if _, err := Load(f); err == nil && filepath.Base(f) != "base.yaml" {
			t.Errorf("%s loads without error but is not the valid base", f)
		}
	}
}

func TestBaseConfigBuildsCatalogAndDirectory(t *testing.T) {
	c, err := Load("testdata/base.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := c.Catalog()
	if err != nil {
		t.Fatal(err)
	}
	p, ok := cat.Get("free")
	if !ok || p.Rate.Per != time.Minute || p.Rate.Burst != 5 || p.Quota.Enforcement != plan.Hard || p.Quota.Period != plan.Month {
		t.Fatalf("plan free = %+v %+v %+v", p, p.Rate, p.Quota)
	}
	consumers, keys := c.Directory()
	if len(consumers) != 1 || len(keys) != 1 || keys[0].ConsumerID != "acme" || keys[0].ID != "key_5a1a84de8c2ec09b" {
		t.Fatalf("directory = %+v %+v", consumers, keys)
	}
	// The defaults that were not in the file.
	if c.Listen.GRPC != "127.0.0.1:8081" || c.Keys.Headers[0] != "x-api-key" || !c.Keys.BearerEnabled() {
		t.Fatalf("defaults lost: %+v %+v", c.Listen, c.Keys)
	}
}

func TestExampleConfigLoads(t *testing.T) {
	c, err := Load("../../examples/levy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := c.Catalog()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]plan.Model{"free": plan.Freemium, "pro": plan.Tiered, "payg": plan.PayG}
	for name, model := range want {
		if p, ok := cat.Get(name); !ok || p.Model != model {
			t.Errorf("plan %s: %+v, want model %s", name, p, model)
		}
	}
	payg, _ := cat.Get("payg")
	if payg.Quota.Enforcement != plan.Soft || payg.Quota.Cap == 0 {
		t.Errorf("payg quota %+v, want soft with a cap", payg.Quota)
	}
	if pro, _ := cat.Get("pro"); pro.Pricing == nil || *pro.Pricing != (plan.Pricing{Currency: "USD", Fixed: 49_000_000}) ||
		payg.Pricing == nil || *payg.Pricing != (plan.Pricing{Currency: "USD", Per1K: 500_000}) {
		t.Errorf("pricing: pro %+v, payg %+v", pro.Pricing, payg.Pricing)
	}
	// Copied to start a real config, it prints no keys: the demo
	// consumers come from --demo (make run passes it).
	if c.Demo {
		t.Error("examples/levy.yaml turns the demo on")
	}
}

func TestEnvironmentOverridesFileAndDefaults(t *testing.T) {
	c, err := Parse([]byte("listen: {grpc: 127.0.0.1:1}\nplans: {free: {model: tiered}}\n"), "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"LEVY_GRPC_ADDR": "127.0.0.1:2", "LEVY_DATA_DIR": "/tmp/d", "LEVY_LOG_LEVEL": ""}
	c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if c.Listen.GRPC != "127.0.0.1:2" || c.Store.DataDir != "/tmp/d" || c.Log.Level != "info" {
		t.Fatalf("after env: %+v %+v %+v", c.Listen, c.Store, c.Log)
	}
}

func TestSecretsResolveFromEnvAndFileAndNeverPrint(t *testing.T) {
	t.Setenv("LEVY_TEST_SECRET", "s3cret")
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{"env:LEVY_TEST_SECRET": "s3cret", "file:" + path: "from-file"} {
		var s Secret
		if err := s.Set(ref); err != nil {
			t.Fatal(err)
		}
		if s.Value() != want {
			t.Errorf("%s resolved to %q, want %q", ref, s.Value(), want)
		}
		if strings.Contains(s.String(), want) {
			t.Errorf("String() = %q leaks the secret", s.String())
		}
	}
	var missing Secret
	if err := missing.Set("env:LEVY_TEST_NOT_SET"); err == nil {
		t.Error("an unset variable resolved")
	}
}

// A bad value from a LEVY_* variable is blamed on the variable, not on the
// file's line for the same key: the operator has to fix the environment.
func TestBadEnvironmentValueNamesTheVariable(t *testing.T) {
	c, err := Parse([]byte("store:\n  type: local\n  redis: {addr: 127.0.0.1:6379}\nplans: {free: {model: tiered}}\n"), "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"LEVY_STORE": "bogus", "LEVY_GRPC_ADDR": "nope"}
	c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	err = c.Validate()
	if err == nil {
		t.Fatal("validated")
	}
	for _, want := range []string{`LEVY_STORE: store.type: "bogus" is not one of local, redis`, `LEVY_GRPC_ADDR: listen.grpc: "nope" is not host:port`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "x.yaml:2") {
		t.Errorf("the file's line is blamed for the variable:\n%v", err)
	}
}

// `levy keys generate` prints a hash to write as hash: (an HMAC when
// keys.hash_secret is set); sha256:, its older name, still reads the same.
func TestKeyHashIsReadUnderHashAndItsOlderName(t *testing.T) {
	t.Setenv("LEVY_TEST_HASH_SECRET", "pepper")
	const key = "levy_0123456789abcdefghijklmnopqrstuv"
	for _, tt := range []struct {
		name, secret string
	}{
		{"sha256", ""},
		{"hmac", "pepper"},
	} {
		hash := apikey.NewHasher([]byte(tt.secret)).Hash(key)
		head := "plans: {free: {model: tiered}}\n"
		if tt.secret != "" {
			head += "keys: {hash_secret: env:LEVY_TEST_HASH_SECRET}\n"
		}
		for _, field := range []string{"hash", "sha256"} {
			t.Run(tt.name+"/"+field, func(t *testing.T) {
				c, err := Parse([]byte(head+"consumers: [{id: acme, plan: free, keys: [{"+field+": "+hash+"}]}]\n"), "k.yaml")
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Validate(); err != nil {
					t.Fatal(err)
				}
				_, keys := c.Directory()
				if len(keys) != 1 || keys[0].Hash != c.Hasher().Hash(key) {
					t.Fatalf("keys %+v: the presented key would not match", keys)
				}
			})
		}
	}
	c, err := Parse([]byte("plans: {free: {model: tiered}}\nconsumers: [{id: acme, plan: free, keys: [{hash: "+strings.Repeat("a", 64)+", sha256: "+strings.Repeat("a", 64)+"}]}]\n"), "k.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "give one of hash, sha256") {
		t.Fatalf("hash and sha256 together: %v", err)
	}
}

// A file that repeats one mistake in every consumer gets an error a person
// can read (and a log line of bounded size), still naming file, line and
// key of the first ones.
func TestManyProblemsAreListedUpToALimit(t *testing.T) {
	var f strings.Builder
	f.WriteString("plans:\n  free:\n    model: freemium\nconsumers:\n")
	for i := range 500 {
		fmt.Fprintf(&f, "  - id: c%d\n    plan: free\n    colour: blue\n", i)
	}
	_, err := Parse([]byte(f.String()), "big.yaml")
	if err == nil {
		t.Fatal("Parse: want an error for the unknown keys")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxErrors+1 {
		t.Fatalf("error has %d lines, want %d problems and a summary line", len(lines), maxErrors)
	}
	if want := `big.yaml:7: unknown key "consumers[0].colour"`; lines[0] != want {
		t.Errorf("first line = %q, want %q", lines[0], want)
	}
	if want := fmt.Sprintf("... and %d more problems like these", 500-maxErrors); lines[maxErrors] != want {
		t.Errorf("last line = %q, want %q", lines[maxErrors], want)
	}
}
