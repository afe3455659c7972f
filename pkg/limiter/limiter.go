// Package limiter decides whether a request may proceed against all of its
// limits at once: token buckets for rates and counters for quotas over
// calendar periods. A request is allowed by every limit or it is denied and
// consumes nothing but its debits (costs already spent, recorded even past
// the limit). One interface, implemented by an in-process store and by
// Redis, serves ext_authz and RateLimitService alike.
package limiter

import (
	"context"
	"time"

	"github.com/levyhq/levy/pkg/plan"
)

// Kind tells a bucket from a quota.
type Kind uint8

const (
	// Bucket is a token bucket: capacity Burst, refilled at Requests per Per.
	Bucket Kind = iota
	// Quota counts units over a period and resets at the period's start.
	Quota
	// Ledger counts units per consumer, meter and window for the usage
	// ledger; it never denies.
	Ledger
)

// Limit is one limit a request is checked against.
type Limit struct {
	Kind Kind
	// Name labels the limit in headers and reasons ("rate", "quota", a
	// descriptor rule's name).
	Name string
	// Key identifies the limit's state in the store. Keys that start with
	// "{...}" are hash-tagged: the Redis store keeps one tag in one slot.
	Key string
	// Cost is the units this request takes. Zero checks without taking:
	// such a check is over when nothing is left (a bucket without a whole
	// token, a hard quota at Max, a capped soft quota at Cap). A read that
	// decides nothing is a Peek, an addition past any bound an Add.
	Cost int64

	// Bucket: Requests per Per, at most Burst (Burst 0 means Requests).
	Requests int64
	Per      time.Duration
	Burst    int64

	// Quota: at most Max units per period of Unit (anchored at Anchor).
	// Soft quotas allow past Max (the excess is overage) up to Cap, if set;
	// a soft quota with Max 0 only counts.
	Max    int64
	Unit   plan.Unit
	Anchor time.Time
	Soft   bool
	Cap    int64

	// Shadow limits are evaluated and reported but never deny; one that is
	// over takes nothing.
	Shadow bool

	// Debit marks a cost already spent: Envoy's apply_on_stream_done, units
	// an upstream reported, an LLM's token count. It cannot be refused, so
	// it is recorded even past the limit: the bucket or counter goes into
	// debt, and later checks and requests are denied until the debt is
	// repaid. The limit still reports over when the debit did not fit.
	// A debit is taken even when another limit of the request denies. A
	// Shadow limit is no debit: over, it takes nothing.
	// Debits are evaluated before the request's other limits (they are
	// spent already), so a check of the same state sees them. A bucket's
	// debt is bounded at about 71 years, a quota's count at 2^52.
	Debit bool

	// QuotaMode is envoyproxy/ratelimit's quota_mode: a quota-mode limit
	// that is over does not deny the request by itself; the request is
	// denied when every quota-mode limit of it is over (or another limit
	// denies). A quota-mode limit that is over takes nothing, unless it is
	// a Debit. Shadow limits are no part of the group.
	QuotaMode bool

	// Ledger: the window the units are counted in (epoch-aligned). Which
	// of them are billable is worked out at export, from the period's
	// settled units and the terms in the ledger's key.
	WindowSize time.Duration

	// decidedIn is, for a limit the Redis store gives back, the period its
	// decision counted it in (a quota's or a ledger window's start, Unix
	// seconds; Status.PeriodStart): the give-back returns the cost there,
	// though its own clock may be in the next period by then. It rides on
	// the limit so that it survives the hand-over to the refunder.
	decidedIn int64
}

// Validate reports whether the stores can decide l at its cost, and
// ErrBadLimit (saying why) when every Decide would refuse it: a rule
// loader checks its limits with it, so that such a limit is refused where
// it is written rather than on every request.
func (l *Limit) Validate() error { return validLimit(l) }

// Capacity is the most a bucket holds.
func (l *Limit) Capacity() int64 {
	if l.Burst > 0 {
		return l.Burst
	}
	return l.Requests
}

// Window is the limit's window for headers: Per for buckets, the period's
// length for quotas.
func (l *Limit) Window(now time.Time) time.Duration {
	if l.Kind == Bucket {
		return l.Per
	}
	p := plan.PeriodAt(now, l.Unit, l.Anchor)
	return p.End.Sub(p.Start)
}

// Enforced reports whether the limit can deny.
func (l *Limit) Enforced() bool {
	return !l.Shadow && l.Kind != Ledger && (l.Kind == Bucket || !l.Soft || l.Cap > 0)
}

// Status is what one limit said about a request.
type Status struct {
	// OK is false when this limit is over: it denies the request, unless
	// it is shadow or quota-mode (a debit that is over took its cost all
	// the same).
	OK bool
	// Limit is the number shown to clients: Requests for buckets, Max for
	// hard quotas, Cap for capped soft quotas.
	Limit int64
	// Remaining is what is left after this request (or before it, when
	// denied: after the request's debits); -1 for soft quotas without a
	// cap.
	Remaining int64
	// Reset is how long until the bucket is full again or the period ends.
	Reset time.Duration
	// RetryAfter, when over, is how long until the request could pass
	// (for a check, or a debit already taken: until one unit is left).
	RetryAfter time.Duration
	// Used is the quota's count for the period including this request when
	// allowed; Overage the part of it beyond Max (soft quotas). For a
	// ledger: Used is the window's units.
	Used, Overage int64
	// PeriodStart is the quota period the count belongs to.
	PeriodStart time.Time
}

// Decision is the outcome of one request against all of its limits.
type Decision struct {
	OK       bool
	Statuses []Status // one per limit, in order
	// Denied is the index of the limit that denied, -1 when OK: the first
	// that is over and enforced, or when every quota-mode limit is over,
	// the first of them.
	Denied int
	Now    time.Time
}

// Limiter decides requests. Decide is atomic: either every limit takes its
// cost (quota-mode limits that are over aside), or (when the request is
// denied) only debits do. The stores also read and add (Store); callers
// that need those declare them where they use them.
type Limiter interface {
	Decide(ctx context.Context, limits []Limit) (Decision, error)
}

// Tightest returns the index of the enforced limit with the least remaining
// (the denying one when denied), or -1 when no limit is enforced.
func (d *Decision) Tightest(limits []Limit) int {
	if d.Denied >= 0 {
		return d.Denied
	}
	best := -1
	for i := range limits {
		if !limits[i].Enforced() {
			continue
		}
		if best < 0 || d.Statuses[i].Remaining < d.Statuses[best].Remaining {
			best = i
		}
	}
	return best
}
