package rls_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/envoyclient/envoytest"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/rls"
	"github.com/levyhq/levy/pkg/server"
	"github.com/levyhq/levy/pkg/telemetry"
	"github.com/levyhq/levy/test/compat"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(compat.Wrap(m)) }

const levyYAML = `
plans:
  free:
    model: freemium
    rate: {requests: 10, per: minute}
    quota: {requests: 100, period: month}
    routes:
      items: {rate: {requests: 2, per: 1s}}
      search: {cost: 3}
  pro:
    model: tiered
    routes:
      items: {rate: {requests: 5, per: 1s}}
consumers:
  - {id: small, plan: free}
  - {id: big, plan: pro}
ratelimit:
  domains:
    - domain: api
      descriptors:
        - key: remote_address
          rate_limit: {unit: second, requests_per_unit: 3}
        - key: generic_key
          value: tight
          rate_limit: {unit: minute, requests_per_unit: 1, name: tight}
        - key: generic_key
          value: loose
          rate_limit: {unit: minute, requests_per_unit: 100, name: loose, replaces: [{name: tight}]}
        - key: generic_key
          value: daily
          rate_limit: {unit: day, requests_per_unit: 2}
        - key: generic_key
          value: burst
          rate_limit: {unit: second, requests_per_unit: 1, burst: 4}
        - key: generic_key
          value: free-pass
          rate_limit: {unlimited: true}
        - key: generic_key
          value: blocked
          rate_limit: {unit: second, requests_per_unit: 0}
        - key: generic_key
          value: watched
          shadow_mode: true
          rate_limit: {unit: minute, requests_per_unit: 1, name: watched}
        - key: consumer
          descriptors:
            - key: route
              rate_limit: {unit: second, requests_per_unit: 1, from_plan: true}
`

type fixture struct {
	metrics *telemetry.Metrics
	clock   *limitertest.Clock
	srv     *rls.Server
	client  *envoyclient.RateLimitClient
	raw     rlsv3.RateLimitServiceClient
	cfg     *config.Config
}

func start(t *testing.T, newLimiter limitertest.Factory, text string) *fixture {
	t.Helper()
	f := &fixture{clock: limitertest.NewClock(limitertest.Start)}
	f.cfg = mustConfig(t, text)
	lim := newLimiter(t, f.clock)
	f.metrics = telemetry.NewMetrics()
	f.srv = rls.New(rls.Config{Snapshot: snapshot(t, f.cfg, false), Limiter: lim, Metrics: f.metrics, Log: zaptest.NewLogger(t)})
	// levy serve's codec (server.GRPCOptions), so that every behaviour is
	// also a test of how it reads requests and writes answers.
	codec := []grpc.ServerOption{grpc.ForceServerCodecV2(rls.Codec)}
	conn := envoytest.LoopbackWith(t, codec, func(gs *grpc.Server) { rlsv3.RegisterRateLimitServiceServer(gs, f.srv) })
	f.client = envoyclient.NewRateLimitClient(conn, envoyclient.RateLimitConfig{Domain: "api", Timeout: time.Minute, XRateLimitHeaders: true}) // answers, not the machine's speed
	f.raw = rlsv3.NewRateLimitServiceClient(conn)
	return f
}

func mustConfig(t testing.TB, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(text), "levy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Validate(cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func snapshot(t testing.TB, cfg *config.Config, shadow bool) *rls.Snapshot {
	t.Helper()
	rules, err := server.RateLimitRules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	catalog, err := cfg.Catalog()
	if err != nil {
		t.Fatal(err)
	}
	consumers, keys := cfg.Directory()
	rl := cfg.RateLimit
	return &rls.Snapshot{Rules: rules, Catalog: catalog, Consumers: apikeyIndex(consumers, keys), Shadow: shadow || rl.ShadowMode,
		QuotaMode: rl.QuotaMode, DynamicMetadata: rl.ResponseDynamicMetadata, NearLimitRatio: rl.NearLimitRatio, MetricValues: rl.MetricValues}
}

