package usage

import (
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/levyhq/levy/pkg/plan"
)

// ExtAuthzNamespace is the dynamic-metadata namespace of Envoy's HTTP
// ext_authz filter, where levy's Check puts consumer, plan, model and
// key_id.
const ExtAuthzNamespace = "envoy.filters.http.ext_authz"

// Metadata fields levy's ext_authz sets.
const (
	mdConsumer = "consumer"
	mdPlan     = "plan"
	// mdLedger and mdWindow are the ledger key and window start (unix
	// seconds) admission counted the request's units in.
	mdLedger = "ledger"
	mdWindow = "window"
	// mdQuota and mdPeriod are the quota counter's state key and period
	// start (unix seconds) admission counted the request in.
	mdQuota  = "quota"
	mdPeriod = "period"
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
//   - Only final entries count: access_log_type unset or DownstreamEnd
//     (and not the deprecated intermediate_log_entry).
//   - A request levy's ext_authz denied (response flag UAEX) was never
//     counted: nothing to settle. A 429 from the ratelimit filter (RL)
//     after an allow was counted, and is refunded like any other status.
//   - The consumer is the ext_authz metadata's consumer, else the
//     consumerHeader request header (logged only when Envoy is configured
//     to); the plan is the metadata's plan and must be in cat. Access logs
//     are lossy, so they never create usage for a request without both.
//   - Admission counted cost = plan.CostFor(path) units. path is
//     original_path when Envoy rewrote it, since ext_authz runs before the
//     router's rewrite.
//   - A status the plan does not bill refunds them.
//   - On a billed status, an upstream that reports N units in the
//     unitsHeader response header (a non-negative integer) makes the
//     request cost N: Units += N-cost.
//   - Which units are billable (beyond the included ones) is worked out at
//     export from the period's settled units, so a refund inside the
//     included units frees them for later requests, as an invoice should.
//   - The adjustment is for the plan's meter (possibly "") at start_time.
func Settle(e *accesslogdatav3.HTTPAccessLogEntry, cat *plan.Catalog, unitsHeader, consumerHeader string) (adj Adjustment, requestID string, ok bool) {
	var f facts
	f.fromEntry(e, strings.ToLower(unitsHeader), strings.ToLower(consumerHeader))
	adj, out := f.settle(cat)
	return adj, f.requestID, out == outSettled || out == outUnchanged
}

// facts are the fields of an HTTPAccessLogEntry that settlement reads. The
// Receiver reads them straight off the wire (wire.go); Settle from a
// decoded entry.
type facts struct {
	hasCommon, hasRequest, hasResponse, hasCode, hasStart bool
	logType                                               int32
	intermediate                                          bool
	denied                                                bool // response_flags.unauthorized_details set (UAEX)
	startSec                                              int64
	startNanos                                            int32
	consumer, plan                                        string // ext_authz metadata strings
	ledger                                                string // ext_authz metadata: the ledger key
	window                                                int64  // unix seconds
	hasWindow                                             bool   // ext_authz metadata: a valid window start
	quota                                                 string // ext_authz metadata: the quota counter's key
	period                                                int64  // unix seconds
	hasPeriod                                             bool   // ext_authz metadata: a valid period start
	path, originalPath, requestID                         string
	consumerHeader                                        string // request header consumerHeader
	code                                                  uint32
	unitsHeader                                           string // response header unitsHeader
}

// fromEntry reads e's facts; the strings stay e's.
func (f *facts) fromEntry(e *accesslogdatav3.HTTPAccessLogEntry, unitsHeader, consumerHeader string) {
	if c := e.GetCommonProperties(); c != nil {
		f.hasCommon = true
		f.logType = int32(c.GetAccessLogType())
		f.intermediate = c.GetIntermediateLogEntry()
		f.denied = c.GetResponseFlags().GetUnauthorizedDetails() != nil
		if st := c.GetStartTime(); st != nil {
			f.hasStart, f.startSec, f.startNanos = true, st.GetSeconds(), st.GetNanos()
		}
		fields := c.GetMetadata().GetFilterMetadata()[ExtAuthzNamespace].GetFields()
		f.consumer = stringValue(fields[mdConsumer])
		f.plan = stringValue(fields[mdPlan])
		f.ledger = stringValue(fields[mdLedger])
		if n, ok := fields[mdWindow].GetKind().(*structpb.Value_NumberValue); ok {
			f.window, f.hasWindow = windowSeconds(n.NumberValue)
		}
		f.quota = stringValue(fields[mdQuota])
		if n, ok := fields[mdPeriod].GetKind().(*structpb.Value_NumberValue); ok {
			f.period, f.hasPeriod = windowSeconds(n.NumberValue)
		}
	}
	if r := e.GetRequest(); r != nil {
		f.hasRequest = true
		f.path, f.originalPath, f.requestID = r.GetPath(), r.GetOriginalPath(), r.GetRequestId()
		f.consumerHeader = r.GetRequestHeaders()[consumerHeader]
	}
	if r := e.GetResponse(); r != nil {
		f.hasResponse = true
		if c := r.GetResponseCode(); c != nil {
			f.hasCode, f.code = true, c.GetValue()
		}
		f.unitsHeader = r.GetResponseHeaders()[unitsHeader]
	}
}

// windowSeconds reads a window start sent as a number: whole unix seconds
// in a sane range, or not a window.
func windowSeconds(v float64) (int64, bool) {
	if !(v >= 0 && v < 1<<40) || v != float64(int64(v)) {
		return 0, false
	}
	return int64(v), true
}

func stringValue(v *structpb.Value) string {
	if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
		return s.StringValue
	}
	return ""
}

