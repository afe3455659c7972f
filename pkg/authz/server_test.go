package authz_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/envoyclient/envoytest"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/server/servertest"
	"github.com/levyhq/levy/pkg/usage"
	"github.com/levyhq/levy/pkg/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testConfig = `
dev_mode: true
plans:
  free:
    model: freemium
    rate: {requests: 10, per: minute, burst: 3}
    quota: {requests: 5, period: month}
  pro:
    model: tiered
    rate: {requests: 100, per: 1s, burst: 100}
    quota: {requests: 1000, period: month}
    costs: {/v1/search: 5}
  payg:
    model: payg
    rate: {requests: 100, per: 1s, burst: 100}
    quota: {requests: 3, period: month, enforcement: soft, cap: 6}
  open:
    model: tiered
consumers:
  - {id: free-co, plan: free, keys: [{id: free-key, key: KEY_FREE}]}
  - {id: pro-co, plan: pro, keys: [{id: pro-key, key: KEY_PRO}, {id: old-key, key: KEY_REVOKED, status: revoked}, {id: temp-key, key: KEY_EXPIRED, expires_at: 2026-03-01T00:00:00Z}]}
  - {id: payg-co, plan: payg, keys: [{id: payg-key, key: KEY_PAYG}]}
  - {id: gone-co, plan: pro, status: suspended, keys: [{id: gone-key, key: KEY_SUSPENDED}]}
  - {id: open-co, plan: open, keys: [{id: open-key, key: KEY_OPEN}]}
