package usage

import (
	"encoding/binary"
	"net/url"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/plan"
)

// Terms are how a plan bills its usage: which meter, whether its units are
// billed at all, how many each billing period includes, and the period.
// They are fixed when a request is admitted (they are part of its ledger
// key), so a window is billed under the plan that was in force when its
// usage happened, whatever the consumer's plan is at export time.
type Terms struct {
	Plan  string
	Meter string
	// Billed: payg plans bill the units beyond Included; tiered plans only
	// when their quota is soft (they allow overage); freemium never. A
	// plan without a meter bills nothing.
	Billed   bool
	Included int64
	Period   plan.Unit
}

// TermsOf returns plan p's billing terms. It is the one place that says
// which plans bill what.
func TermsOf(p *plan.Plan) Terms {
	t := Terms{Plan: p.Name, Meter: p.Meter, Period: p.UsagePeriod()}
	soft := p.Quota != nil && p.Quota.Enforcement == plan.Soft
	t.Billed = p.Meter != "" && (p.Model == plan.PayG || p.Model == plan.Tiered && soft)
	if p.Quota != nil {
		t.Included = p.Quota.Requests
	}
	return t
}

// Known reports whether the terms were recorded at admission; windows
// written before levy recorded them know only their meter.
func (t Terms) Known() bool { return t.Plan != "" }

// Beyond is how many of units are billed, given prior units of the same
// billing period: those past the included units.
func (t Terms) Beyond(prior, units int64) int64 {
	if !t.Billed {
		return 0
	}
	return max(prior+units-t.Included, 0) - max(prior-t.Included, 0)
}

// LedgerKey is the state key of a consumer's usage ledger under one set of
// terms: hash-tagged by consumer like the consumer's limits, so that
// admission counts the ledger in the same atomic store call, and holding
// the terms, so that settlement and export read them back from the key.
// Terms without a plan give the key levy used before it recorded terms.
func LedgerKey(consumer string, t Terms) string {
	if !t.Known() {
		return keyspace.Ledger(consumer, t.Meter)
	}
	v := url.Values{}
	v.Set("p", t.Plan)
	v.Set("m", t.Meter)
	v.Set("i", strconv.FormatInt(t.Included, 10))
	v.Set("u", string(t.Period))
	if t.Billed {
		v.Set("b", "1")
	} else {
		v.Set("b", "0")
	}
	return keyspace.Ledger(consumer, v.Encode()) // no ':' in it: store suffixes stay unambiguous
}

// QuotaKey is the state key of a consumer's quota counter (the plan's
// quota, or the usage counter of a plan without one): hash-tagged by
// consumer like its ledger keys, so that settlement moves both in one
// atomic store call. The counter is not per plan: usage so far in the
// period carries over to a new plan's quota.
func QuotaKey(consumer string) string { return keyspace.Quota(consumer) }

// LedgerPrefix is what every ledger key of consumer starts with.
func LedgerPrefix(consumer string) string { return keyspace.LedgerPrefix(consumer) }

// ParseLedgerKey splits a LedgerKey.
func ParseLedgerKey(key string) (consumer string, t Terms, ok bool) {
	consumer, enc, found := keyspace.ParseLedger(key)
	if !found {
		return "", Terms{}, false
	}
	if !strings.Contains(enc, "=") {
		return consumer, Terms{Meter: enc}, true
	}
	v, err := url.ParseQuery(enc)
	if err != nil || v.Get("p") == "" {
		return "", Terms{}, false
	}
	t = Terms{Plan: v.Get("p"), Meter: v.Get("m"), Billed: v.Get("b") == "1", Period: plan.Unit(v.Get("u"))}
	if t.Included, err = strconv.ParseInt(v.Get("i"), 10, 64); err != nil {
		return "", Terms{}, false
	}
	if _, err := plan.ParseUnit(string(t.Period)); err != nil {
		return "", Terms{}, false
	}
	return consumer, t, true
}

// Fingerprint identifies one request for de-duplication across replicas:
// a hash of its x-request-id and its start time, the same on every
// replica.
type Fingerprint [16]byte

// FingerprintOf returns the fingerprint of the request with this
// x-request-id that started at startNanos (unix nanoseconds).
func FingerprintOf(requestID string, startNanos int64) Fingerprint {
	var f Fingerprint
	binary.LittleEndian.PutUint64(f[:8], xxhash.Sum64String(requestID))
	binary.LittleEndian.PutUint64(f[8:], uint64(startNanos))
	return f
}
