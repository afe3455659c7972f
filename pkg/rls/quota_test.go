package rls_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
)

// contract is a limiter that keeps limiter.Limit's documented contract
// for Shadow, QuotaMode and Debit with plain counters (no clock, no
// refill): what the RateLimitService is built against, so that its side
// of quota_mode and debits is tested whatever the stores do today.
type contract struct {
	mu    sync.Mutex
	used  map[string]int64
	calls [][]limiter.Limit
}

func newContract() *contract { return &contract{used: map[string]int64{}} }

func (c *contract) factory(*testing.T, *limitertest.Clock) limiter.Limiter { return c }

func (c *contract) Decide(_ context.Context, limits []limiter.Limit) (limiter.Decision, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, slices.Clone(limits))
	d := limiter.Decision{OK: true, Denied: -1, Statuses: make([]limiter.Status, len(limits))}
	over := make([]bool, len(limits))
	size := func(l *limiter.Limit) int64 {
		if l.Kind == limiter.Bucket {
			return l.Capacity()
		}
		return l.Max
	}
	quota, quotaOver, firstQuotaOver := 0, 0, -1
	for i := range limits {
		l := &limits[i]
		used := c.used[l.Key]
		// A check with zero cost is over when nothing is left.
		over[i] = used+l.Cost > size(l) || l.Cost == 0 && used >= size(l)
		switch {
		case l.QuotaMode:
			quota++
			if over[i] {
				quotaOver++
				if firstQuotaOver < 0 {
					firstQuotaOver = i
				}
			}
		case over[i] && !l.Shadow && d.OK:
			d.OK, d.Denied = false, i
		}
	}
	if d.OK && quota > 0 && quota == quotaOver {
		d.OK, d.Denied = false, firstQuotaOver
	}
	for i := range limits {
		l := &limits[i]
		if l.Debit || d.OK && !(over[i] && (l.Shadow || l.QuotaMode)) {
			c.used[l.Key] += l.Cost
		}
		d.Statuses[i] = limiter.Status{OK: !over[i], Limit: size(l), Remaining: size(l) - c.used[l.Key], Reset: time.Minute, RetryAfter: time.Minute}
	}
	return d, nil
}

func (c *contract) last() []limiter.Limit {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[len(c.calls)-1]
}

// The two quota-mode descriptors of envoyproxy/ratelimit's example config
// (examples/ratelimit/config/example.yaml), in levy's domain "api".
const quotaYAML = `
plans:
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}
ratelimit:
  domains:
    - domain: api
      descriptors:
        - key: service
          value: service_1
          quota_mode: true
          rate_limit: {unit: minute, requests_per_unit: 1}
          metadata:
            service_with_quota:
              name: "service_1"
        - key: service
          value: service_2
          quota_mode: true
          rate_limit: {unit: minute, requests_per_unit: 2}
          metadata:
            service_with_quota:
              name: "service_2"
        - key: remote_address
          rate_limit: {unit: minute, requests_per_unit: 100}
        - key: generic_key
          value: metered
          rate_limit: {unit: minute, requests_per_unit: 2, debit: true}
        - key: generic_key
          value: checked
          quota_mode: true
          rate_limit: {unit: minute, requests_per_unit: 2, debit: false}
`

// serviceWithQuota is what Envoy's %DYNAMIC_METADATA(envoy.filters.http.
// ratelimit:metadata:service_with_quota:name)% reads, as the peer's
// example Envoy config routes on it.
func serviceWithQuota(t *testing.T, resp *rlsv3.RateLimitResponse) string {
	t.Helper()
	md := resp.GetDynamicMetadata().GetFields()["metadata"].GetStructValue()
	return md.GetFields()["service_with_quota"].GetStructValue().GetFields()["name"].GetStringValue()
}

// envoyproxy/ratelimit's integration-test/scripts/quota.sh: /quota sends
// (service, service_1) and (service, service_2), 1 and 2 a minute, both
// quota_mode. A request is over only when both are; one over is reported
// OVER_LIMIT in its own status while the request is OK.
func TestQuotaModeIsOverOnlyWhenEveryQuotaDescriptorIs(t *testing.T) {
	c := newContract()
	f := start(t, c.factory, quotaYAML)
	s1, s2 := d("service", "service_1"), d("service", "service_2")
	want := []struct {
		codes, overall, route string
	}{
		{"OK,OK", "OK", "service_1"},
		{"OVER_LIMIT,OK", "OK", "service_2"},
		{"OVER_LIMIT,OVER_LIMIT", "OVER_LIMIT", ""},
	}
	for i, w := range want {
		o := f.call(t, 0, s1, s2)
		if got := statusCodes(o); got != w.codes || o.Response.OverallCode.String() != w.overall {
			t.Fatalf("request %d: statuses %s, overall %s; want %s, %s", i+1, got, o.Response.OverallCode, w.codes, w.overall)
		}
		if got := serviceWithQuota(t, o.Response); got != w.route {
			t.Errorf("request %d: metadata service_with_quota.name %q, want %q (the first descriptor that passed)", i+1, got, w.route)
		}
	}
	for _, l := range c.last() {
		if !l.QuotaMode || l.Debit {
			t.Fatalf("limit %+v: a quota_mode rule is QuotaMode and, without debit: true, no Debit", l)
		}
	}
}