// TestBehaviour runs every behaviour test on the local store, on Redis
// and on a Redis Cluster.
func TestBehaviour(t *testing.T) {
	tests := []struct {
		name string
		run  func(*testing.T, limitertest.Factory)
	}{
		{"BucketPerSecondRefillsEvenly", testBucketPerSecondRefillsEvenly},
		{"DeniedRequestConsumesNoDescriptor", testDeniedRequestConsumesNoDescriptor},
		{"StatusesInRequestOrderWithLimitsAndHeaders", testStatusesInRequestOrderWithLimitsAndHeaders},
		{"UnknownDomainIsOKWithoutLimits", testUnknownDomainIsOKWithoutLimits},
		{"BadRequestsAreInvalidArgument", testBadRequestsAreInvalidArgument},
		{"HitsAddendRequestAndPerDescriptor", testHitsAddendRequestAndPerDescriptor},
		{"DayLimitIsACalendarQuota", testDayLimitIsACalendarQuota},
		{"UnlimitedZeroAndReplaces", testUnlimitedZeroAndReplaces},
		{"ShadowModeReportsOKButCounts", testShadowModeReportsOKButCounts},
		{"LimitOverrideFromEnvoyIsHonoured", testLimitOverrideFromEnvoyIsHonoured},
		{"PlanAwareRouteLimitsAndCosts", testPlanAwareRouteLimitsAndCosts},
		{"QuotaModeOnTheStore", testQuotaModeOnTheStore},
		{"DebitGoesIntoDebtOnTheStore", testDebitGoesIntoDebtOnTheStore},
	}
	for _, store := range limitertest.Stores(t) {
		t.Run(store.Name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) { tt.run(t, store.New) })
			}
		})
	}
}

func d(kv ...string) envoyclient.Descriptor {
	var out envoyclient.Descriptor
	for i := 0; i+1 < len(kv); i += 2 {
		out.Entries = append(out.Entries, [2]string{kv[i], kv[i+1]})
	}
	return out
}

func hits(n uint64, desc envoyclient.Descriptor) envoyclient.Descriptor {
	desc.HitsAddend = &n
	return desc
}

func (f *fixture) call(t *testing.T, hitsAddend uint32, descs ...envoyclient.Descriptor) *envoyclient.RateLimitOutcome {
	t.Helper()
	o, err := f.client.ShouldRateLimit(context.Background(), descs, hitsAddend)
	if err != nil {
		t.Fatal(err)
	}
	if o.RPCError != nil {
		t.Fatalf("RPC error: %v", o.RPCError)
	}
	return o
}

// codes lists each descriptor status as OK or OVER_LIMIT.
func statusCodes(o *envoyclient.RateLimitOutcome) string {
	var parts []string
	for _, s := range o.Response.Statuses {
		parts = append(parts, s.Code.String())
	}
	return strings.Join(parts, ",")
}

func testBucketPerSecondRefillsEvenly(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	ip := d("remote_address", "10.0.0.1")
	for i := 0; i < 3; i++ {
		if o := f.call(t, 0, ip); o.Limited {
			t.Fatalf("request %d limited", i+1)
		}
	}
	o := f.call(t, 0, ip)
	if !o.Limited || o.Status != 429 {
		t.Fatalf("4th request: %d", o.Status)
	}
	st := o.Response.Statuses[0]
	if st.CurrentLimit.RequestsPerUnit != 3 || st.CurrentLimit.Unit != rlsv3.RateLimitResponse_RateLimit_SECOND || st.LimitRemaining != 0 {
		t.Fatalf("status %+v", st)
	}
	// One token back in 333ms, said in whole seconds rounded up: Envoy
	// truncates, and the client must not be told 0.
	if got := st.DurationUntilReset.AsDuration(); got != time.Second {
		t.Fatalf("duration until reset %s, want 1s (333ms, rounded up)", got)
	}
	if o.ResponseHeaders.Get("x-ratelimit-reset") != o.ResponseHeaders.Get("retry-after") {
		t.Fatalf("X-RateLimit-Reset %q, Retry-After %q", o.ResponseHeaders.Get("x-ratelimit-reset"), o.ResponseHeaders.Get("retry-after"))
	}
	if o.ResponseHeaders.Get("retry-after") != "1" || o.ResponseHeaders.Get("x-envoy-ratelimited") != "true" {
		t.Fatalf("429 headers %v", o.ResponseHeaders)
	}
	var p struct{ Status int }
	if err := json.Unmarshal([]byte(o.Body), &p); err != nil || p.Status != 429 {
		t.Fatalf("body %q", o.Body)
	}
	// Other addresses have their own bucket; a third of a second refills one token.
	if o := f.call(t, 0, d("remote_address", "10.0.0.2")); o.Limited {
		t.Fatal("another address shares the bucket")
	}
	f.clock.Advance(time.Second / 3)
	if o := f.call(t, 0, ip); o.Limited {
		t.Fatal("no token after a third of a second")
	}
}

