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
		{"demo keys", keyspace.DemoKeys, "{levy}:demo-keys"},
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
