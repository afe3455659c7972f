package rls_test

import (
	"context"
	"strings"
	"testing"
	"time"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/server"
)

// Review findings (issue 11): each test states what envoyproxy/ratelimit
// answers, and fails on main where levy answers otherwise.

func localStore(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
	l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

const reviewYAML = `
plans:
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}
ratelimit:
  domains:
    - domain: api
      descriptors:
        - key: service
          value: primary
          quota_mode: true
          rate_limit: {unit: minute, requests_per_unit: 1}
        - key: service
          value: spare
          quota_mode: true
          rate_limit: {unit: minute, requests_per_unit: 100}
        - key: service
          value: spare_watched
          quota_mode: true
          shadow_mode: true
          rate_limit: {unit: minute, requests_per_unit: 100}
        - key: remote_address
          rate_limit: {unit: minute, requests_per_unit: 1, name: per_ip}
        - key: generic_key
          value: vip
          rate_limit: {unlimited: true, replaces: [{name: per_ip}]}
        - key: generic_key
          value: one
          rate_limit: {unit: minute, requests_per_unit: 1}
`

// Turning shadow_mode on for a quota-mode descriptor must never make a
// request that was allowed denied: shadow limits "never change a
// decision" (limiter.Limit). With (primary: 1/min, spare: 100/min), both
// quota_mode, the 2nd request is allowed (spare has quota). With spare in
// shadow_mode as well, levy drops spare from the quota-mode group
// (inQuotaGroup excludes Shadow), so primary alone is "every quota-mode
// descriptor" and the request is denied. envoyproxy/ratelimit reports a
// shadow descriptor OK, counts it among the quota descriptors that passed,
// and answers OK.
func TestReviewShadowQuotaModeDescriptorNeverDenies(t *testing.T) {
	for _, spare := range []string{"spare", "spare_watched"} {
		t.Run(spare, func(t *testing.T) {
			f := start(t, localStore, reviewYAML)
			for i := 0; i < 2; i++ {
				o := f.call(t, 0, d("service", "primary"), d("service", spare))
				if o.Limited {
					t.Fatalf("request %d with %s: limited (%s); envoyproxy/ratelimit allows it: %s has quota", i+1, spare, statusCodes(o), spare)
				}
			}
		})
	}
}

// envoyproxy/ratelimit applies the replaces of every matched rule,
// unlimited ones included (service/ratelimit.go constructLimitsToCheck
// collects Replaces before it drops the unlimited limit). levy skips an
// unlimited rule before it reads its replaces, so the replaced per-IP
// limit still applies and the VIP's 2nd request is a 429.
func TestReviewUnlimitedRuleReplacesOthers(t *testing.T) {
	f := start(t, localStore, reviewYAML)
	for i := 0; i < 3; i++ {
		o := f.call(t, 0, d("generic_key", "vip"), d("remote_address", "10.0.0.1"))
		if o.Limited {
			t.Fatalf("request %d: limited (%s); per_ip should be replaced by the unlimited vip rule", i+1, statusCodes(o))
		}
		if o.Response.Statuses[1].CurrentLimit != nil {
			t.Errorf("request %d: per_ip still decided (%v); it is replaced", i+1, o.Response.Statuses[1].CurrentLimit)
		}
	}
}

// With the global quota switch, envoyproxy/ratelimit counts every
// descriptor that is not unlimited as a quota descriptor, one that
// matches no rule (or was replaced) included: its status is OK, so the
// group is never all over and the request is OK. levy leaves such
// descriptors out of the group and answers OVER_LIMIT.
func TestReviewGlobalQuotaModeCountsUnmatchedDescriptors(t *testing.T) {
	f := start(t, localStore, reviewYAML+"  quota_mode: true\n")
	for i := 0; i < 3; i++ {
		o := f.call(t, 0, d("generic_key", "one"), d("generic_key", "no-rule-for-this"))
		if o.Limited {
			t.Fatalf("request %d: %s, overall %s; envoyproxy/ratelimit answers OK (the unmatched descriptor passes)", i+1, statusCodes(o), o.Response.OverallCode)
		}
	}
}

// envoyproxy/ratelimit applies a descriptor's limit override only in a
// domain it has rules for (config_impl.go GetLimit returns nil for an
// unknown domain before it looks at the override); levy applies it in any
// domain, so a domain with no rules gets 429s.
func TestReviewOverrideInUnknownDomainIsNotApplied(t *testing.T) {
	f := start(t, localStore, reviewYAML)
	req := &rlsv3.RateLimitRequest{Domain: "no-such-domain", Descriptors: []*rlv3.RateLimitDescriptor{{
		Entries: []*rlv3.RateLimitDescriptor_Entry{{Key: "k", Value: "v"}},
		Limit:   &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit_MINUTE},
	}}}
	for i := 0; i < 3; i++ {
		resp, err := f.raw.ShouldRateLimit(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.OverallCode != rlsv3.RateLimitResponse_OK {
			t.Fatalf("request %d in a domain without rules: %s", i+1, resp.OverallCode)
		}
	}
}

// A rule that loads (and passes levy config validate) but that the
// limiter refuses (a bucket taking over ~71 years to fill: 1/hour with
// burst 1,000,000) fails every request that matches it with
// InvalidArgument. The loader should refuse it with file and line.
func TestReviewRuleTheLimiterRefusesIsRefusedAtLoad(t *testing.T) {
	cfg, err := config.Parse([]byte(reviewYAML+`        - key: generic_key
          value: huge_burst
          rate_limit: {unit: hour, requests_per_unit: 1, burst: 1000000}
`), "levy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	err = server.Validate(cfg)
	if err == nil || !strings.Contains(err.Error(), "levy.yaml (ratelimit.domains[0]):31: bad limit") {
		t.Fatalf("a rule every request on which is InvalidArgument: %v; want it refused at levy.yaml's line 31", err)
	}
}

const nestedYAML = `
plans:
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}
ratelimit:
  domains:
    - domain: api
      descriptors:
        - key: user
          rate_limit: {unit: minute, requests_per_unit: 100}
          descriptors:
            - key: path
              rate_limit: {unit: minute, requests_per_unit: 10}
`

// The state key joins a descriptor's entries as ".key=value" without
// escaping (rules.go Lookup, keyspace.Rule), so a value that contains
// ".path=/pay" names another descriptor's state. Envoy takes descriptor
// values from request headers (request_headers action): a client that
// sends user "alice.path=/pay" spends from alice's /pay bucket, at its own
// rule's rate (100 a minute against alice's 10), and alice is denied.
// (envoyproxy/ratelimit's cache key has the same ambiguity with '_'; levy's
// "no request can hurt other requests" does not hold while it stays.)
func TestReviewDescriptorValuesCannotNameAnotherDescriptorsState(t *testing.T) {
	f := start(t, localStore, nestedYAML)
	for i := 0; i < 100; i++ {
		f.call(t, 0, d("user", "alice.path=/pay"))
	}
	if o := f.call(t, 0, d("user", "alice", "path", "/pay")); o.Limited {
		t.Fatalf("alice's first request on /pay: %s, after another client's requests with user %q", statusCodes(o), "alice.path=/pay")
	}
}

// envoyproxy/ratelimit's quota.sh pattern: /quota sends (service,
// service_1) and (service, service_2), 1 and 2 a minute, quota_mode,
// with hits on the request path. levy makes quota_mode rules debits by
// default, and a debit is taken even when the request is denied, into a
// token bucket's debt that outlives the minute. A client that retries
// its 429s once a second for a minute is still denied ten minutes later
// (about 58 minutes of debt on service_1, 29 on service_2); upstream
// counts the same hits in a fixed window and allows it at the next
// minute. (README says a debit rule sent hits up front stays in debt
// "for as long as it keeps coming"; here it stopped coming, and quota_mode
// did not ask for debits.)
func TestReviewDeniedQuotaModeRetriesDoNotLockOutForAnHour(t *testing.T) {
	f := start(t, localStore, quotaYAML)
	s1, s2 := d("service", "service_1"), d("service", "service_2")
	denied := 0
	for i := 0; i < 60; i++ {
		if o := f.call(t, 0, s1, s2); o.Limited {
			denied++
		}
		f.clock.Advance(time.Second)
	}
	f.clock.Advance(10 * time.Minute)
	if o := f.call(t, 0, s1, s2); o.Limited {
		t.Fatalf("ten minutes after %d denied retries stopped: still denied (%s)", denied, statusCodes(o))
	}
}

// A descriptor with is_negative_hits is a refund: levy acknowledges it
// (OK, no limit) and applies nothing: its all-or-nothing decisions took
// nothing from a denied request, and a refund cannot tell which decision
// it undoes. Before, it was a zero-cost check, which answers OVER_LIMIT
// when the bucket is empty.
func TestNegativeHitsAreAcknowledgedNotApplied(t *testing.T) {
	f := start(t, localStore, reviewYAML)
	one := func(negative bool) *rlsv3.RateLimitResponse {
		resp, err := f.raw.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "api",
			Descriptors: []*rlv3.RateLimitDescriptor{{Entries: []*rlv3.RateLimitDescriptor_Entry{{Key: "generic_key", Value: "one"}},
				IsNegativeHits: negative}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	one(false) // the minute's one hit
	if resp := one(true); resp.OverallCode != rlsv3.RateLimitResponse_OK {
		t.Errorf("a refund of one hit: %s", resp.OverallCode)
	}
	if resp := one(false); resp.OverallCode != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("after a refund, which is not applied: %s, want OVER_LIMIT", resp.OverallCode)
	}
}

// Shadow mode is for trying rules without effect ("a shadow limit never
// changes a decision"; limiter.Limit: "one that is over takes nothing").
// A debit rule in global shadow mode still takes every debit past its
// limit, into debt: an hour of trial at ten times a 2-a-minute budget
// leaves about nine hours of debt, and the moment shadow mode is switched
// off every check on the rule is denied for those nine hours.
// (envoyproxy/ratelimit's shadow counts in fixed windows: at most the
// current window is affected.)
func TestReviewShadowModeLeavesNoDebtBehind(t *testing.T) {
	f := start(t, localStore, quotaYAML)
	f.srv.Swap(snapshot(t, f.cfg, true))
	metered := d("generic_key", "metered")
	for i := 0; i < 60*20; i++ { // an hour: 20 a minute, each checked then debited
		f.call(t, 0, hits(0, metered))
		f.call(t, 0, hits(1, metered))
		f.clock.Advance(3 * time.Second)
	}
	f.srv.Swap(snapshot(t, f.cfg, false))
	f.clock.Advance(time.Minute)
	if o := f.call(t, 0, hits(0, metered)); o.Limited {
		t.Fatalf("a minute after shadow mode was switched off: %s, retry in %ds", statusCodes(o), o.Response.Statuses[0].DurationUntilReset.GetSeconds())
	}
}