func testDeniedRequestConsumesNoDescriptor(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	ip := d("remote_address", "10.1.1.1")
	tight := d("generic_key", "tight")
	if o := f.call(t, 0, ip, tight); o.Limited {
		t.Fatal("first request limited")
	}
	for i := 0; i < 5; i++ {
		o := f.call(t, 0, ip, tight)
		if !o.Limited || statusCodes(o) != "OK,OVER_LIMIT" {
			t.Fatalf("denial %d: %s", i, statusCodes(o))
		}
		if o.Response.Statuses[0].LimitRemaining != 2 {
			t.Fatalf("the address bucket reports %d left, want 2 (untouched)", o.Response.Statuses[0].LimitRemaining)
		}
	}
	// envoyproxy/ratelimit would have drained the address bucket by now (its #1060).
	for i := 0; i < 2; i++ {
		if o := f.call(t, 0, ip); o.Limited {
			t.Fatalf("address request %d limited: the denials consumed it", i+1)
		}
	}
}

func testStatusesInRequestOrderWithLimitsAndHeaders(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	o := f.call(t, 0, d("unknown", "x"), d("generic_key", "loose"), d("remote_address", "10.2.2.2"), d("generic_key", "free-pass"))
	if o.Limited || len(o.Response.Statuses) != 4 {
		t.Fatalf("%v %d statuses", o.Limited, len(o.Response.Statuses))
	}
	s := o.Response.Statuses
	if s[0].CurrentLimit != nil || s[0].Code != rlsv3.RateLimitResponse_OK {
		t.Errorf("unmatched descriptor: %+v", s[0])
	}
	if s[1].CurrentLimit.Name != "loose" || s[1].CurrentLimit.RequestsPerUnit != 100 || s[1].LimitRemaining != 99 || s[1].CurrentLimit.Unit != rlsv3.RateLimitResponse_RateLimit_MINUTE {
		t.Errorf("loose: %+v", s[1])
	}
	if s[2].LimitRemaining != 2 {
		t.Errorf("address: %+v", s[2])
	}
	if s[3].LimitRemaining != math.MaxUint32 || s[3].CurrentLimit != nil {
		t.Errorf("unlimited: %+v", s[3])
	}
	// Through the ratelimit filter with enable_x_ratelimit_headers on, as
	// levy's Envoy configs set it: each X-RateLimit header once, for the
	// most restrictive descriptor (the address bucket), and no content-type
	// that would replace the upstream's.
	if len(o.Response.ResponseHeadersToAdd) != 0 {
		t.Errorf("OK carries %v: the filter makes the client's headers from the statuses", o.Response.ResponseHeadersToAdd)
	}
	// The bucket is full again in 333ms: said as 1 second, not 0.
	want := map[string]string{"x-ratelimit-limit": `3, 100;w=60;name="loose", 3;w=1`, "x-ratelimit-remaining": "2", "x-ratelimit-reset": "1"}
	for name, v := range want {
		if got := o.ResponseHeaders.Values(name); len(got) != 1 || got[0] != v {
			t.Errorf("%s: %q, want once %q", name, got, v)
		}
	}
	if o.ResponseHeaders.Has("content-type") {
		t.Error("content-type on an OK response would replace the upstream's")
	}
	// A 429 adds Retry-After and the IETF pair, still with each X-RateLimit
	// header once.
	ip := d("remote_address", "10.2.2.2")
	for range 2 {
		f.call(t, 0, ip)
	}
	o = f.call(t, 0, d("generic_key", "loose"), ip)
	if !o.Limited {
		t.Fatal("4th call from the address: not limited")
	}
	for _, name := range []string{"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after", "ratelimit-policy", "ratelimit", "content-type"} {
		if got := o.ResponseHeaders.Values(name); len(got) != 1 {
			t.Errorf("429 %s: %q, want one", name, got)
		}
	}
	if got := o.ResponseHeaders.Get("ratelimit-policy"); !strings.Contains(got, `"loose";q=100;w=60`) {
		t.Errorf("ratelimit-policy %q", got)
	}
	if o.ResponseHeaders.Get("x-ratelimit-remaining") != "0" || o.ResponseHeaders.Get("retry-after") != "1" {
		t.Errorf("429 headers %v", o.ResponseHeaders)
	}
}

