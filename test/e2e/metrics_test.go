package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/redistest"
)

// metricsConfig has a rule of each kind of label (a path, a value
// label), so that the rule metrics have something to show.
const metricsConfig = `
plans:
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}, alerts: [80%, 100%]}
alerts:
  url: http://127.0.0.1:9/alerts
  secret: env:LEVY_ALERTS_SECRET
ratelimit:
  domains:
    - domain: levy
      descriptors:
        - key: remote_address
          rate_limit: {unit: second, requests_per_unit: 10}
        - key: tenant
          detailed_metric: true
          rate_limit: {unit: minute, requests_per_unit: 100}
`

var documentedMetric = regexp.MustCompile("`(levy_[a-z_]*[a-z])[`{]")

// documentedMetrics are the levy_* metrics README.md names.
func documentedMetrics(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, m := range documentedMetric.FindAllStringSubmatch(mustRead(t, filepath.Join("..", "..", "README.md")), -1) {
		if !slices.Contains(names, m[1]) {
			names = append(names, m[1])
		}
	}
	if len(names) < 20 {
		t.Fatalf("README names only %d metrics: %v", len(names), names)
	}
	return names
}

var typeLine = regexp.MustCompile(`(?m)^# TYPE (levy_[a-z_]+) `)

// Every metric the README documents is on a fresh levy's /metrics, before
// any event it counts, so that dashboards and alerts (a rate, an absent())
// work from the start; and every levy metric there is documented. The
// store's own metrics show with that store: levy_local_* on the local
// one, levy_store_late_decisions_total on Redis.
func TestEveryDocumentedMetricIsOnAFreshServer(t *testing.T) {
	documented := documentedMetrics(t)
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			dir := t.TempDir()
			cfg := writeConfig(t, dir, metricsConfig)
			args := []string{"--config", cfg, "--data-dir", filepath.Join(dir, "data")}
			if store == "redis" {
				args = append(args, "--store", "redis", "--redis-addr", redistest.Start(t).Addr)
			}
			// The Stripe export (and its metrics) runs when a key is set,
			// and usage alerts when their URL is; nothing is due, so
			// neither calls its address.
			p := serveEnv(t, []string{"STRIPE_API_KEY=sk_test_levy", "LEVY_STRIPE_API_BASE=http://127.0.0.1:9", "LEVY_ALERTS_SECRET=whsec_levy"}, args...)
			want := func(name string) bool {
				switch {
				case strings.HasPrefix(name, "levy_local_"):
					return store == "local"
				case name == "levy_store_late_decisions_total":
					return store == "redis"
				}
				return true
			}
			var missing []string
			var body string
			// The exporter registers its metrics as it starts, just after
			// levy serves.
			err := await.Poll(10*time.Second, func() error {
				body, missing = p.metrics(t), nil
				for _, name := range documented {
					if want(name) && !strings.Contains(body, "# TYPE "+name+" ") {
						missing = append(missing, name)
					}
				}
				if len(missing) > 0 {
					return fmt.Errorf("%d missing", len(missing))
				}
				return nil
			})
			if err != nil {
				t.Errorf("documented but not on a fresh /metrics: %v", missing)
			}
			for _, m := range typeLine.FindAllStringSubmatch(body, -1) {
				if !slices.Contains(documented, m[1]) {
					t.Errorf("%s is on /metrics but not in the README", m[1])
				}
			}
			// Labelled metrics show their known labels at 0.
			for _, series := range []string{
				`levy_decisions_total{api="authz",reason="rate_limited",result="deny"} 0`,
				`levy_decisions_total{api="ratelimit",reason="over_limit",result="deny"} 0`,
				`levy_config_reloads_total{result="failure"} 0`,
				`levy_store_errors_total{op="decide"} 0`,
				`levy_ratelimit_rule_hits_total{result="over_limit",rule="levy.remote_address"} 0`,
				`levy_ratelimit_rule_label_overflow_total{rule="levy.tenant"} 0`,
				`levy_usage_export_windows_total{result="rejected"} 0`,
			} {
				if !strings.Contains(body, series) {
					t.Errorf("no %s on a fresh /metrics", series)
				}
			}
		})
	}
}