// settle applies the policy Settle describes. The adjustment's Consumer
// is f's string.
func (f *facts) settle(cat *plan.Catalog) (Adjustment, outcome) {
	if !f.hasCommon {
		return Adjustment{}, outMalformed
	}
	switch accesslogdatav3.AccessLogType(f.logType) {
	case accesslogdatav3.AccessLogType_NotSet, accesslogdatav3.AccessLogType_DownstreamEnd:
	default:
		return Adjustment{}, outPartial
	}
	if f.intermediate {
		return Adjustment{}, outPartial
	}
	if f.denied {
		return Adjustment{}, outDenied
	}
	if !f.hasRequest || !f.hasResponse || !f.hasCode || f.code == 0 || !f.hasStart {
		return Adjustment{}, outMalformed
	}
	consumer := f.consumer
	if consumer == "" {
		consumer = f.consumerHeader
	}
	if consumer == "" {
		return Adjustment{}, outUnattributed
	}
	p, found := lookupPlan(cat, f.plan)
	if !found {
		return Adjustment{}, outUnknownPlan
	}

	path := f.originalPath
	if path == "" {
		path = f.path
	}
	cost := p.CostFor(path)

	adj := Adjustment{Consumer: consumer, Meter: p.Meter, Terms: TermsOf(p), At: time.Unix(f.startSec, int64(f.startNanos)).UTC()}
	if !p.NonBillable.Billable(int(f.code)) {
		adj.Units = -cost
	} else if n, reported := reportedUnits(f.unitsHeader); reported {
		adj.Units = n - cost
	}
	if adj.Units == 0 {
		return adj, outUnchanged
	}
	if adj.Units < 0 {
		adj.Refunded = -adj.Units
	} else {
		adj.Reported = adj.Units
	}
	if !utf8.ValidString(consumer) { // read off the wire unchecked
		return Adjustment{}, outMalformed
	}
	return adj, outSettled
}

// lookupPlan is Catalog.Get that tolerates a nil catalog and an empty
// name.
func lookupPlan(cat *plan.Catalog, name string) (*plan.Plan, bool) {
	if cat == nil || name == "" {
		return nil, false
	}
	return cat.Get(name)
}

// maxUnits bounds the units one request can report or be billed, so that
// sums cannot overflow.
const maxUnits = math.MaxInt64 / 4

// reportedUnits parses the units header: a non-negative decimal integer.
func reportedUnits(v string) (int64, bool) {
	if v == "" || v[0] < '0' || v[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n > maxUnits {
		return 0, false
	}
	return n, true
}