func testUnknownDomainIsOKWithoutLimits(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	resp, err := f.raw.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "nope", Descriptors: []*rlv3.RateLimitDescriptor{{Entries: []*rlv3.RateLimitDescriptor_Entry{{Key: "remote_address", Value: "1"}}}}})
	if err != nil || resp.OverallCode != rlsv3.RateLimitResponse_OK || len(resp.Statuses) != 1 {
		t.Fatalf("%v %v", resp, err)
	}
}

func testBadRequestsAreInvalidArgument(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	entry := []*rlv3.RateLimitDescriptor_Entry{{Key: "remote_address", Value: "10.0.0.1"}}
	many := make([]*rlv3.RateLimitDescriptor, 100_000)
	for i := range many {
		many[i] = &rlv3.RateLimitDescriptor{Entries: entry}
	}
	wide := &rlv3.RateLimitDescriptor{}
	for range 1000 {
		wide.Entries = append(wide.Entries, entry[0])
	}
	tests := []struct {
		name string
		give *rlsv3.RateLimitRequest
		want string
	}{
		{"100,000 descriptors", &rlsv3.RateLimitRequest{Domain: "api", Descriptors: many}, "at most 64"},
		{"a descriptor of 1,000 entries", &rlsv3.RateLimitRequest{Domain: "api", Descriptors: []*rlv3.RateLimitDescriptor{wide}}, "at most 32"},
		{"empty domain", &rlsv3.RateLimitRequest{Descriptors: []*rlv3.RateLimitDescriptor{{Entries: []*rlv3.RateLimitDescriptor_Entry{{Key: "k", Value: "v"}}}}}, "domain must not be empty"},
		{"no descriptors", &rlsv3.RateLimitRequest{Domain: "api"}, "descriptor list must not be empty"},
		{"descriptor without entries", &rlsv3.RateLimitRequest{Domain: "api", Descriptors: []*rlv3.RateLimitDescriptor{{}}}, "descriptor 0 has no entries"},
		{"override with unknown unit", &rlsv3.RateLimitRequest{Domain: "api", Descriptors: []*rlv3.RateLimitDescriptor{{Entries: []*rlv3.RateLimitDescriptor_Entry{{Key: "k", Value: "v"}}, Limit: &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1}}}}, "unit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.raw.ShouldRateLimit(context.Background(), tt.give)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want InvalidArgument mentioning %q", err, tt.want)
			}
		})
	}
}

func testHitsAddendRequestAndPerDescriptor(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	loose := d("generic_key", "loose")
	if o := f.call(t, 40, loose); o.Response.Statuses[0].LimitRemaining != 60 {
		t.Fatalf("hits_addend 40: remaining %d", o.Response.Statuses[0].LimitRemaining)
	}
	// Per-descriptor hits_addend overrides the request's; 0 checks only.
	o := f.call(t, 40, hits(0, loose), hits(1, d("remote_address", "10.9.9.9")))
	if o.Limited || o.Response.Statuses[0].LimitRemaining != 60 {
		t.Fatalf("hits 0: %v remaining %d, want a check that takes nothing", o.Limited, o.Response.Statuses[0].LimitRemaining)
	}
	if !strings.Contains(statusCodes(f.call(t, 0, hits(5, d("generic_key", "burst")))), "OVER_LIMIT") {
		t.Fatal("5 hits on a burst of 4 allowed")
	}
	if o := f.call(t, 0, hits(4, d("generic_key", "burst"))); o.Limited {
		t.Fatal("4 hits on a burst of 4 denied")
	}
	if o := f.call(t, 61, loose); !o.Limited {
		t.Fatal("61 hits with 60 left allowed")
	}
}

