package authz_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/server/servertest"
	"github.com/levyhq/levy/pkg/usage"
)

// ledgerWindow reads, without adding to it, the ledger window of consumer
// on plan at the fixture's clock: its start and its units.
func (f *fixture) ledgerWindow(t *testing.T, consumer, planName string) (time.Time, int64) {
	t.Helper()
	d, err := f.lim.Decide(context.Background(), []limiter.Limit{{Kind: limiter.Ledger, Name: "ledger",
		Key: f.ledgerKey(t, consumer, planName), WindowSize: f.srv.Snapshot().LedgerWindow}})
	if err != nil {
		t.Fatal(err)
	}
	return d.Statuses[0].PeriodStart, d.Statuses[0].Used
}

func (f *fixture) ledgerKey(t *testing.T, consumer, planName string) string {
	t.Helper()
	p, ok := f.srv.Snapshot().Catalog.Get(planName)
	if !ok {
		t.Fatalf("no plan %q", planName)
	}
	return usage.LedgerKey(consumer, usage.TermsOf(p))
}

// windowOf is the window and ledger an ext_authz dynamic metadata holds,
// failing unless both are there with their kinds.
func windowOf(t *testing.T, md *structpb.Struct) (int64, string) {
	t.Helper()
	w, ok := md.GetFields()[authz.MetadataWindow].GetKind().(*structpb.Value_NumberValue)
	if !ok {
		t.Fatalf("metadata %v: no number %q", md, authz.MetadataWindow)
	}
	l, ok := md.GetFields()[authz.MetadataLedger].GetKind().(*structpb.Value_StringValue)
	if !ok {
		t.Fatalf("metadata %v: no string %q", md, authz.MetadataLedger)
	}
	if float64(int64(w.NumberValue)) != w.NumberValue {
		t.Fatalf("window %v is not whole seconds", w.NumberValue)
	}
	return int64(w.NumberValue), l.StringValue
}

// The access-log receiver settles a request in the ledger window it was
// counted in: the allow tells Envoy that window and the ledger's key, and
// Envoy's access log carries them back in the ext_authz filter metadata.
// Denials count nothing and say nothing of a window.
func testAllowCarriesTheLedgerWindowItsUnitsWereCountedIn(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	o := f.withKey(t, "KEY_PRO", "/v1/search") // costs 5
	if !o.Allowed {
		t.Fatalf("status %d: %s", o.Status, o.Body)
	}
	window, ledger := windowOf(t, o.DynamicMetadata)
	start, units := f.ledgerWindow(t, "pro-co", "pro")
	if window != start.Unix() || units != 5 {
		t.Fatalf("metadata window %d; the ledger holds %d units in the window at %d (%v)", window, units, start.Unix(), start)
	}
	if want := f.ledgerKey(t, "pro-co", "pro"); ledger != want {
		t.Fatalf("metadata ledger %q, want %q", ledger, want)
	}
	if got := o.DynamicMetadata.GetFields()["consumer"].GetStringValue(); got != "pro-co" {
		t.Fatalf("consumer %q beside the window", got)
	}

	entry := envoyclient.HTTPLogEntry(envoyclient.LogInput{Authz: o})
	logged := entry.GetCommonProperties().GetMetadata().GetFilterMetadata()[envoyclient.ExtAuthzNamespace]
	if w, l := windowOf(t, logged); w != window || l != ledger {
		t.Fatalf("access log filter metadata window %d ledger %q, want %d %q", w, l, window, ledger)
	}

	// free: a bucket of 3; the 4th is a 429 that says who, not where.
	for range 3 {
		if o := f.withKey(t, "KEY_FREE", "/"); !o.Allowed {
			t.Fatalf("status %d: %s", o.Status, o.Body)
		}
	}
	denied := f.withKey(t, "KEY_FREE", "/")
	if denied.Status != 429 {
		t.Fatalf("status %d, want 429", denied.Status)
	}
	if got, want := slices.Sorted(maps.Keys(denied.DynamicMetadata.GetFields())), []string{"consumer", "key_id", "model", "plan"}; !slices.Equal(got, want) {
		t.Fatalf("a denial's metadata holds %v, want %v", got, want)
	}
	if o := f.check(t, "/"); o.Status != 401 || o.DynamicMetadata != nil {
		t.Fatalf("no key: status %d, metadata %v", o.Status, o.DynamicMetadata)
	}
}

