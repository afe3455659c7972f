package rls

import (
	"errors"
	"math"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// NearLimitRatio is the default share of a limit past which hits count as
// near the limit (envoyproxy/ratelimit's NEAR_LIMIT_RATIO default).
const NearLimitRatio = 0.8

// OtherSuffix ends the label that a rule's hits count under once the rule
// has as many value labels as it may have.
const OtherSuffix = ":other"

// ruleMetrics are envoyproxy/ratelimit's per-rule stats as Prometheus
// counters: hits (hits_addend units, not requests) by rule and by what
// became of them. The rule label is the rule's path in its domain, a
// bounded set; a rule with detailed_metric or value_to_metric asks for
// the request's values in it, and gets at most a capped number of
// distinct labels, the rest counted under "<path>:other".
type ruleMetrics struct {
	hits     *prometheus.CounterVec
	overflow *prometheus.CounterVec
	// byLabel caches each label's counters.
	byLabel sync.Map // string -> *ruleCounters
	// values counts the value labels of each rule path.
	mu     sync.Mutex
	values map[string]int
}

type ruleCounters struct {
	total, within, near, over, shadow prometheus.Counter
}

// registerOrExisting registers c, or returns the collector already
// registered under its name (one registry, several servers in tests).
func registerOrExisting(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
	}
	return c
}

func newRuleMetrics(reg prometheus.Registerer) *ruleMetrics {
	hits := registerOrExisting(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levy_ratelimit_rule_hits_total",
		Help: "RateLimitService hits (hits_addend units) per rule, by result: total_hits, within_limit, near_limit (past " +
			"ratelimit.near_limit_ratio of the limit), over_limit, shadow_mode (over a shadow rule: allowed). The rule is " +
			"its path in its domain, or with detailed_metric or value_to_metric its key with the request's values.",
	}, []string{"rule", "result"}))
	overflow := registerOrExisting(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levy_ratelimit_rule_label_overflow_total",
		Help: "Descriptors of a rule with detailed_metric or value_to_metric whose hits were counted under the rule's " +
			"\"<path>:other\" label, because the rule already had ratelimit.metric_values_per_rule value labels.",
	}, []string{"rule"}))
	return &ruleMetrics{hits: hits, overflow: overflow, values: map[string]int{}}
}

// declare shows rules' counters on /metrics at 0 before their first hit,
// so that a dashboard or an alert finds every rule from the start: a
// rule's path label with each result, or, for a rule whose labels take
// the request's values (when capValues allows any), its overflow count.
func (m *ruleMetrics) declare(rules *Rules, capValues int) {
	if m == nil {
		return
	}
	rules.Each(func(r *Rule) {
		switch {
		case r.Unlimited:
		case r.valueLabels && capValues > 0:
			m.overflow.WithLabelValues(r.Path)
		default:
			m.counters(r.Path, r.Path, false, 0)
		}
	})
}

func (m *ruleMetrics) newCounters(label string) *ruleCounters {
	return &ruleCounters{
		total: m.hits.WithLabelValues(label, "total_hits"), within: m.hits.WithLabelValues(label, "within_limit"),
		near: m.hits.WithLabelValues(label, "near_limit"), over: m.hits.WithLabelValues(label, "over_limit"),
		shadow: m.hits.WithLabelValues(label, "shadow_mode"),
	}
}

// counters returns label's counters. A label with values (withValues) is
// one of path's value labels, of which there are at most capValues; past
// that, the hits go to path's other label.
func (m *ruleMetrics) counters(path, label string, withValues bool, capValues int) *ruleCounters {
	if c, ok := m.byLabel.Load(label); ok {
		return c.(*ruleCounters)
	}
	if withValues {
		m.mu.Lock()
		if m.values[path] >= capValues {
			m.mu.Unlock()
			m.overflow.WithLabelValues(path).Inc()
			return m.counters(path, path+OtherSuffix, false, 0)
		}
		if _, ok := m.byLabel.Load(label); !ok {
			m.values[path]++
			m.byLabel.Store(label, m.newCounters(label))
		}
		m.mu.Unlock()
		c, _ := m.byLabel.Load(label)
		return c.(*ruleCounters)
	}
	v, _ := m.byLabel.LoadOrStore(label, m.newCounters(label))
	return v.(*ruleCounters)
}

// hitCounts are one descriptor's hits split as envoyproxy/ratelimit's
// base_limiter splits them.
type hitCounts struct{ within, near, over, shadow uint64 }

// splitHits splits hits on a limit of limit units, remaining after them
// when ok (before them when over), as envoyproxy/ratelimit counts: allowed
// hits are within_limit, and those of them past ratio of the limit also
// near_limit; of hits over the limit, those past it are over_limit (and
// shadow_mode too for a shadow rule), and the ones before it that were
// past the ratio near_limit.
func splitHits(hits uint64, ok, shadow bool, limit, remaining int64, ratio float64) hitCounts {
	var c hitCounts
	l := uint64(max(limit, 0))
	near := uint64(math.Floor(float64(float32(l) * float32(ratio)))) // float32, as upstream
	used := uint64(min(max(limit-max(remaining, 0), 0), limit))      // of the limit, clamped to it
	if ok {
		after := used
		before := after - min(hits, after)
		c.within = hits
		if after > near {
			c.near = after - max(before, near)
		}
		return c
	}
	before := used
	if before >= l || before+hits <= l {
		c.over = hits
	} else {
		c.over = before + hits - l
		c.near = l - max(near, before)
	}
	if shadow {
		c.shadow = c.over
	}
	return c
}

// observe counts hits under label (of rule path; withValues as counters
// takes it).
func (m *ruleMetrics) observe(path, label string, withValues bool, capValues int, hits int64, ok, shadow bool, limit, remaining int64, ratio float64) {
	if m == nil || hits <= 0 {
		return
	}
	c := m.counters(path, label, withValues, capValues)
	s := splitHits(uint64(hits), ok, shadow, limit, remaining, ratio)
	c.total.Add(float64(hits))
	for _, x := range []struct {
		n uint64
		c prometheus.Counter
	}{{s.within, c.within}, {s.near, c.near}, {s.over, c.over}, {s.shadow, c.shadow}} {
		if x.n > 0 {
			x.c.Add(float64(x.n))
		}
	}
}