func testDayLimitIsACalendarQuota(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	daily := d("generic_key", "daily")
	f.call(t, 0, daily)
	f.call(t, 0, daily)
	o := f.call(t, 0, daily)
	if !o.Limited {
		t.Fatal("3rd of 2 per day allowed")
	}
	midnight := time.Date(2026, time.March, 15, 0, 0, 0, 0, time.UTC)
	if got, want := o.Response.Statuses[0].DurationUntilReset.AsDuration(), midnight.Sub(f.clock.Now()); got != want {
		t.Fatalf("reset in %s, want %s (UTC midnight)", got, want)
	}
	f.clock.Set(midnight)
	if o := f.call(t, 0, daily); o.Limited {
		t.Fatal("limited after UTC midnight")
	}
}

func testUnlimitedZeroAndReplaces(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	for i := 0; i < 50; i++ {
		if o := f.call(t, 0, d("generic_key", "free-pass")); o.Limited {
			t.Fatal("unlimited limited")
		}
	}
	if o := f.call(t, 0, d("generic_key", "blocked")); !o.Limited {
		t.Fatal("requests_per_unit 0 allowed")
	}
	// "loose" replaces "tight": together, tight is not applied.
	for i := 0; i < 3; i++ {
		o := f.call(t, 0, d("generic_key", "tight"), d("generic_key", "loose"))
		if o.Limited || o.Response.Statuses[0].CurrentLimit != nil {
			t.Fatalf("request %d: %s, tight should be replaced", i+1, statusCodes(o))
		}
	}
}

func testShadowModeReportsOKButCounts(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	watched := d("generic_key", "watched")
	for i := 0; i < 3; i++ {
		if o := f.call(t, 0, watched); o.Limited || o.Response.OverallCode != rlsv3.RateLimitResponse_OK {
			t.Fatalf("shadow rule limited request %d", i+1)
		}
	}
	// Global shadow: the tight limit is over, yet OK.
	f.srv.Swap(snapshot(t, f.cfg, true))
	tight := d("generic_key", "tight")
	f.call(t, 0, tight)
	o := f.call(t, 0, tight)
	if o.Limited || o.Response.OverallCode != rlsv3.RateLimitResponse_OK || o.Response.Statuses[0].LimitRemaining != 0 {
		t.Fatalf("global shadow: %v %s", o.Limited, statusCodes(o))
	}
	f.srv.Swap(snapshot(t, f.cfg, false))
	if o := f.call(t, 0, tight); !o.Limited {
		t.Fatal("tight not counted while in shadow mode")
	}
}

func testLimitOverrideFromEnvoyIsHonoured(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	desc := d("remote_address", "10.3.3.3")
	desc.Limit = &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit_HOUR}
	f.call(t, 0, desc)
	o := f.call(t, 0, desc)
	if !o.Limited || o.Response.Statuses[0].CurrentLimit.Unit != rlsv3.RateLimitResponse_RateLimit_HOUR {
		t.Fatalf("override 1/hour: %s %+v", statusCodes(o), o.Response.Statuses[0])
	}
}

func testPlanAwareRouteLimitsAndCosts(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter, levyYAML)
	count := func(consumer, route string) int {
		n := 0
		for i := 0; i < 10; i++ {
			if o := f.call(t, 0, d("consumer", consumer, "route", route)); !o.Limited {
				n++
			}
		}
		return n
	}
	if got := count("small", "items"); got != 2 {
		t.Errorf("free plan items: %d allowed, want 2", got)
	}
	if got := count("big", "items"); got != 5 {
		t.Errorf("pro plan items: %d allowed, want 5", got)
	}
	// search has no plan rate: the rule's own 1/s, at a cost of 3 units:
	// more than the bucket holds.
	if got := count("small", "search"); got != 0 {
		t.Errorf("free plan search at cost 3 on a bucket of 1: %d allowed", got)
	}
	if got := count("stranger", "items"); got != 1 {
		t.Errorf("unknown consumer: %d allowed, want the rule's own 1", got)
	}
	o := f.call(t, 0, d("consumer", "big", "route", "items"))
	if o.Response.Statuses[0].CurrentLimit.RequestsPerUnit != 5 {
		t.Errorf("current_limit %+v, want the plan's 5", o.Response.Statuses[0].CurrentLimit)
	}
}

