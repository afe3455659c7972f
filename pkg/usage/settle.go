package usage

import (
	"math"
	"strconv"
	"strings"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"

	"github.com/levyhq/levy/pkg/plan"
)

// ExtAuthzNamespace is the dynamic-metadata namespace of Envoy's HTTP
// ext_authz filter, where levy's Check puts consumer, plan, model, key_id
// and billable.
const ExtAuthzNamespace = "envoy.filters.http.ext_authz"

// Metadata fields levy's ext_authz sets.
const (
	mdConsumer = "consumer"
	mdPlan     = "plan"
	mdBillable = "billable"
)

// outcome is what settlement made of one access-log entry; each is one
// value of the result label of levy_access_log_entries_total.
type outcome uint8

const (
	outSettled      outcome = iota // a non-zero adjustment
	outUnchanged                   // admitted as counted: nothing to adjust
	outDenied                      // levy's ext_authz denied it: never counted
	outUnattributed                // no consumer
	outUnknownPlan                 // a plan the catalog does not have
	outPartial                     // a periodic or intermediate entry
	outMalformed                   // fields missing
	outDuplicate                   // already settled (decided by the Receiver)
	numOutcomes
)

var outcomeNames = [numOutcomes]string{
	outSettled:      "settled",
	outUnchanged:    "unchanged",
	outDenied:       "skipped_denied",
	outUnattributed: "skipped_unattributed",
	outUnknownPlan:  "skipped_unknown_plan",
	outPartial:      "skipped_partial",
	outMalformed:    "malformed",
	outDuplicate:    "skipped_duplicate",
}

// Settle is the settlement policy for one access-log entry: the
// adjustment that turns what admission counted for the request into what
// it really cost, and the request's x-request-id for de-duplication. ok
// reports that the entry is a complete, attributed request that admission
// counted; its adjustment is zero when admission was right. unitsHeader
// and consumerHeader are header names (compared lower-case, as Envoy logs
// them).
//
// The policy:
//   - Only final entries count: access_log_type unset or DownstreamEnd.
//   - A request levy's ext_authz denied (response flag UAEX) was never
//     counted: nothing to settle. A 429 from the ratelimit filter (RL)
//     after an allow was counted, and is refunded like any other status.
//   - The consumer is the ext_authz metadata's consumer, else the
//     consumerHeader request header (logged only when Envoy is configured
//     to); the plan is the metadata's plan and must be in cat. Access logs
//     are lossy, so they never create usage for a request without both.
//   - Admission counted cost = plan.CostFor(path) units, of which the
//     metadata's billable were billable. path is original_path when Envoy
//     rewrote it, since ext_authz runs before the router's rewrite.
//   - A status the plan does not bill refunds both.
//   - On a billed status, an upstream that reports N units in the
//     unitsHeader response header (a non-negative integer) makes the
//     request cost N: Units += N-cost. Billable moves by the same amount
//     only when the request was already billable (billable > 0), and never
//     below zero for the request (at most -billable); a request inside the
//     included units stays there. That is deliberately simple: a request
//     whose reported units cross the included units is not billed for the
//     part beyond them until the next admission counts it.
func Settle(e *accesslogdatav3.HTTPAccessLogEntry, cat *plan.Catalog, unitsHeader, consumerHeader string) (adj Adjustment, requestID string, ok bool) {
	adj, requestID, out := settle(e, cat, strings.ToLower(unitsHeader), strings.ToLower(consumerHeader))
	return adj, requestID, out == outSettled || out == outUnchanged
}

// settle is Settle with lower-case header names, saying why an entry is
// skipped.
func settle(e *accesslogdatav3.HTTPAccessLogEntry, cat *plan.Catalog, unitsHeader, consumerHeader string) (Adjustment, string, outcome) {
	common := e.GetCommonProperties()
	if common == nil {
		return Adjustment{}, "", outMalformed
	}
	switch common.GetAccessLogType() {
	case accesslogdatav3.AccessLogType_NotSet, accesslogdatav3.AccessLogType_DownstreamEnd:
	default:
		return Adjustment{}, "", outPartial
	}
	if common.GetResponseFlags().GetUnauthorizedDetails() != nil {
		return Adjustment{}, "", outDenied
	}
	req, resp := e.GetRequest(), e.GetResponse()
	code := resp.GetResponseCode()
	start := common.GetStartTime()
	if req == nil || code == nil || code.GetValue() == 0 || start == nil {
		return Adjustment{}, "", outMalformed
	}

	fields := common.GetMetadata().GetFilterMetadata()[ExtAuthzNamespace].GetFields()
	consumer := fields[mdConsumer].GetStringValue()
	if consumer == "" {
		consumer = req.GetRequestHeaders()[consumerHeader]
	}
	if consumer == "" {
		return Adjustment{}, "", outUnattributed
	}
	p, found := lookupPlan(cat, fields[mdPlan].GetStringValue())
	if !found {
		return Adjustment{}, "", outUnknownPlan
	}

	path := req.GetOriginalPath()
	if path == "" {
		path = req.GetPath()
	}
	cost := p.CostFor(path)
	billable := units(fields[mdBillable].GetNumberValue())

	adj := Adjustment{Consumer: consumer, Meter: p.Meter, At: start.AsTime()}
	switch status := int(code.GetValue()); {
	case !p.NonBillable.Billable(status):
		adj.Units, adj.Billable = -cost, -billable
	default:
		n, reported := reportedUnits(resp.GetResponseHeaders()[unitsHeader])
		if !reported {
			break
		}
		adj.Units = n - cost
		if billable > 0 {
			adj.Billable = max(n-cost, -billable)
		}
	}
	if adj.Units == 0 && adj.Billable == 0 {
		return adj, req.GetRequestId(), outUnchanged
	}
	return adj, req.GetRequestId(), outSettled
}

// lookupPlan is Catalog.Get that tolerates a nil catalog and an empty
// name.
func lookupPlan(cat *plan.Catalog, name string) (*plan.Plan, bool) {
	if cat == nil || name == "" {
		return nil, false
	}
	return cat.Get(name)
}

// units converts a metadata number to whole units: 0 unless finite and
// positive.
func units(v float64) int64 {
	if !(v > 0) || v > math.MaxInt64/4 || math.IsInf(v, 0) {
		return 0
	}
	return int64(v)
}

// reportedUnits parses the units header: a non-negative decimal integer.
func reportedUnits(v string) (int64, bool) {
	if v == "" || v[0] == '-' || v[0] == '+' {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > math.MaxInt64/4 {
		return 0, false
	}
	return n, true
}