`

type fixture struct {
	keys    map[string]string
	clock   *limitertest.Clock
	lim     limiter.Limiter
	srv     *authz.Server
	cfgText string
	client  *envoyclient.AuthzClient
	conn    *grpc.ClientConn
}

// start serves a real authz server over gRPC on loopback, on a limiter
// from newLimiter (nil: a broken one) with a settable clock, and returns an
// Envoy-faithful client.
func start(t *testing.T, newLimiter limitertest.Factory) *fixture {
	t.Helper()
	f := &fixture{clock: limitertest.NewClock(limitertest.Start)}
	f.cfgText, f.keys = servertest.WithKeys(t, testConfig)
	snap := servertest.Snapshot(t, f.cfgText)
	var lim limiter.Limiter = brokenLimiter{}
	if newLimiter != nil {
		lim = newLimiter(t, f.clock)
	}
	f.lim = lim
	f.srv = authz.New(authz.Config{Snapshot: snap, Limiter: lim, Log: zaptest.NewLogger(t), Clock: f.clock.Now})
	// Requests read and answers written as levy serve does
	// (server.GRPCOptions), so that every behaviour is also a test of
	// authz.Register, Decode and Encode.
	codec := []grpc.ServerOption{grpc.ForceServerCodecV2(wire.Codec{Decode: authz.Decode, Encode: authz.Encode})}
	conn := envoytest.LoopbackWith(t, codec, func(gs *grpc.Server) { authz.Register(gs, f.srv) })
	// Envoy's 0.25 s would test the machine's load, not levy: the tests
	// check answers (a hung call still fails, after a minute).
	f.client = envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: time.Minute})
	f.conn = conn
	return f
}

func (f *fixture) check(t *testing.T, path string, headers ...envoyclient.Header) *envoyclient.Outcome {
	t.Helper()
	o, err := f.client.Check(context.Background(), &envoyclient.Request{Path: path, Headers: headers})
	if err != nil {
		t.Fatal(err)
	}
	if o.RPCError != nil {
		t.Fatalf("Check returned an RPC error: %v", o.RPCError)
	}
	return o
}

func (f *fixture) withKey(t *testing.T, name, path string) *envoyclient.Outcome {
	t.Helper()
	return f.check(t, path, envoyclient.Header{Name: "X-Api-Key", Value: f.keys[name]})
}

// TestBehaviour runs every behaviour test on the local store, on Redis
// and on a Redis Cluster: the same table, so the stores cannot drift.
func TestBehaviour(t *testing.T) {
	tests := []struct {
		name string
		run  func(*testing.T, limitertest.Factory)
	}{
		{"AllowTellsUpstreamWhoIsCallingAndHidesTheKey", testAllowTellsUpstreamWhoIsCallingAndHidesTheKey},
		{"BearerKeyIsAcceptedAndRemoved", testBearerKeyIsAcceptedAndRemoved},
		{"EveryKeyHeaderIsRemovedNotOnlyTheOneUsed", testEveryKeyHeaderIsRemovedNotOnlyTheOneUsed},
		{"ConsumerOnARemovedPlanIsDeniedNotAnRPCError", testConsumerOnARemovedPlanIsDeniedNotAnRPCError},
		{"DenialsCarryStatusReasonAndProblemBody", testDenialsCarryStatusReasonAndProblemBody},
		{"RateLimitDeniesWithRetryAfterThenRefills", testRateLimitDeniesWithRetryAfterThenRefills},
		{"HardQuotaDeniesUntilNextMonthAndDeniedRequestsCostNothing", testHardQuotaDeniesUntilNextMonthAndDeniedRequestsCostNothing},
		{"PaygPastIncludedUnitsIsAllowedAndCountedUpToTheCap", testPaygPastIncludedUnitsIsAllowedAndCountedUpToTheCap},
		{"RouteCostsWeighTheQuota", testRouteCostsWeighTheQuota},
		{"PlanWithoutQuotaStillCountsUsage", testPlanWithoutQuotaStillCountsUsage},
		{"PlanChangeAppliesAtOnceWithoutNewKey", testPlanChangeAppliesAtOnceWithoutNewKey},
		{"MalformedRequestsAreDeniedNotPanics", testMalformedRequestsAreDeniedNotPanics},
		{"RawHeadersCarryTheKeyAsTheHeadersMapDoes", testRawHeadersCarryTheKeyAsTheHeadersMapDoes},
		{"ParallelChecksNeverExceedTheBucket", testParallelChecksNeverExceedTheBucket},
		{"AllowCarriesTheLedgerWindowItsUnitsWereCountedIn", testAllowCarriesTheLedgerWindowItsUnitsWereCountedIn},
		{"WindowAtAnEdgeIsAdmissionsNotTheRequestStart", testWindowAtAnEdgeIsAdmissionsNotTheRequestStart},
		{"AllowCarriesTheQuotaCounterAndPeriodItWasCountedIn", testAllowCarriesTheQuotaCounterAndPeriodItWasCountedIn},
	}
	for _, store := range limitertest.Stores(t) {
		t.Run(store.Name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) { tt.run(t, store.New) })
			}
		})
	}
}

func (f *fixture) usage(t *testing.T, key string) int64 {
	t.Helper()
	return limitertest.Usage(t, f.lim, limiter.Limit{Kind: limiter.Quota, Name: "usage", Key: key, Unit: plan.Month})
}

type problem struct {
	Status int    `json:"status"`
	Reason string `json:"reason"`
	Detail string `json:"detail"`
}

func problemOf(t *testing.T, o *envoyclient.Outcome) problem {
	t.Helper()
	if ct := o.ResponseHeaders.Get("content-type"); ct != "application/problem+json" {
		t.Fatalf("content-type %q, want application/problem+json", ct)
	}
	var p problem
	if err := json.Unmarshal([]byte(o.Body), &p); err != nil {
		t.Fatalf("body %q: %v", o.Body, err)
	}
	if p.Status != o.Status {
		t.Fatalf("problem status %d, HTTP status %d", p.Status, o.Status)
	}
	return p
}

func testAllowTellsUpstreamWhoIsCallingAndHidesTheKey(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	o := f.check(t, "/v1/items?page=2",
		envoyclient.Header{Name: "x-api-key", Value: f.keys["KEY_PRO"]},
		envoyclient.Header{Name: "X-Consumer-Id", Value: "someone-else"}, // smuggled by the client
		envoyclient.Header{Name: "x-consumer-plan", Value: "enterprise"},
	)
	if !o.Allowed || o.Status != 200 {
		t.Fatalf("status %d, want allowed: %s", o.Status, o.Body)
	}
	up := o.UpstreamHeaders
	for name, want := range map[string]string{"x-consumer-id": "pro-co", "x-consumer-plan": "pro", "x-credential-id": "pro-key"} {
		if got := up.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("upstream %s = %q, want exactly %q", name, got, want)
		}
	}
	if up.Has("x-api-key") {
		t.Error("the API key reached the upstream")
	}
	if o.ResponseHeaders.Get("x-ratelimit-limit") != "100" || o.ResponseHeaders.Get("x-ratelimit-remaining") != "99" {
		t.Errorf("rate-limit headers %v", o.ResponseHeaders)
	}
	if o.ResponseHeaders.Has("ratelimit-policy") {
		t.Errorf("the IETF pair on an allow: %v", o.ResponseHeaders)
	}
	md := o.DynamicMetadata.GetFields()
	for k, want := range map[string]string{"consumer": "pro-co", "plan": "pro", "key_id": "pro-key"} {
		if got := md[k].GetStringValue(); got != want {
			t.Errorf("dynamic metadata %s = %q, want %q", k, got, want)
		}
	}
}

func testEveryKeyHeaderIsRemovedNotOnlyTheOneUsed(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	o := f.check(t, "/", envoyclient.Header{Name: "x-api-key", Value: f.keys["KEY_PRO"]},
		envoyclient.Header{Name: "Authorization", Value: "Bearer " + f.keys["KEY_FREE"]})
	if !o.Allowed || o.UpstreamHeaders.Get("x-consumer-id") != "pro-co" {
		t.Fatalf("status %d consumer %q", o.Status, o.UpstreamHeaders.Get("x-consumer-id"))
	}
	if o.UpstreamHeaders.Has("x-api-key") || o.UpstreamHeaders.Has("authorization") {
		t.Fatalf("a key reached the upstream: %v", o.UpstreamHeaders)
	}
	// An Authorization header that is not a levy key is the upstream's.
	o = f.check(t, "/", envoyclient.Header{Name: "x-api-key", Value: f.keys["KEY_PRO"]}, envoyclient.Header{Name: "Authorization", Value: "Basic dXNlcjpwYXNz"})
	if o.UpstreamHeaders.Get("authorization") != "Basic dXNlcjpwYXNz" {
		t.Fatalf("the upstream's own credentials were removed: %v", o.UpstreamHeaders)
	}
}

func testConsumerOnARemovedPlanIsDeniedNotAnRPCError(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	snap := servertest.Snapshot(t, f.cfgText)
	var kept []*plan.Plan
	for _, name := range []string{"free", "pro", "open"} { // payg is gone
		p, _ := snap.Catalog.Get(name)
		kept = append(kept, p)
	}
	cat, err := plan.NewCatalog(kept...)
	if err != nil {
		t.Fatal(err)
	}
	snap.Catalog = cat
	f.srv.Swap(snap)
	o := f.withKey(t, "KEY_PAYG", "/")
	if o.Allowed || o.Status != 503 || problemOf(t, o).Reason != authz.ReasonPlanUnavailable {
		t.Fatalf("status %d allowed %v %s", o.Status, o.Allowed, o.Body)
	}
}

func testBearerKeyIsAcceptedAndRemoved(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	o := f.check(t, "/", envoyclient.Header{Name: "Authorization", Value: "Bearer " + f.keys["KEY_PRO"]})
	if !o.Allowed {
		t.Fatalf("bearer key denied: %d %s", o.Status, o.Body)
	}
	if o.UpstreamHeaders.Has("authorization") {
		t.Error("the bearer key reached the upstream")
	}
}

func testDenialsCarryStatusReasonAndProblemBody(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	bad := []byte(f.keys["KEY_PRO"])
	bad[12] ^= 1
	other, _ := apikey.Generate("levy_test")
	tests := []struct {
		name    string
		headers []envoyclient.Header
		status  int
		reason  string
	}{
		{"no key", nil, 401, authz.ReasonMissingKey},
		{"empty key header", []envoyclient.Header{{Name: "x-api-key", Value: "  "}}, 401, authz.ReasonMissingKey},
		{"basic auth is not a key", []envoyclient.Header{{Name: "authorization", Value: "Basic dXNlcjpwYXNz"}}, 401, authz.ReasonMissingKey},
		{"typo in the key", []envoyclient.Header{{Name: "x-api-key", Value: string(bad)}}, 401, authz.ReasonMalformedKey},
		{"garbage", []envoyclient.Header{{Name: "x-api-key", Value: "'; DROP TABLE keys;--"}}, 401, authz.ReasonMalformedKey},
		{"10 KB key", []envoyclient.Header{{Name: "x-api-key", Value: strings.Repeat("k", 10<<10)}}, 401, authz.ReasonMalformedKey},
		{"invalid UTF-8 (Envoy sanitises to !)", []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_PRO"][:20] + "\xff\xfe" + f.keys["KEY_PRO"][22:]}}, 401, authz.ReasonMalformedKey},
		{"two keys joined by Envoy", []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_PRO"]}, {Name: "x-api-key", Value: f.keys["KEY_FREE"]}}, 401, authz.ReasonMalformedKey},
		{"well formed but unknown", []envoyclient.Header{{Name: "x-api-key", Value: other}}, 401, authz.ReasonUnknownKey},
		{"revoked", []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_REVOKED"]}}, 403, authz.ReasonRevokedKey},
		{"expired", []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_EXPIRED"]}}, 403, authz.ReasonExpiredKey},
		{"suspended consumer", []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_SUSPENDED"]}}, 403, authz.ReasonSuspended},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := f.check(t, "/v1/items", tt.headers...)
			if o.Allowed || o.Status != tt.status {
				t.Fatalf("status %d allowed=%v, want %d", o.Status, o.Allowed, tt.status)
			}
			if p := problemOf(t, o); p.Reason != tt.reason {
				t.Fatalf("reason %q, want %q (%s)", p.Reason, tt.reason, p.Detail)
			}
			if tt.status == 401 && !strings.HasPrefix(o.ResponseHeaders.Get("www-authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: %v", o.ResponseHeaders)
			}
			if strings.Contains(o.Body, f.keys["KEY_PRO"]) {
				t.Error("the body echoes the key")
			}
		})
	}
}

func testRateLimitDeniesWithRetryAfterThenRefills(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	for i := 0; i < 3; i++ {
		if o := f.withKey(t, "KEY_FREE", "/v1/items"); !o.Allowed {
			t.Fatalf("request %d of the burst denied", i+1)
		}
	}
	o := f.withKey(t, "KEY_FREE", "/v1/items")
	if o.Status != 429 || problemOf(t, o).Reason != authz.ReasonRateLimited {
		t.Fatalf("4th request: %d %s", o.Status, o.Body)
	}
	h := o.ResponseHeaders
	if h.Get("retry-after") != "6" || h.Get("x-ratelimit-remaining") != "0" || h.Get("x-ratelimit-reset") != "6" || h.Get("x-ratelimit-limit") != "10" {
		t.Fatalf("429 headers: %v", h)
	}
	if h.Get("ratelimit") != `"rate";r=0;t=6` {
		t.Fatalf("RateLimit %q", h.Get("ratelimit"))
	}
	if got := h.Get("ratelimit-policy"); got != `"rate";q=10;w=60, "quota";q=5;w=2678400` {
		t.Fatalf("RateLimit-Policy %q", got)
	}
	if o.DynamicMetadata.GetFields()["consumer"].GetStringValue() != "free-co" {
		t.Error("a 429 does not name the consumer for the access log")
	}
	f.clock.Advance(6 * time.Second)
	if o := f.withKey(t, "KEY_FREE", "/v1/items"); !o.Allowed {
		t.Fatalf("after 6s: %d", o.Status)
	}
}

func testHardQuotaDeniesUntilNextMonthAndDeniedRequestsCostNothing(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	for i := 0; i < 5; i++ {
		f.clock.Advance(time.Minute) // stay clear of the rate limit
		if o := f.withKey(t, "KEY_FREE", "/v1/items"); !o.Allowed {
			t.Fatalf("request %d of a quota of 5 denied: %s", i+1, o.Body)
		}
	}
	f.clock.Advance(time.Minute)
	o := f.withKey(t, "KEY_FREE", "/v1/items")
	if o.Status != 429 || problemOf(t, o).Reason != authz.ReasonQuota {
		t.Fatalf("6th request: %d %s", o.Status, o.Body)
	}
	// Mid-March start: the quota resets on April 1st, 00:00 UTC.
	wantReset := time.Date(2026, time.April, 1, 0, 0, 0, 0, time.UTC).Sub(f.clock.Now())
	if got := o.ResponseHeaders.Get("retry-after"); got != itoa(limiter.Seconds(wantReset)) {
		t.Fatalf("Retry-After %s, want %d", got, limiter.Seconds(wantReset))
	}
	// Quota denials do not drain the rate bucket.
	for i := 0; i < 10; i++ {
		if o := f.withKey(t, "KEY_FREE", "/v1/items"); problemOf(t, o).Reason != authz.ReasonQuota {
			t.Fatalf("denial %d: %s, want quota (rate tokens were consumed by denied requests)", i, o.Body)
		}
	}
	f.clock.Set(time.Date(2026, time.April, 1, 0, 0, 0, 0, time.UTC))
	if o := f.withKey(t, "KEY_FREE", "/v1/items"); !o.Allowed {
		t.Fatalf("April 1st: %d %s", o.Status, o.Body)
	}
}

func testPaygPastIncludedUnitsIsAllowedAndCountedUpToTheCap(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	for i := 1; i <= 6; i++ {
		o := f.withKey(t, "KEY_PAYG", "/v1/items")
		if !o.Allowed {
			t.Fatalf("request %d (included 3, cap 6) denied: %s", i, o.Body)
		}
	}
	used := f.usage(t, usage.QuotaKey("payg-co"))
	if used != 6 {
		t.Fatalf("usage %d, want 6 (3 included + 3 overage)", used)
	}
	o := f.withKey(t, "KEY_PAYG", "/v1/items")
	if o.Status != 429 || problemOf(t, o).Reason != authz.ReasonSpendCap {
		t.Fatalf("7th request past the cap: %d %s", o.Status, o.Body)
	}
	if used := f.usage(t, usage.QuotaKey("payg-co")); used != 6 {
		t.Fatalf("a denied request was counted: usage %d", used)
	}
}

func testRouteCostsWeighTheQuota(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	f.withKey(t, "KEY_PRO", "/v1/search?q=x")
	f.withKey(t, "KEY_PRO", "/v1/items")
	f.withKey(t, "KEY_PRO", "/v1/search/deep")
	if used := f.usage(t, usage.QuotaKey("pro-co")); used != 11 {
		t.Fatalf("usage %d, want 5+1+5", used)
	}
}

func testPlanWithoutQuotaStillCountsUsage(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	for i := 0; i < 3; i++ {
		if o := f.withKey(t, "KEY_OPEN", "/"); !o.Allowed || o.ResponseHeaders.Has("x-ratelimit-limit") {
			t.Fatalf("unlimited plan: %d %v", o.Status, o.ResponseHeaders)
		}
	}
	if used := f.usage(t, usage.QuotaKey("open-co")); used != 3 {
		t.Fatalf("usage %d, want 3", used)
	}
}

func testPlanChangeAppliesAtOnceWithoutNewKey(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	for i := 0; i < 3; i++ {
		f.withKey(t, "KEY_FREE", "/")
	}
	if o := f.withKey(t, "KEY_FREE", "/"); o.Status != 429 {
		t.Fatalf("free plan not limited: %d", o.Status)
	}
	f.srv.Swap(servertest.Snapshot(t, strings.Replace(f.cfgText, "{id: free-co, plan: free", "{id: free-co, plan: pro", 1)))
	o := f.withKey(t, "KEY_FREE", "/")
	if !o.Allowed || o.UpstreamHeaders.Get("x-consumer-plan") != "pro" {
		t.Fatalf("after upgrade: %d plan %q", o.Status, o.UpstreamHeaders.Get("x-consumer-plan"))
	}
}

func testMalformedRequestsAreDeniedNotPanics(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	tests := []struct {
		name string
		give *authv3.CheckRequest
	}{
		{"empty request", &authv3.CheckRequest{}},
		{"no http", &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}},
		{"no headers", envoyclient.BuildCheckRequest(&envoyclient.Request{Path: "/"}, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := f.srv.Check(context.Background(), tt.give)
			if err != nil {
				t.Fatalf("RPC error %v: a bad request is a denial", err)
			}
			if resp.GetDeniedResponse().GetStatus().GetCode() != 401 {
				t.Fatalf("status %v, want 401", resp.GetDeniedResponse().GetStatus())
			}
		})
	}
	huge := f.check(t, "/"+strings.Repeat("p", 10<<10), envoyclient.Header{Name: "x-api-key", Value: f.keys["KEY_PRO"]}, envoyclient.Header{Name: "x-big", Value: strings.Repeat("v", 10<<10)})
	if !huge.Allowed {
		t.Fatalf("10 KB path and header: %d %s", huge.Status, huge.Body)
	}
}

// testRawHeadersCarryTheKeyAsTheHeadersMapDoes: with encode_raw_headers,
// Envoy sends the headers in header_map, one entry per line, not in the
// headers map: the key is found there, removed, and a key header sent
// twice is as malformed as Envoy's joined one.
func testRawHeadersCarryTheKeyAsTheHeadersMapDoes(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	raw := envoyclient.NewAuthzClient(f.conn, envoyclient.AuthzConfig{Timeout: time.Minute, EncodeRawHeaders: true})
	check := func(headers ...envoyclient.Header) *envoyclient.Outcome {
		t.Helper()
		o, err := raw.Check(context.Background(), &envoyclient.Request{Path: "/v1/search", Headers: headers})
		if err != nil || o.RPCError != nil {
			t.Fatalf("Check: %v %v", err, o.RPCError)
		}
		return o
	}
	o := check(envoyclient.Header{Name: "x-api-key", Value: f.keys["KEY_PRO"]}, envoyclient.Header{Name: "accept", Value: "*/*"})
	if !o.Allowed || o.UpstreamHeaders.Get("x-consumer-id") != "pro-co" || o.UpstreamHeaders.Has("x-api-key") {
		t.Fatalf("status %d, upstream %v: want pro-co allowed without its key", o.Status, o.UpstreamHeaders)
	}
	if used := f.usage(t, usage.QuotaKey("pro-co")); used != 5 { // the path is read too: /v1/search costs 5
		t.Errorf("usage %d after a search, want 5", used)
	}
	o = check(envoyclient.Header{Name: "authorization", Value: "Bearer " + f.keys["KEY_PRO"]})
	if !o.Allowed || o.UpstreamHeaders.Has("authorization") {
		t.Fatalf("bearer key in header_map: status %d, upstream %v", o.Status, o.UpstreamHeaders)
	}
	o = check(envoyclient.Header{Name: "x-api-key", Value: f.keys["KEY_PRO"]}, envoyclient.Header{Name: "x-api-key", Value: f.keys["KEY_PRO"]})
	if o.Allowed || o.Status != 401 || !strings.Contains(string(o.Body), authz.ReasonMalformedKey) {
		t.Fatalf("a key header sent twice: status %d %s, want 401 %s", o.Status, o.Body, authz.ReasonMalformedKey)
	}
	if o := check(); o.Status != 401 || !strings.Contains(string(o.Body), authz.ReasonMissingKey) {
		t.Fatalf("no headers: status %d %s, want 401 %s", o.Status, o.Body, authz.ReasonMissingKey)
	}
}

// TestRegisterServesWithoutLevysCodec: authz.Register on a server of
// grpc-go's defaults (its proto codec) reads requests all the same, not
// an RPC error that Envoy's failure_mode_allow would let through.
func TestRegisterServesWithoutLevysCodec(t *testing.T) {
	f := start(t, limitertest.Local)
	conn := envoytest.Loopback(t, func(g *grpc.Server) { authz.Register(g, f.srv) })
	c := envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: time.Minute, FailureModeAllow: true})
	for key, allowed := range map[string]bool{f.keys["KEY_PRO"]: true, "levy_not-a-key": false} {
		o, err := c.Check(context.Background(), &envoyclient.Request{Path: "/", Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
		if err != nil || o.RPCError != nil || o.Allowed != allowed {
			t.Fatalf("key %q: %v %v, allowed %v, want %v", key, err, o.RPCError, o.Allowed, allowed)
		}
	}
}

// bytesCodec sends a []byte as the message and reads the answer's bytes.
type bytesCodec struct{}

func (bytesCodec) Name() string { return "proto" }
func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (bytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// TestUnreadableRequestIsAnRPCError: bytes no CheckRequest is made of are
// answered as gRPC answers a message it cannot read, Internal (Envoy's
// failure mode decides), and the next request on the connection is
// answered as usual.
func TestUnreadableRequestIsAnRPCError(t *testing.T) {
	f := start(t, limitertest.Local)
	for name, b := range map[string][]byte{
		"cut short":           {0x0a, 0x05, 0x22, 0x03},
		"path not UTF-8":      {0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x22, 0x01, 0xc0},
		"field number zero":   {0x02, 0x00},
		"end group unopened":  {0x0c},
		"length past the end": {0x0a, 0xff, 0xff, 0x03},
	} {
		var out []byte
		err := f.conn.Invoke(context.Background(), "/envoy.service.auth.v3.Authorization/Check", b, &out, grpc.ForceCodecV2(bytesCodec{}))
		if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "unmarshal") {
			t.Errorf("%s: %v, want Internal: failed to unmarshal", name, err)
		}
	}
	if o := f.withKey(t, "KEY_PRO", "/"); !o.Allowed {
		t.Fatalf("after unreadable requests: status %d %s", o.Status, o.Body)
	}
}

type brokenLimiter struct{}

func (brokenLimiter) Decide(context.Context, []limiter.Limit) (limiter.Decision, error) {
	return limiter.Decision{}, errors.New("store unreachable")
}

// An unreachable store (with on_store_error: deny) is a 503 the client can
// retry, with a body that says so: a response, not an RPC error.
func TestStoreFailureDeniesWith503(t *testing.T) {
	f := start(t, nil)
	o := f.withKey(t, "KEY_PRO", "/")
	if o.Allowed || o.Status != 503 || o.ResponseHeaders.Get("retry-after") != "1" {
		t.Fatalf("status %d allowed=%v headers %v", o.Status, o.Allowed, o.ResponseHeaders)
	}
	if p := problemOf(t, o); p.Reason != authz.ReasonStoreUnavailable {
		t.Fatalf("reason %q", p.Reason)
	}
}

func testParallelChecksNeverExceedTheBucket(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter) // the clock is frozen: no refill
	var allowed, limited atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := f.client.Check(context.Background(), &envoyclient.Request{Headers: []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_PRO"]}}})
			switch {
			case err != nil || o.RPCError != nil:
			case o.Allowed:
				allowed.Add(1)
			case o.Status == 429:
				limited.Add(1)
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 100 || limited.Load() != 900 {
		t.Fatalf("allowed %d, limited %d of 1000 on a bucket of 100", allowed.Load(), limited.Load())
	}
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
