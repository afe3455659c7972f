package keyspace_test

import (
	"testing"

	"github.com/levyhq/levy/pkg/keyspace"
)

// TestLayout lists every key levy writes: the layout in one place.
func TestLayout(t *testing.T) {
	ledger := keyspace.Ledger("acme", "b=1&i=0&m=api_calls&p=payg&u=month")
	tests := []struct {
		name string
		give string
		want string
	}{
		{"token bucket", keyspace.Rate("acme", "pro"), "levy:1:{c:acme}:rate:pro"},
		{"quota counter", keyspace.Quota("acme"), "levy:1:{c:acme}:units"},
		{"ledger", ledger, "levy:1:{c:acme}:ledger:b=1&i=0&m=api_calls&p=payg&u=month"},
		{"ledger before terms", keyspace.Ledger("acme", "api_calls"), "levy:1:{c:acme}:ledger:api_calls"},
		{"ledger prefix", keyspace.LedgerPrefix("acme"), "levy:1:{c:acme}:ledger:"},
		{"ledger window", keyspace.Window(ledger, 1772323200), ledger + ":1772323200"},
		{"accounted windows", keyspace.Done(ledger), ledger + ":done"},
		{"consumer's ledgers", keyspace.Ledgers("acme"), "levy:1:{c:acme}:ledgers"},
		{"consumer's ledgers, as scripts derive it", keyspace.LedgersOf(ledger), "levy:1:{c:acme}:ledgers"},
		{"ledger scan", keyspace.LedgerPattern, "levy:1:{c:*}:ledger:*"},
		{"hourly usage history", keyspace.History("acme", "hour", 1772323200), "levy:1:{c:acme}:history:hour:1772323200"},
		{"daily usage history", keyspace.History("acme", "day", 1772323200), "levy:1:{c:acme}:history:day:1772323200"},
		{"usage history, ten digits", keyspace.History("acme", "day", 86400), "levy:1:{c:acme}:history:day:0000086400"},
		{"usage history prefix", keyspace.HistoryPrefix("acme", "hour"), "levy:1:{c:acme}:history:hour:"},
		{"RLS bucket of a consumer", keyspace.Rule("api.plan=pro", "acme", []byte(keyspace.RuleBucket+"60000000000")), "levy:1:{c:acme}:rl:api.plan=pro:b:60000000000"},
		{"RLS quota", keyspace.Rule("api.path=/v1", "", []byte(keyspace.RuleQuota+"day")), "levy:1:{rl:api.path=/v1}:q:day"},
		{"RLS zero", keyspace.Rule("api.path=/v1", "", []byte(keyspace.RuleZero)), "levy:1:{rl:api.path=/v1}:zero"},
		{"RLS override", keyspace.Rule("api.k=v", "acme", []byte(keyspace.RuleOverride)) + ":month", "levy:1:{c:acme}:rl:api.k=v:override:month"},
		{"API key record", keyspace.APIKey("h1"), "levy:key:{h1}"},
		{"API key scan", keyspace.APIKeyPattern, "levy:key:{*"},
		{"key id", keyspace.KeyID("k1"), "levy:keyid:{k1}"},
		{"consumer record", keyspace.Consumer("acme"), "levy:consumer:{acme}"},
		{"consumer scan", keyspace.ConsumerPattern, "levy:consumer:{*"},
		{"consumer's keys", keyspace.ConsumerKeys("acme"), "levy:consumer-keys:{acme}"},
		{"Stripe customer", keyspace.StripeCustomer("cus_1"), "levy:stripe:{cus_1}"},
		{"Stripe event claim", keyspace.StripeEvent("evt_1"), "levy:stripe-event:{evt_1}"},
		{"portal sign-in link", keyspace.PortalLink("h2"), "levy:portal:link:{h2}"},
		{"portal session", keyspace.PortalSession("h3"), "levy:portal:session:{h3}"},
		{"invalidation channel", keyspace.Invalidate, "levy:invalidate"},
		{"consumer index", keyspace.Consumers, "{levy}:consumers"},
		{"indexes backfilled", keyspace.Indexed, "{levy}:indexed"},
		{"replica registry", keyspace.Replicas, "{levy}:replicas"},
		{"replica member", keyspace.ReplicaMember("r1"), "r1;layout=1"},
		{"layout migrated", keyspace.LayoutDone, "{levy}:layout"},
		{"demo keys", keyspace.DemoKeys, "{levy}:demo-keys"},
		{"activity records", keyspace.Activity, "{levy}:activity"},
		{"lease", keyspace.Lease("usage-export"), "{levy}:lease:usage-export"},
	}
	for _, tt := range tests {
		if tt.give != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, tt.give, tt.want)
		}
	}
}