// A hits_addend large enough to overflow the bucket arithmetic is refused,
// on every store alike.
func TestHugeHitsAddendIsInvalidArgument(t *testing.T) {
	for _, store := range limitertest.Stores(t) {
		t.Run(store.Name, func(t *testing.T) {
			f := start(t, store.New, levyYAML)
			huge := uint64(1) << 50
			_, err := f.raw.ShouldRateLimit(context.Background(), envoyclient.BuildRateLimitRequest("api", []envoyclient.Descriptor{hits(huge, d("remote_address", "1.2.3.4"))}, 0))
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("hits_addend 2^50: %v", err)
			}
			if o := f.call(t, 0, d("remote_address", "1.2.3.4")); o.Limited {
				t.Fatal("the refused request consumed")
			}
		})
	}
}

func TestLimitOverrideUnitMultiplier(t *testing.T) {
	f := start(t, limitertest.Local, levyYAML)
	desc := d("remote_address", "10.4.4.4")
	desc.Limit = &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 2, Unit: typev3.RateLimitUnit_MINUTE, UnitMultiplier: wrapperspb.UInt32(5)}
	f.call(t, 0, desc)
	f.call(t, 0, desc)
	if o := f.call(t, 0, desc); !o.Limited {
		t.Fatal("3rd of 2 per 5 minutes allowed")
	}
	f.clock.Advance(time.Minute) // per minute, one token would be back
	if o := f.call(t, 0, desc); !o.Limited {
		t.Fatal("allowed after a minute: the multiplier was ignored")
	}
	f.clock.Advance(90 * time.Second) // 2.5 minutes: one token per 2.5 minutes
	if o := f.call(t, 0, desc); o.Limited {
		t.Fatal("denied after 2.5 minutes")
	}
	// A multiplier that would make the period overflow, or outgrow a
	// year, is refused, not wrapped.
	for _, tt := range []struct {
		unit typev3.RateLimitUnit
		mult uint32
	}{{typev3.RateLimitUnit_HOUR, math.MaxUint32}, {typev3.RateLimitUnit_DAY, 367}, {typev3.RateLimitUnit_SECOND, math.MaxUint32}} {
		desc.Limit = &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 2, Unit: tt.unit, UnitMultiplier: wrapperspb.UInt32(tt.mult)}
		o, err := f.client.ShouldRateLimit(context.Background(), []envoyclient.Descriptor{desc}, 0)
		if err != nil || status.Code(o.RPCError) != codes.InvalidArgument {
			t.Fatalf("%s x %d: %v %v, want InvalidArgument", tt.unit, tt.mult, err, o.RPCError)
		}
	}
}

// Per-rule hits, as envoyproxy/ratelimit counts them: total, within,
// near (past 80%), over, by the rule's path in its domain.
func TestRuleMetricsCountHitsByResult(t *testing.T) {
	f := start(t, limitertest.Local, levyYAML)
	ip := d("remote_address", "10.9.9.9")
	for range 4 { // 3 a second: within, within, near (and within), over
		f.call(t, 0, ip)
	}
	got := map[string]float64{}
	families, err := f.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != "levy_ratelimit_rule_hits_total" {
			continue
		}
		for _, m := range fam.GetMetric() {
			var rule, result string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "rule":
					rule = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			if strings.Contains(rule, "remote_address") {
				got[result] = m.GetCounter().GetValue()
			}
		}
	}
	want := map[string]float64{"total_hits": 4, "within_limit": 3, "near_limit": 1, "over_limit": 1, "shadow_mode": 0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rule hits %v, want %v", got, want)
	}
}
