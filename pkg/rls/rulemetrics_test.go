package rls_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/levyhq/levy/pkg/rls"
)

// gather returns a counter family's values by the given label's value and
// then the "result" label's (or "" for a family without results).
func gather(t *testing.T, f *fixture, family, label string) map[string]map[string]float64 {
	t.Helper()
	families, err := f.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, fam := range families {
		if fam.GetName() != family {
			continue
		}
		for _, m := range fam.GetMetric() {
			var key, result string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case label:
					key = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			if out[key] == nil {
				out[key] = map[string]float64{}
			}
			out[key][result] = m.GetCounter().GetValue()
		}
	}
	return out
}

const metricsYAML = `
plans:
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}
ratelimit:
  metric_values_per_rule: 2
  domains:
    - domain: api
      descriptors:
        - key: user
          detailed_metric: true
          rate_limit: {unit: minute, requests_per_unit: 10}
        - key: route
          value_to_metric: true
          descriptors:
            - key: subject
              rate_limit: {unit: minute, requests_per_unit: 10}
        - key: remote_address
          rate_limit: {unit: minute, requests_per_unit: 10}
`

// detailed_metric and value_to_metric label hits with the request's
// values, as envoyproxy/ratelimit's stats keys do, but at most
// metric_values_per_rule labels per rule: the rest count under
// "<rule>:other", and how many did is counted too. Other rules stay
// labelled by their path.
func TestValueLabelsAreCappedPerRule(t *testing.T) {
	f := start(t, newContract().factory, metricsYAML)
	for _, u := range []string{"ann", "bob", "ann", "cid", "dan"} {
		f.call(t, 0, d("user", u), d("route", "r-"+u, "subject", "s"), d("remote_address", "10.0.0."+u))
	}
	hits := gather(t, f, "levy_ratelimit_rule_hits_total", "rule")
	total := map[string]float64{}
	for rule, results := range hits {
		total[rule] = results["total_hits"]
	}
	want := map[string]float64{
		"api.user_ann": 2, "api.user_bob": 1, "api.user" + rls.OtherSuffix: 2,
		"api.route_r-ann.subject": 2, "api.route_r-bob.subject": 1, "api.route.subject" + rls.OtherSuffix: 2,
		"api.remote_address": 5,
	}
	if fmt.Sprint(total) != fmt.Sprint(want) {
		t.Fatalf("total_hits by rule\n got %v\nwant %v", total, want)
	}
	overflow := gather(t, f, "levy_ratelimit_rule_label_overflow_total", "rule")
	if got := fmt.Sprint(overflow); got != fmt.Sprint(map[string]map[string]float64{"api.user": {"": 2}, "api.route.subject": {"": 2}}) {
		t.Fatalf("overflow %s", got)
	}
}

// metric_values_per_rule: 0 keeps every rule to its path.
func TestNoValueLabelsWhenTheCapIsZero(t *testing.T) {
	f := start(t, newContract().factory, strings.Replace(metricsYAML, "metric_values_per_rule: 2", "metric_values_per_rule: 0", 1))
	f.call(t, 0, d("user", "ann"))
	got := gather(t, f, "levy_ratelimit_rule_hits_total", "rule")
	if got["api.user"]["total_hits"] != 1 || len(got) != 3 || got["api.route.subject"] == nil || got["api.remote_address"] == nil {
		t.Fatalf("%v, want the three rule paths only", got)
	}
}

// Every rule shows on /metrics at 0 before its first hit, so that a rate
// over it is defined from the start: a rule labelled by its path with each
// result, a rule labelled by values with its overflow count.
func TestRulesShowBeforeTheirFirstHit(t *testing.T) {
	f := start(t, newContract().factory, metricsYAML)
	hits := gather(t, f, "levy_ratelimit_rule_hits_total", "rule")
	if fmt.Sprint(hits) != fmt.Sprint(map[string]map[string]float64{
		"api.remote_address": {"near_limit": 0, "over_limit": 0, "shadow_mode": 0, "total_hits": 0, "within_limit": 0},
	}) {
		t.Fatalf("hits before any call: %v", hits)
	}
	if got := fmt.Sprint(gather(t, f, "levy_ratelimit_rule_label_overflow_total", "rule")); got != fmt.Sprint(map[string]map[string]float64{"api.user": {"": 0}, "api.route.subject": {"": 0}}) {
		t.Fatalf("overflow before any call: %s", got)
	}
}

// Hits are hits_addend units, split as envoyproxy/ratelimit's
// base_limiter splits them, with ratelimit.near_limit_ratio (upstream's
// NEAR_LIMIT_RATIO) for near_limit. Of 10 a minute at 0.5: 4 hits are
// within; 3 more are within, 2 of them near (past 5); 5 more would end at
// 12: denied, 2 of them over and 3 near (and, levy taking nothing of a
// denied request, still 3 left); 3 more fit, within and near; 1 more is
// over.
func TestRuleHitsAreSplitInHitsAtTheNearLimitRatio(t *testing.T) {
	f := start(t, newContract().factory, metricsYAML+"  near_limit_ratio: 0.5\n")
	ip := d("remote_address", "10.1.1.1")
	for _, n := range []uint64{4, 3, 5, 3, 1} {
		f.call(t, 0, hits(n, ip))
	}
	got := gather(t, f, "levy_ratelimit_rule_hits_total", "rule")["api.remote_address"]
	want := map[string]float64{"total_hits": 16, "within_limit": 10, "near_limit": 8, "over_limit": 3, "shadow_mode": 0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