// An old key's new name keeps its hash tag, so both are in one slot.
func TestUpgradeKeepsTheHashTag(t *testing.T) {
	tests := []struct {
		give   string
		want   string
		wantOK bool
	}{
		{"{c:acme}:units", "levy:1:{c:acme}:units", true},
		{"{c:acme}:rate:pro", "levy:1:{c:acme}:rate:pro", true},
		{"{c:acme}:ledger:api_calls:1772323200:seen", "levy:1:{c:acme}:ledger:api_calls:1772323200:seen", true},
		{"{rl:api.path=/v1}:b:1000000000", "levy:1:{rl:api.path=/v1}:b:1000000000", true},
		{"levy:1:{c:acme}:units", "", false},
		{"{levy}:replicas", "", false},
		{"levy:key:{h1}", "", false},
		{"{c:unclosed", "", false},
	}
	for _, tt := range tests {
		got, ok := keyspace.Upgrade(tt.give)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("Upgrade(%q) = %q %v, want %q %v", tt.give, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestParseHistoryReadsBackHistory(t *testing.T) {
	c, step, start, ok := keyspace.ParseHistory(keyspace.History("a:b", "hour", 3600))
	if !ok || c != "a:b" || step != "hour" || start != 3600 {
		t.Fatalf("ParseHistory = %q %q %d %v", c, step, start, ok)
	}
	for _, bad := range []string{"levy:1:{c:acme}:units", "levy:1:{c:acme}:history:hour:x", "levy:1:{c:acme}:history::1", "{c:acme}:history:hour:1"} {
		if _, _, _, ok := keyspace.ParseHistory(bad); ok {
			t.Errorf("ParseHistory took %q", bad)
		}
	}
}

func TestParseLedgerReadsBackLedger(t *testing.T) {
	c, terms, ok := keyspace.ParseLedger(keyspace.Ledger("a:b", "m=x"))
	if !ok || c != "a:b" || terms != "m=x" {
		t.Fatalf("ParseLedger = %q %q %v", c, terms, ok)
	}
	if _, _, ok := keyspace.ParseLedger("{c:acme}:ledger:api_calls"); ok {
		t.Fatal("ParseLedger took a key of the old layout")
	}
	if !keyspace.IsLedger("acme", keyspace.Ledger("acme", "m")) || keyspace.IsLedger("acm", keyspace.Ledger("acme", "m")) {
		t.Fatal("IsLedger is wrong about acme's ledger")
	}
}

// Upgrade moves levy's keys of the old layout and nothing else: another
// application's keys in a shared Redis keep their names.
func TestUpgradeMovesOnlyLevysOldShapes(t *testing.T) {
	tests := []struct {
		give   string
		wantOK bool
	}{
		{"{c:acme}:units", true},
		{"{c:acme}:ledgers", true},
		{"{c:acme}:rate:pro", true},
		{"{c:acme}:ledger:api_calls", true},
		{"{c:acme}:ledger:b=1&i=0&m=api_calls&p=payg&u=month", true},
		{"{c:acme}:ledger:api_calls:done", true},
		{"{c:acme}:ledger:api_calls:1772323200", true},
		{"{c:acme}:ledger:api_calls:1772323200:seen", true},
		{"{c:acme}:ledger:api_calls:1772323200:added", true},
		{"{c:acme}:rl:api.plan=pro:b:60000000000", true},
		{"{c:acme}:rl:api.k=v:override:month", true},
		{"{c:acme}:rl:api.k=v:override:60000000000", true},
		{"{c:acme}:rl:api.k=v:override:zero", true},
		{"{rl:api.path=/v1}:q:day", true},
		{"{rl:api.path=/v1}:b:1000000000", true},
		{"{rl:api.path=/v1}:zero", true},
		{"{rl:api.k=v}:override:year", true},
		{"{c:acme}:session", false},
		{"{c:acme}:units:extra", false},
		{"{c:acme}:ledger:", false},
		{"{c:acme}:ledger:api_calls:1772323200:other", false},
		{"{c:acme}:ledger:api_calls:today", false},
		{"{c:acme}:rate:", false},
		{"{c:acme}:rl::b:1", false},
		{"{c:}:units", false},
		{"{rl:x}:b:soon", false},
		{"{rl:x}:cache", false},
		{"{rl:x}", false},
		{"{cart}:items", false},
	}
	for _, tt := range tests {
		if _, ok := keyspace.Upgrade(tt.give); ok != tt.wantOK {
			t.Errorf("Upgrade(%q) ok = %v, want %v", tt.give, ok, tt.wantOK)
		}
	}
}

// The local store keeps a counter or window under its key and start.
func TestUpgradeStoredTakesTheLocalStoresNames(t *testing.T) {
	tests := []struct {
		give, want string
	}{
		{"{c:acme}:units:1772323200", "levy:1:{c:acme}:units:1772323200"},
		{"{c:acme}:ledger:api_calls:1772323200", "levy:1:{c:acme}:ledger:api_calls:1772323200"},
		{"{rl:api.path=/v1}:q:day:1774915200", "levy:1:{rl:api.path=/v1}:q:day:1774915200"},
		{"{c:acme}:units", ""},
		{"{c:acme}:other:1772323200", ""},
		{"levy:1:{c:acme}:units:1772323200", ""},
	}
	for _, tt := range tests {
		if got, _ := keyspace.UpgradeStored(tt.give); got != tt.want {
			t.Errorf("UpgradeStored(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

// A replica of the unversioned layout registers its bare id.
func TestReplicaLayoutTellsOlderReplicasApart(t *testing.T) {
	if got := keyspace.ReplicaLayout(keyspace.ReplicaMember("7f1c")); got != keyspace.Version {
		t.Errorf("ReplicaLayout(ReplicaMember) = %d, want %d", got, keyspace.Version)
	}
	if got := keyspace.ReplicaLayout("7f1c2a4e-9a55-4b1e-a7a4-0c6f2f0f0d11"); got != 0 {
		t.Errorf("ReplicaLayout of a bare id = %d, want 0", got)
	}
}