// quotaOf is the quota counter and period an ext_authz dynamic metadata
// holds, failing unless both are there with their kinds.
func quotaOf(t *testing.T, md *structpb.Struct) (string, int64) {
	t.Helper()
	q, ok := md.GetFields()[authz.MetadataQuota].GetKind().(*structpb.Value_StringValue)
	if !ok {
		t.Fatalf("metadata %v: no string %q", md, authz.MetadataQuota)
	}
	p, ok := md.GetFields()[authz.MetadataPeriod].GetKind().(*structpb.Value_NumberValue)
	if !ok || float64(int64(p.NumberValue)) != p.NumberValue {
		t.Fatalf("metadata %v: no whole number %q", md, authz.MetadataPeriod)
	}
	return q.StringValue, int64(p.NumberValue)
}

// Settlement moves the quota counter a request was counted in: the allow
// names the counter's key and its period's start (the store's), in the
// consumer's hash tag, and Envoy's access log carries them back; a new
// period (the consumer's billing cycle moved) gets its own.
func testAllowCarriesTheQuotaCounterAndPeriodItWasCountedIn(t *testing.T, newLimiter limitertest.Factory) {
	f := start(t, newLimiter)
	o := f.withKey(t, "KEY_PRO", "/v1/search") // costs 5
	if !o.Allowed {
		t.Fatalf("status %d: %s", o.Status, o.Body)
	}
	key, period := quotaOf(t, o.DynamicMetadata)
	if key != usage.QuotaKey("pro-co") || !strings.HasPrefix(key, keyspace.State+"{c:pro-co}") {
		t.Fatalf("metadata quota %q, want %q", key, usage.QuotaKey("pro-co"))
	}
	_, ledger := windowOf(t, o.DynamicMetadata)
	if limiter.Slot(key) != limiter.Slot(ledger) {
		t.Fatalf("quota %q and ledger %q are in different hash slots", key, ledger)
	}
	// The counter counts the request in that period.
	d, err := f.lim.Decide(context.Background(), []limiter.Limit{{Kind: limiter.Quota, Name: "quota", Key: key, Unit: plan.Month, Max: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	if st := d.Statuses[0]; st.PeriodStart.Unix() != period || st.Used != 5 {
		t.Fatalf("metadata period %d; the counter holds %d units in the period at %v", period, st.Used, st.PeriodStart)
	}
	entry := envoyclient.HTTPLogEntry(envoyclient.LogInput{Authz: o})
	logged := entry.GetCommonProperties().GetMetadata().GetFilterMetadata()[envoyclient.ExtAuthzNamespace]
	if k, p := quotaOf(t, logged); k != key || p != period {
		t.Fatalf("access log filter metadata quota %q period %d, want %q %d", k, p, key, period)
	}
	// Next month: a new period in the metadata.
	f.clock.Advance(32 * 24 * time.Hour)
	next := f.withKey(t, "KEY_PRO", "/")
	if _, p := quotaOf(t, next.DynamicMetadata); p <= period {
		t.Fatalf("next month's period %d, want after %d", p, period)
	}
}

// At a window's edge the request's start (Envoy's clock) and its admission
// (the store's clock) fall in different windows: the metadata names the
// one the units were counted in, whichever side the store's clock is on.
func testWindowAtAnEdgeIsAdmissionsNotTheRequestStart(t *testing.T, newLimiter limitertest.Factory) {
	edge := limitertest.Start.Truncate(time.Minute).Add(time.Minute)
	tests := []struct {
		name       string
		admitted   time.Time // the store's clock
		started    time.Time // the request's start, Envoy's clock
		wantWindow time.Time
	}{
		{"store past the edge", edge.Add(5 * time.Millisecond), edge.Add(-10 * time.Millisecond), edge},
		{"store before the edge", edge.Add(-5 * time.Millisecond), edge.Add(10 * time.Millisecond), edge.Add(-time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, newLimiter)
			f.clock.Set(tt.admitted)
			o, err := f.client.Check(context.Background(), &envoyclient.Request{Path: "/", StartTime: tt.started,
				Headers: []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_PRO"]}}})
			if err != nil || !o.Allowed {
				t.Fatalf("not allowed: %v %v", o, err)
			}
			window, _ := windowOf(t, o.DynamicMetadata)
			if window != tt.wantWindow.Unix() {
				t.Fatalf("metadata window %v, want %v", time.Unix(window, 0).UTC(), tt.wantWindow)
			}
			if start, units := f.ledgerWindow(t, "pro-co", "pro"); !start.Equal(tt.wantWindow) || units != 1 {
				t.Fatalf("the ledger counted %d units at %v, want 1 at %v", units, start, tt.wantWindow)
			}
			// What settlement used before: the log's start time, a window off.
			logged := envoyclient.HTTPLogEntry(envoyclient.LogInput{Authz: o}).GetCommonProperties()
			if s := logged.GetStartTime().AsTime(); s.Truncate(time.Minute).Equal(tt.wantWindow) {
				t.Fatalf("start time %v is in the admission's window: not an edge", s)
			}
		})
	}
}

func localLimiter(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
	l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Without a usage ledger there is no window to tell: the metadata is who
// is calling, as before.
func TestAllowWithoutLedgerCarriesNoWindow(t *testing.T) {
	f := start(t, localLimiter)
	snap := servertest.Snapshot(t, f.cfgText)
	snap.LedgerWindow = 0
	f.srv.Swap(snap)
	o := f.withKey(t, "KEY_PRO", "/")
	if !o.Allowed {
		t.Fatalf("status %d: %s", o.Status, o.Body)
	}
	got := slices.Sorted(maps.Keys(o.DynamicMetadata.GetFields()))
	if want := []string{"consumer", envoyclient.ExtAuthzDurationKey, "key_id", "model", "plan"}; !slices.Equal(got, want) {
		t.Fatalf("metadata holds %v, want %v", got, want)
	}
}

// An allow's metadata is shared by every allow of its identity in its
// window, and marshalled while later requests are decided: a later window
// gets its own, and leaves the earlier one and the denials' as they were.
func TestAllowMetadataOfOneWindowIsNotChangedByTheNext(t *testing.T) {
	f := start(t, localLimiter)
	req := envoyclient.BuildCheckRequest(&envoyclient.Request{Path: "/", Headers: []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_PRO"]}}}, 1)
	first, err := f.srv.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := f.srv.Check(context.Background(), req)
	if first.DynamicMetadata != again.DynamicMetadata {
		t.Fatal("two allows in one window built two metadata structs")
	}
	w0, _ := windowOf(t, first.DynamicMetadata)
	f.clock.Advance(time.Minute)
	next, _ := f.srv.Check(context.Background(), req)
	w1, _ := windowOf(t, next.DynamicMetadata)
	if w1 != w0+60 {
		t.Fatalf("next window %d, want %d", w1, w0+60)
	}
	if w, _ := windowOf(t, first.DynamicMetadata); w != w0 || len(first.DynamicMetadata.GetFields()) != 8 {
		t.Fatalf("the first window's metadata changed: %v", first.DynamicMetadata)
	}
}

// A real allow, window and all, reads the same whether Encode or protobuf
// wrote it: Envoy sees one answer on either path.
func TestAllowWithWindowEncodesAsProtobufDoes(t *testing.T) {
	f := start(t, localLimiter)
	req := envoyclient.BuildCheckRequest(&envoyclient.Request{Path: "/", Headers: []envoyclient.Header{{Name: "x-api-key", Value: f.keys["KEY_PRO"]}}}, 1)
	resp, err := f.srv.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	windowOf(t, resp.DynamicMetadata)
	fast, ok := authz.Encode(resp)
	if !ok {
		t.Fatal("Encode declined an allow")
	}
	slow, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	a, b := &authv3.CheckResponse{}, &authv3.CheckResponse{}
	if err := proto.Unmarshal(fast, a); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(slow, b); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(a, b) || !proto.Equal(a, resp) {
		t.Fatalf("Encode's allow reads as\n%v\nprotobuf's as\n%v", a, b)
	}
}
