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

	"github.com/levyhq/levy/test/compat"
	"github.com/levyhq/levy/test/envoy"
)

func rlClient(t *testing.T, p *proc, domain string) *envoy.RateLimitClient {
	t.Helper()
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return envoy.NewRateLimitClient(conn, envoy.RateLimitConfig{Domain: domain, Timeout: 5 * time.Second})
}

func limited(t *testing.T, c *envoy.RateLimitClient, kv ...string) bool {
	t.Helper()
	var desc envoy.Descriptor
	for i := 0; i+1 < len(kv); i += 2 {
		desc.Entries = append(desc.Entries, [2]string{kv[i], kv[i+1]})
	}
	o, err := c.ShouldRateLimit(context.Background(), []envoy.Descriptor{desc}, 0)
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

// envoyproxy/ratelimit's own runtime directory serves as levy's
// --ratelimit-dir, and rule edits apply without a restart.
func TestRatelimitDirServesUpstreamRulesAndReloads(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	if err := os.Mkdir(rules, 0o750); err != nil {
		t.Fatal(err)
	}
	upstream := filepath.Join(compat.Dir(t), "integration-runtime")
	for _, f := range []string{"basic.yaml", "another.yaml"} {
		copyFile(t, filepath.Join(upstream, f), filepath.Join(rules, f))
	}
	p := serve(t, "--demo", "--data-dir", filepath.Join(dir, "data"), "--ratelimit-dir", rules)
	c := rlClient(t, p, "basic")
	if limited(t, c, "one_per_minute", "x") || !limited(t, c, "one_per_minute", "x") {
		t.Fatal("one_per_minute does not allow exactly one")
	}
	if limited(t, rlClient(t, p, "another"), "key4", "a") {
		t.Fatal("another/key4 limited on its first hit")
	}

	// Edit: one_per_minute becomes unlimited.
	edited := strings.Replace(mustRead(t, filepath.Join(rules, "basic.yaml")), "  - key: one_per_minute\n    rate_limit:\n      unit: minute\n      requests_per_unit: 1", "  - key: one_per_minute\n    rate_limit:\n      unlimited: true", 1)
	writeFile(t, filepath.Join(rules, "basic.yaml"), edited)
	waitFor(t, 3*time.Second, func() bool { return !limited(t, c, "one_per_minute", "x") })

	// A bad file keeps the rules in force and says where the error is.
	writeFile(t, filepath.Join(rules, "broken.yaml"), "domain: broken\ndescriptors:\n  - key: k\n    ratelimit: {unit: second}\n")
	waitFor(t, 5*time.Second, func() bool {
		return strings.Contains(p.stderr.String(), "broken.yaml:4: config error, unknown key 'ratelimit'")
	})
	if limited(t, c, "one_per_minute", "x") {
		t.Fatal("a bad file changed the rules in force")
	}
	body := p.metrics(t)
	if !strings.Contains(body, `levy_config_reloads_total{result="failure"}`) || !strings.Contains(body, "levy_config_last_reload_successful 0") {
		t.Fatalf("metrics do not show the failed reload:\n%s", body)
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
func call(t *testing.T, c *envoy.RateLimitClient, descs ...[]string) *envoy.RateLimitOutcome {
	t.Helper()
	var ds []envoy.Descriptor
	for _, kv := range descs {
		var desc envoy.Descriptor
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

// serveUpstreamExample serves envoyproxy/ratelimit's example rule file
// through a levy.yaml with extra ratelimit settings.
func serveUpstreamExample(t *testing.T, settings string) *proc {
	t.Helper()
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules")
	if err := os.Mkdir(rules, 0o750); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(compat.Dir(t), "examples", "example.yaml"), filepath.Join(rules, "example.yaml"))
	cfg := writeConfig(t, dir, "plans:\n  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}\n"+
		"ratelimit:\n  dir: "+rules+"\n"+settings)
	return serve(t, "--config", cfg, "--data-dir", filepath.Join(dir, "data"))
}

// envoyproxy/ratelimit's example config routes on descriptor metadata
// (its Envoy config reads metadata.service_with_quota.name into a header
// that picks the cluster); levy returns it without a switch, and with
// ratelimit.response_dynamic_metadata the request's descriptors in every
// response. Its detailed_metric rule is labelled with the value.
func TestUpstreamExampleMetadataAndDetailedMetric(t *testing.T) {
	p := serveUpstreamExample(t, "  response_dynamic_metadata: true\n")
	c := rlClient(t, p, "rl")
	o := call(t, c, []string{"service", "service_1"}, []string{"service", "service_2"})
	name := o.DynamicMetadata.GetFields()["metadata"].GetStructValue().GetFields()["service_with_quota"].GetStructValue().GetFields()["name"].GetStringValue()
	if o.Limited || name != "service_1" {
		t.Fatalf("limited %v, service_with_quota.name %q; want service_1", o.Limited, name)
	}
	o = call(t, c, []string{"foo", "x"})
	md := o.DynamicMetadata.GetFields()
	if md["domain"].GetStringValue() != "rl" || len(md["descriptors"].GetListValue().GetValues()) != 1 || md["metadata"] != nil {
		t.Fatalf("dynamic metadata with the switch on: %v", o.DynamicMetadata)
	}
	call(t, c, []string{"unspec", "some-value"})
	if body := p.metrics(t); !strings.Contains(body, `levy_ratelimit_rule_hits_total{result="total_hits",rule="rl.unspec_some-value"} 1`) {
		t.Fatalf("no detailed_metric label in:\n%s", grepLines(body, "rule_hits"))
	}
}

// envoyproxy/ratelimit's integration-test/scripts/quota.sh against levy
// serving its example: two quota_mode services of 1 and 2 a minute; the
// third request finds both over.
func TestUpstreamQuotaScript(t *testing.T) {
	p := serveUpstreamExample(t, "")
	c := rlClient(t, p, "rl")
	for i, want := range []string{"OK,OK", "OVER_LIMIT,OK", "OVER_LIMIT,OVER_LIMIT"} {
		o := call(t, c, []string{"service", "service_1"}, []string{"service", "service_2"})
		var codes []string
		for _, s := range o.Response.Statuses {
			codes = append(codes, s.Code.String())
		}
		if got := strings.Join(codes, ","); got != want || o.Limited != (i == 2) {
			t.Fatalf("request %d: %s, limited %v; want %s", i+1, got, o.Limited, want)
		}
	}
}
