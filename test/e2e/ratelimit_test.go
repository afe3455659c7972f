package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/test/compat"
)

func rlClient(t *testing.T, p *proc, domain string) *envoyclient.RateLimitClient {
	t.Helper()
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return envoyclient.NewRateLimitClient(conn, envoyclient.RateLimitConfig{Domain: domain, Timeout: 5 * time.Second})
}

func limited(t *testing.T, c *envoyclient.RateLimitClient, kv ...string) bool {
	t.Helper()
	var desc envoyclient.Descriptor
	for i := 0; i+1 < len(kv); i += 2 {
		desc.Entries = append(desc.Entries, [2]string{kv[i], kv[i+1]})
	}
	o, err := c.ShouldRateLimit(context.Background(), []envoyclient.Descriptor{desc}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if o.RPCError != nil {
		t.Fatalf("RPC error: %v", o.RPCError)
	}
	return o.Limited
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}

// levyFixtures is pkg/rls/testdata/<dir>: levy's own rule files, in every
// clone.
func levyFixtures(dir string) func(*testing.T) string {
	return func(*testing.T) string { return filepath.Join("..", "..", "pkg", "rls", "testdata", dir) }
}

// upstreamFixtures is envoyproxy/ratelimit's <dir>, when its fixtures are
// beside the clone (the test is skipped, and counted, when not).
func upstreamFixtures(dir string) func(*testing.T) string {
	return func(t *testing.T) string { return filepath.Join(compat.Dir(t), dir) }
}

// A runtime directory of rule files serves as levy's --ratelimit-dir, and
// rule edits apply without a restart: levy's own, and envoyproxy/
// ratelimit's integration-runtime directory as it is.
func TestRatelimitDirServesRulesAndReloads(t *testing.T) {
	tests := []struct {
		name            string
		dir             func(*testing.T) string
		files           []string
		domain, key     string // a rule of one a minute
		other, otherKey string // a rule of another file's domain
	}{
		{"levy", levyFixtures("runtime"), []string{"counter.yaml", "second.yaml"}, "runtime", "one_a_minute", "second", "job"},
		{"envoyproxy-ratelimit", upstreamFixtures("integration-runtime"), []string{"basic.yaml", "another.yaml"}, "basic", "one_per_minute", "another", "key4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.dir(t)
			dir := t.TempDir()
			rules := filepath.Join(dir, "rules")
			if err := os.Mkdir(rules, 0o750); err != nil {
				t.Fatal(err)
			}
			for _, f := range tt.files {
				copyFile(t, filepath.Join(src, f), filepath.Join(rules, f))
			}
			p := serve(t, "--demo", "--data-dir", filepath.Join(dir, "data"), "--ratelimit-dir", rules)
			c := rlClient(t, p, tt.domain)
			if limited(t, c, tt.key, "x") || !limited(t, c, tt.key, "x") {
				t.Fatalf("%s does not allow exactly one", tt.key)
			}
			if limited(t, rlClient(t, p, tt.other), tt.otherKey, "a") {
				t.Fatalf("%s/%s limited on its first hit", tt.other, tt.otherKey)
			}

			// Edit: the one-a-minute rule becomes unlimited.
			file := filepath.Join(rules, tt.files[0])
			rule := "  - key: " + tt.key + "\n    rate_limit:\n      unit: minute\n      requests_per_unit: 1"
			text := mustRead(t, file)
			if !strings.Contains(text, rule) {
				t.Fatalf("%s does not write %s as this test edits it", tt.files[0], tt.key)
			}
			writeFile(t, file, strings.Replace(text, rule, "  - key: "+tt.key+"\n    rate_limit:\n      unlimited: true", 1))
			waitFor(t, 3*time.Second, func() bool { return !limited(t, c, tt.key, "x") })

			// A bad file keeps the rules in force and says where the error is.
			writeFile(t, filepath.Join(rules, "broken.yaml"), "domain: broken\ndescriptors:\n  - key: k\n    ratelimit: {unit: second}\n")
			waitFor(t, 5*time.Second, func() bool {
				return strings.Contains(p.stderr.String(), "broken.yaml:4: config error, unknown key 'ratelimit'")
			})
			if limited(t, c, tt.key, "x") {
				t.Fatal("a bad file changed the rules in force")
			}
			body := p.metrics(t)
			if !strings.Contains(body, `levy_config_reloads_total{result="failure"} `) || strings.Contains(body, `levy_config_reloads_total{result="failure"} 0`+"\n") ||
				!strings.Contains(body, "levy_config_last_reload_successful 0") {
				t.Fatalf("metrics do not show the failed reload:\n%s", body)
			}
		})
	}
}

