package rls

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// NearLimitRatio is the share of a limit past which a hit counts as near
// the limit (envoyproxy/ratelimit's NEAR_LIMIT_RATIO default).
const NearLimitRatio = 0.8

// ruleMetrics are envoyproxy/ratelimit's per-rule stats as Prometheus
// counters: hits by domain-qualified rule path (a bounded set: the rules in
// the config, never descriptor values) and by what became of them.
type ruleMetrics struct {
	hits *prometheus.CounterVec
	// byRule caches each rule's counters; rules are immutable, so a
	// pointer names one for its snapshot's life.
	byRule sync.Map // *Rule -> *ruleCounters
}

type ruleCounters struct {
	total, within, near, over, shadow prometheus.Counter
}

func newRuleMetrics(reg prometheus.Registerer) *ruleMetrics {
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levy_ratelimit_rule_hits_total",
		Help: "RateLimitService hits (hits_addend) per rule, by result: total_hits, within_limit, near_limit (past " +
			"80% of the limit), over_limit, shadow_mode (over a shadow rule: allowed).",
	}, []string{"rule", "result"})
	if reg != nil {
		if err := reg.Register(hits); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
					hits = existing
				}
			}
		}
	}
	return &ruleMetrics{hits: hits}
}

func (m *ruleMetrics) counters(r *Rule) *ruleCounters {
	if c, ok := m.byRule.Load(r); ok {
		return c.(*ruleCounters)
	}
	name := r.Path
	if name == "" {
		name = r.Name
	}
	c := &ruleCounters{
		total: m.hits.WithLabelValues(name, "total_hits"), within: m.hits.WithLabelValues(name, "within_limit"),
		near: m.hits.WithLabelValues(name, "near_limit"), over: m.hits.WithLabelValues(name, "over_limit"),
		shadow: m.hits.WithLabelValues(name, "shadow_mode"),
	}
	v, _ := m.byRule.LoadOrStore(r, c)
	return v.(*ruleCounters)
}

// observe counts hits on rule r: allowed or not, whether r is in shadow
// mode, and how much of limit is left after them.
func (m *ruleMetrics) observe(r *Rule, hits int64, ok, shadow bool, limit, remaining int64) {
	if m == nil || r == nil || hits <= 0 {
		return
	}
	c := m.counters(r)
	h := float64(hits)
	c.total.Add(h)
	switch {
	case !ok && shadow:
		c.shadow.Add(h)
		c.over.Add(h)
	case !ok:
		c.over.Add(h)
	case limit > 0 && float64(limit-remaining) > NearLimitRatio*float64(limit):
		c.near.Add(h)
		c.within.Add(h)
	default:
		c.within.Add(h)
	}
}