// envoyproxy/ratelimit's multiservice-tokenquota.sh: the request checks
// both services with hits_addend 0 and routes to the first with quota
// left (the metadata names it); at stream end (apply_on_stream_done) the
// service that served it is debited 1. levy's zero-cost check is over
// when nothing is left, so service_1 serves 1 and service_2 2 a minute
// (upstream lets each serve one more, into its limit).
func TestTokenQuotaRoutesOnMetadataAndDebitsAfterTheFact(t *testing.T) {
	c := newContract()
	f := start(t, c.factory, quotaYAML)
	check := []envoyclient.Descriptor{hits(0, d("service", "service_1")), hits(0, d("service", "service_2"))}
	for i, want := range []string{"service_1", "service_2", "service_2", ""} {
		o := f.call(t, 0, check...)
		if got := serviceWithQuota(t, o.Response); got != want || o.Limited != (want == "") {
			t.Fatalf("request %d: routed to %q, limited %v; want %q", i+1, got, o.Limited, want)
		}
		if want == "" {
			break
		}
		// Envoy's stream-done call: its answer is not read.
		f.call(t, 0, hits(1, d("service", want)))
	}
}

// A rule says debit: true to have its hits recorded past the limit, and a
// quota_mode rule says debit: false to have them checked; the global
// quota switch makes every limit quota_mode, Envoy's overrides too.
func TestQuotaModeAndDebitReachTheLimiter(t *testing.T) {
	c := newContract()
	f := start(t, c.factory, quotaYAML)
	override := d("generic_key", "override")
	override.Limit = &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit_MINUTE}
	f.call(t, 0, d("generic_key", "metered"), d("generic_key", "checked"), d("remote_address", "10.0.0.1"), override)
	type flags struct{ quota, debit bool }
	got := func() []flags {
		var out []flags
		for _, l := range c.last() {
			out = append(out, flags{l.QuotaMode, l.Debit})
		}
		return out
	}
	if want := []flags{{false, true}, {true, false}, {false, false}, {false, false}}; !slices.Equal(got(), want) {
		t.Fatalf("quota mode and debit %v, want %v", got(), want)
	}
	cfg := mustConfig(t, quotaYAML+"  quota_mode: true\n")
	f.srv.Swap(snapshot(t, cfg, false))
	f.call(t, 0, d("generic_key", "metered"), d("generic_key", "checked"), d("remote_address", "10.0.0.1"), override)
	if want := []flags{{true, true}, {true, false}, {true, false}, {true, false}}; !slices.Equal(got(), want) {
		t.Fatalf("global quota mode: %v, want %v", got(), want)
	}
}

// quota.sh again, on every store: the stores' side of quota_mode.
func testQuotaModeOnTheStore(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, quotaYAML)
	s1, s2 := d("service", "service_1"), d("service", "service_2")
	for i, want := range []string{"OK,OK", "OVER_LIMIT,OK", "OVER_LIMIT,OVER_LIMIT"} {
		o := f.call(t, 0, s1, s2)
		if got := statusCodes(o); got != want || o.Limited != (i == 2) {
			t.Fatalf("request %d: statuses %s, limited %v; want %s, limited %v", i+1, got, o.Limited, want, i == 2)
		}
	}
	f.clock.Advance(time.Minute)
	if o := f.call(t, 0, s1, s2); o.Limited {
		t.Fatalf("a minute later: %s", statusCodes(o))
	}
}

// A debit: true rule's hits are reported after the fact (Envoy's
// apply_on_stream_done, whose answer Envoy does not read): 5 on a bucket
// of 2 a minute are recorded all the same, and the bucket is in debt
// until it has refilled past them. The request path checks it with
// hits_addend 0, as Envoy's token-quota example does (a check is over
// while less than one hit is left).
func testDebitGoesIntoDebtOnTheStore(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, quotaYAML)
	metered := d("generic_key", "metered")
	f.call(t, 0, hits(5, metered))
	for _, step := range []struct {
		after   time.Duration
		limited bool
	}{{0, true}, {time.Minute, true}, {time.Minute, false}} {
		f.clock.Advance(step.after)
		if o := f.call(t, 0, hits(0, metered)); o.Limited != step.limited {
			t.Fatalf("after %s more: limited %v, want %v (%s)", step.after, o.Limited, step.limited, statusCodes(o))
		}
	}
}