// A rule file with one key and value twice (as upstream's own
// duplicate_key fixture has) refuses to start, naming file and line. The
// file is written here, so that the check runs in every clone.
func TestBadRuleFileRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "dup.yaml"), "domain: api\ndescriptors:\n  - key: plan\n    value: pro\n\n  - key: plan\n    value: pro\n")
	out, err := runLevy("serve", "--demo", "--data-dir", filepath.Join(dir, "data"), "--ratelimit-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	if err == nil || !strings.Contains(out, "dup.yaml:6: duplicate descriptor composite key 'api.plan_pro'") {
		t.Fatalf("err %v, output:\n%s", err, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// call sends descriptors (each key, value, ...) as Envoy would.
func call(t *testing.T, c *envoyclient.RateLimitClient, descs ...[]string) *envoyclient.RateLimitOutcome {
	t.Helper()
	var ds []envoyclient.Descriptor
	for _, kv := range descs {
		var desc envoyclient.Descriptor
		for i := 0; i+1 < len(kv); i += 2 {
			desc.Entries = append(desc.Entries, [2]string{kv[i], kv[i+1]})
		}
		ds = append(ds, desc)
	}
	o, err := c.ShouldRateLimit(context.Background(), ds, 0)
	if err != nil {
		t.Fatal(err)
	}
	if o.RPCError != nil {
		t.Fatalf("RPC error: %v", o.RPCError)
	}
	return o
}

// exampleRules is a rule file of two quota-mode services (one and two a
// minute) whose metadata names them, a plain rule and a detailed_metric
// rule: levy's own, and envoyproxy/ratelimit's example as it is.
type exampleRules struct {
	name   string
	dir    func(*testing.T) string
	file   string
	domain string
	// svc1 and svc2 are the service values of one and two a minute.
	svc1, svc2 string
	plain      string // a rule's key without metadata
	// detailed is a detailed_metric rule's key and a value, and label
	// the rule label levy gives them.
	detailed, value, label string
}

var examples = []exampleRules{
	{"levy", levyFixtures("example"), "services.yaml", "gateway", "search", "upload", "plain", "tenant", "t-42", "gateway.tenant_t-42"},
	{"envoyproxy-ratelimit", upstreamFixtures("examples"), "example.yaml", "rl", "service_1", "service_2", "foo", "unspec", "some-value", "rl.unspec_some-value"},
}

// serveExample serves ex's rule file through a levy.yaml with extra
// ratelimit settings.
func serveExample(t *testing.T, ex exampleRules, settings string) *proc {
	t.Helper()
	src := ex.dir(t)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	if err := os.Mkdir(rules, 0o750); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(src, ex.file), filepath.Join(rules, ex.file))
	cfg := writeConfig(t, dir, "plans:\n  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}\n"+
		"ratelimit:\n  dir: "+rules+"\n"+settings)
	return serveInProcess(t, cfg, nil)
}

// Quota-mode budgets route on descriptor metadata (envoyproxy/ratelimit's
// example Envoy config reads metadata.service_with_quota.name into a
// header that picks the cluster); levy returns it without a switch, and
// with ratelimit.response_dynamic_metadata the request's descriptors in
// every response. A detailed_metric rule is labelled with the value.
func TestExampleMetadataAndDetailedMetric(t *testing.T) {
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			p := serveExample(t, ex, "  response_dynamic_metadata: true\n")
			c := rlClient(t, p, ex.domain)
			o := call(t, c, []string{"service", ex.svc1}, []string{"service", ex.svc2})
			name := o.DynamicMetadata.GetFields()["metadata"].GetStructValue().GetFields()["service_with_quota"].GetStructValue().GetFields()["name"].GetStringValue()
			if o.Limited || name != ex.svc1 {
				t.Fatalf("limited %v, service_with_quota.name %q; want %s", o.Limited, name, ex.svc1)
			}
			o = call(t, c, []string{ex.plain, "x"})
			md := o.DynamicMetadata.GetFields()
			if md["domain"].GetStringValue() != ex.domain || len(md["descriptors"].GetListValue().GetValues()) != 1 || md["metadata"] != nil {
				t.Fatalf("dynamic metadata with the switch on: %v", o.DynamicMetadata)
			}
			call(t, c, []string{ex.detailed, ex.value})
			if body := p.metrics(t); !strings.Contains(body, `levy_ratelimit_rule_hits_total{result="total_hits",rule="`+ex.label+`"} 1`) {
				t.Fatalf("no detailed_metric label in:\n%s", grepLines(body, "rule_hits"))
			}
		})
	}
}

// envoyproxy/ratelimit's integration-test/scripts/quota.sh against levy:
// two quota_mode services of 1 and 2 a minute; the third request finds
// both over, and only then is it denied.
func TestQuotaScript(t *testing.T) {
	for _, ex := range examples {
		t.Run(ex.name, func(t *testing.T) {
			p := serveExample(t, ex, "")
			c := rlClient(t, p, ex.domain)
			for i, want := range []string{"OK,OK", "OVER_LIMIT,OK", "OVER_LIMIT,OVER_LIMIT"} {
				o := call(t, c, []string{"service", ex.svc1}, []string{"service", ex.svc2})
				var codes []string
				for _, s := range o.Response.Statuses {
					codes = append(codes, s.Code.String())
				}
				if got := strings.Join(codes, ","); got != want || o.Limited != (i == 2) {
					t.Fatalf("request %d: %s, limited %v; want %s", i+1, got, o.Limited, want)
				}
			}
		})
	}
}
