package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/stripetest"
	"github.com/levyhq/levy/test/ops"
)

// opsLocalConfig turns on what the local store can show: the billing
// export (to stripe-mock), settlement, usage alerts (to a port nobody
// answers: none fires), and a RateLimitService rule that labels by value
// with room for one value, so that a second overflows.
const opsLocalConfig = `
dev_mode: true
alerts: {url: "http://127.0.0.1:9/levy-alerts", secret: "env:LEVY_ALERTS_SECRET"}
billing:
  window: 1s
  settle_delay: 1s
  export_every: 100ms
  fallback_plan: free
  stripe: {api_base: %s}
plans:
  free: {model: freemium, rate: {requests: 1000, per: 1s}, quota: {requests: 1000, period: month}, billing: {stripe_prices: [price_free]}, alerts: [80%%]}
  payg: {model: payg, rate: {requests: 1000, per: 1s}, billing: {meter: api_calls, stripe_prices: [price_payg]}}
ratelimit:
  metric_values_per_rule: 1
  domains:
    - domain: edge
      descriptors:
        - key: remote_address
          detailed_metric: true
          rate_limit: {unit: hour, requests_per_unit: 1}
consumers:
  - {id: acme, plan: payg, stripe_customer_id: cus_acme, keys: [{key: %s}]}
%s`

// opsRedisConfig decides from the fallback while Redis is away, so that
// levy_degraded and levy_store_errors_total have something to say.
const opsRedisConfig = `
dev_mode: true
store: {on_store_error: allow}
plans:
  free: {model: freemium, rate: {requests: 1000, per: 1s}, quota: {requests: 1000, period: month}}
consumers:
  - {id: beta, plan: free, keys: [{key: %s}]}
`

// scrape is the metric families on p's /metrics, by name.
func scrape(t *testing.T, p *proc) map[string]*dto.MetricFamily {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(p.metrics(t)))
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// served reports whether a name a PromQL query uses is on /metrics: as a
// family, or as a histogram's _bucket, _count or _sum series.
func served(families map[string]*dto.MetricFamily, name string) bool {
	if families[name] != nil {
		return true
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if f := families[strings.TrimSuffix(name, suffix)]; strings.HasSuffix(name, suffix) && f != nil && f.GetType() == dto.MetricType_HISTOGRAM {
			return true
		}
	}
	return false
}

// The dashboard and the alert rules name only metrics levy serves, and
// show every levy_ metric it serves: a renamed metric fails here instead
// of leaving an empty panel and an alert that can never fire. levy runs
// twice, on the local store with the billing export, the RateLimitService,
// access logs and a reload, and on Redis that then goes away; the metrics
// that appear only with their first event are logged.
func TestDashboardAndAlertsNameOnlyMetricsLevyServes(t *testing.T) {
	names, err := ops.Names()
	if err != nil {
		t.Fatal(err)
	}
	atStart, after := map[string]*dto.MetricFamily{}, map[string]*dto.MetricFamily{}
	collect := func(into, from map[string]*dto.MetricFamily) {
		for n, f := range from {
			into[n] = f
		}
	}

	// The local store, with everything the metrics count.
	stripe := stripetest.Start(t)
	key, _ := apikey.Generate("levy")
	dir := t.TempDir()
	cfg := writeConfig(t, dir, fmt.Sprintf(opsLocalConfig, stripe.URL, key, ""))
	t.Setenv("STRIPE_API_KEY", "sk_test_levy")
	t.Setenv("STRIPE_WEBHOOK_SECRET", "whsec_levy")
	t.Setenv("LEVY_ALERTS_SECRET", "alerts_levy")
	local := serve(t, "--config", cfg, "--data-dir", t.TempDir())
	collect(atStart, scrape(t, local))

	c := local.client(t)
	req := &envoyclient.Request{Path: "/v1/items", Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}}
	allowed, err := c.Check(context.Background(), req)
	if err != nil || !allowed.Allowed {
		t.Fatalf("Check: %v %+v", err, allowed)
	}
	if o := check(t, c, "", "/v1/items"); o.Allowed {
		t.Fatal("a request without a key was allowed")
	}
	rl := rlClient(t, local, "edge")
	for _, addr := range []string{"10.0.0.1", "10.0.0.1", "10.0.0.2"} { // within, over, then a second value: overflow
		limited(t, rl, "remote_address", addr)
	}
	als := envoyclient.NewAccessLogger(dial(t, local.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: "envoy-1", Cluster: "front"})
	defer als.Close()
	als.Log(envoyclient.HTTPLogEntry(envoyclient.LogInput{Request: req, Authz: allowed, UpstreamStatus: 503}))
	if err := als.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, dir, fmt.Sprintf(opsLocalConfig, stripe.URL, key, "# reloaded\n"))
	waitFor(t, 10*time.Second, func() bool {
		m := local.metrics(t)
		return strings.Contains(m, `levy_config_reloads_total{result="success"}`) &&
			strings.Contains(m, `levy_access_log_entries_total{result="settled"} 1`)
	})
	collect(after, scrape(t, local))

	// Redis, then Redis gone: the fallback decides and counts store errors.
	rdb := redistest.Start(t)
	redisKey, _ := apikey.Generate("levy")
	onRedis := serve(t, "--config", writeConfig(t, t.TempDir(), fmt.Sprintf(opsRedisConfig, redisKey)),
		"--store", "redis", "--redis-addr", rdb.Addr)
	collect(atStart, scrape(t, onRedis))
	rc := onRedis.client(t)
	if o := check(t, rc, redisKey, "/v1/items"); !o.Allowed {
		t.Fatalf("on Redis: %+v", o)
	}
	rdb.Kill()
	waitFor(t, 10*time.Second, func() bool {
		check(t, rc, redisKey, "/v1/items")
		m := onRedis.metrics(t)
		return strings.Contains(m, `levy_store_errors_total{op="decide"}`) && strings.Contains(m, "levy_degraded 1")
	})
	collect(after, scrape(t, onRedis))

	var lateNames []string
	for name, where := range names {
		if !served(after, name) {
			where = slices.Compact(slices.Sorted(slices.Values(where)))
			t.Errorf("%s (named by %s) is not on levy's /metrics", name, strings.Join(where, ", "))
			continue
		}
		if !served(atStart, name) {
			lateNames = append(lateNames, name)
		}
	}
	slices.Sort(lateNames)
	t.Logf("named by the kit, absent from /metrics until their first event: %s", strings.Join(lateNames, ", "))

	var unshown []string
	for name := range after {
		if !strings.HasPrefix(name, "levy_") {
			continue
		}
		if !slices.ContainsFunc([]string{"", "_bucket", "_count", "_sum"}, func(s string) bool { return names[name+s] != nil }) {
			unshown = append(unshown, name)
		}
	}
	slices.Sort(unshown)
	if len(unshown) > 0 {
		t.Errorf("levy serves %s, which neither %s nor %s names: give each a panel (and an alert if it shows a failure)",
			strings.Join(unshown, ", "), ops.DashboardFile, ops.RulesFile)
	}
	if t.Failed() {
		t.Logf("local levy's log:\n%s\nRedis levy's log:\n%s", tail(local.stderr.String(), 2000), tail(onRedis.stderr.String(), 2000))
	}
}
