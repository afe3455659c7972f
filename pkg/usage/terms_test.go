package usage

import (
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/plan"
)

func TestLedgerKeyReadsBackItsTerms(t *testing.T) {
	tests := []struct {
		name     string
		consumer string
		give     Terms
	}{
		{name: "payg", consumer: "acme", give: Terms{Plan: "payg", Meter: "api_calls", Billed: true, Included: 1000, Period: plan.Month}},
		{name: "names with separators", consumer: "a:b c", give: Terms{Plan: "p&q=r:s", Meter: "m%20:x", Period: plan.Day}},
		{name: "unicode", consumer: "ąćme", give: Terms{Plan: "płan", Meter: "mëter", Billed: true, Included: 5, Period: plan.Year}},
		{name: "written before terms were recorded", consumer: "acme", give: Terms{Meter: "api_calls"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := LedgerKey(tt.consumer, tt.give)
			consumer, terms, ok := ParseLedgerKey(key)
			if !ok || consumer != tt.consumer || terms != tt.give {
				t.Fatalf("ParseLedgerKey(%q) = %q %+v %v, want %q %+v", key, consumer, terms, ok, tt.consumer, tt.give)
			}
			if !keyspace.IsLedger(tt.consumer, key) || keyspace.IsLedger(tt.consumer+"x", key) || keyspace.IsLedger("x"+tt.consumer, key) {
				t.Fatalf("keyspace.IsLedger is wrong about %q", key)
			}
		})
	}
}

// FuzzParseLedgerKey: ledger keys come back from access logs (ext_authz
// metadata) and from the store; any bytes parse without a panic, and a key
// levy writes reads back as written.
func FuzzParseLedgerKey(f *testing.F) {
	f.Add("acme", "payg", "api_calls", int64(5), true, keyspace.State+"{c:acme}:ledger:b=1&i=5&m=api_calls&p=payg&u=month")
	f.Add("a}b", "p", "m", int64(-1), false, keyspace.State+"{c:}:ledger:")
	f.Fuzz(func(t *testing.T, consumer, planName, meter string, included int64, billed bool, raw string) {
		ParseLedgerKey(raw)
		keyspace.IsLedger(consumer, raw)
		want := Terms{Plan: planName, Meter: meter, Billed: billed, Included: included, Period: plan.Month}
		c, got, ok := ParseLedgerKey(LedgerKey(consumer, want))
		if planName == "" {
			return // a key without terms: its meter only
		}
		if !ok || got != want || c != consumer && !containsInfix(consumer) {
			t.Fatalf("round trip of %q %+v: %q %+v %v", consumer, want, c, got, ok)
		}
	})
}

// containsInfix: a consumer id with "}:ledger:" in it cannot be told from
// the key's own separator.
func containsInfix(s string) bool {
	return strings.Contains(s, "}:ledger:")
}

// An access log names the quota counter to settle; only the consumer's
// own is taken, whatever the consumer's id holds.
func TestOwnsQuotaKeyOnlyOfItsConsumer(t *testing.T) {
	tests := []struct {
		consumer, key string
		want          bool
	}{
		{"acme", QuotaKey("acme"), true},
		{"a}:units", QuotaKey("a}:units"), true},
		{"ąćme", QuotaKey("ąćme"), true},
		{"acme", QuotaKey("acme2"), false},
		{"acme2", QuotaKey("acme"), false},
		{"acme", QuotaKey("bolt"), false},
		{"acme", keyspace.State + "{c:acme}:units:x", false},
		{"acme", keyspace.State + "{c:acme}:rate:pro", false},
		{"acme", keyspace.State + "{c:acme}:ledger:api_calls", false},
		{"acme", "x" + keyspace.State + "{c:acme}:units", false},
		{"acme", "{c:acme}:units", false}, // the layout before keyspace.Version
		{"", keyspace.State + "{c:}:units", true},
		{"acme", "", false},
	}
	for _, tt := range tests {
		if got := keyspace.IsQuota(tt.consumer, tt.key); got != tt.want {
			t.Errorf("keyspace.IsQuota(%q, %q) = %v, want %v", tt.consumer, tt.key, got, tt.want)
		}
	}
}

func FuzzOwnsQuotaKey(f *testing.F) {
	f.Add("acme", keyspace.State+"{c:acme}:units")
	f.Fuzz(func(t *testing.T, consumer, key string) {
		if got, want := keyspace.IsQuota(consumer, key), key == QuotaKey(consumer); got != want {
			t.Fatalf("keyspace.IsQuota(%q, %q) = %v, want %v", consumer, key, got, want)
		}
	})
}

// Ledger windows start where decide.lua starts them, at multiples of
// their size since the Unix epoch, for sizes that do not divide a day
// too (Go's Truncate counts from the year 1: 3 days off for a week).
func TestWindowAtIsAlignedToTheUnixEpoch(t *testing.T) {
	at := time.Date(2026, 11, 30, 17, 40, 12, 5, time.UTC)
	for _, size := range []time.Duration{time.Second, time.Minute, 7 * time.Minute, 7 * 24 * time.Hour} {
		s := int64(size / time.Second)
		want := at.Unix() / s * s
		if got := WindowAt(at, size); got.Unix() != want || got.Location() != time.UTC {
			t.Errorf("WindowAt(%v, %v) = %v, want unix %d", at, size, got, want)
		}
	}
	if got := WindowAt(time.Unix(-1, 0), time.Minute).Unix(); got != -60 {
		t.Errorf("a second before the epoch is in the window at %d, want -60", got)
	}
}
