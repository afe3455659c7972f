// Package usage is what each request really cost: the durable usage
// ledger (units per consumer, billing terms and window, counted at
// admission in the same store operation as the limits) and the access-log
// receiver that settles it (refunds statuses that are not billable, adds
// units the upstream reports).
package usage

import (
	"context"
	"fmt"
	"time"
)

// Window is one ledger entry: a consumer's units under one set of billing
// terms in one window of time.
type Window struct {
	Consumer string
	// Meter is Terms.Meter, kept for callers that only need it.
	Meter string
	// Terms are how the window's units are billed: fixed at admission, so
	// a plan change before the export does not change the bill.
	Terms Terms
	// Key is the window's ledger key (LedgerKey of Consumer and Terms).
	Key   string
	Start time.Time
	Size  time.Duration

	// Units is everything counted, settled: admitted + Reported -
	// Refunded (never below zero).
	Units int64
	// Refunded and Reported are what access-log settlement took away
	// (statuses that are not billed) and added (units the upstream
	// reported beyond a request's cost).
	Refunded, Reported int64

	// Exported is set once the window has been accounted to Stripe at
	// least once; Accounted is Units as it was then. A window whose Units
	// moved since (a late access log) is accounted again: a correction.
	Exported  bool
	Accounted int64
	// Billed is the value of the meter events Stripe accepted that this
	// window identifies (an event carries its billing period's units that
	// were not billed before, and is identified by the period's last
	// window); Events is how many.
	Billed int64
	Events int
	// LastValue is the value of the last of those events while it can
	// still be cancelled (zero once it was), and LastSent when Stripe
	// accepted it, by the store's clock: Stripe cancels an event within
	// 24 hours of taking it.
	LastValue int64
	LastSent  time.Time
	// Pending is the value of an event sent, or about to be, and not yet
	// known to be accepted: a retry sends the same identifier and value.
	// Negative: the cancellation of the last event, -LastValue.
	Pending int64
	// Rejected is why Stripe refused the window's event for a reason a
	// retry cannot fix; such a window is not retried (levy billing
	// reconcile --fix sends what is missing).
	Rejected string

	// Billable is the part of Units to invoice (for payg, the units
	// beyond the included units in the billing period): not stored, but
	// worked out from the period's windows.
	Billable int64
}

// End is when the window closes.
func (w Window) End() time.Time { return w.Start.Add(w.Size) }

// Due reports whether the exporter still has work for the window: never
// accounted, settled since it was, or an event in flight.
func (w Window) Due() bool {
	return w.Rejected == "" && (!w.Exported || w.Units != w.Accounted || w.Pending != 0)
}

// Adjustment changes a window after admission (settlement).
type Adjustment struct {
	// Key is the ledger key admission counted the request under, and
	// Start its window, when the access log carries them (levy's ext_authz
	// puts both in its dynamic metadata). Without them the window is the
	// one of LedgerKey(Consumer, Terms) that holds At.
	Key   string
	Start time.Time

	// Quota is the state key of the quota counter admission counted the
	// request in, and QuotaStart that counter's period start, when the
	// access log carries them (levy's ext_authz puts both in its dynamic
	// metadata). The ledger moves the counter by the same units as the
	// window, in the same step and under the same de-duplication: a
	// debit goes past the quota's limit (the consumer is then denied
	// until the period ends), a refund never below zero. Only while the
	// counter still counts that period: a settlement after the period
	// rolled over changes the window, not the new period's count. Empty:
	// no counter is moved.
	Quota      string
	QuotaStart time.Time

	Consumer string
	Meter    string
	Terms    Terms
	// At is when the request started.
	At time.Time

	// Units is the total change, Reported - Refunded.
	Units              int64
	Refunded, Reported int64
	// Requests are the settled requests whose units make up Units, for
	// de-duplication across replicas: a ledger that several replicas
	// share applies each request's units once. Empty: apply Units as
	// they are.
	Requests []Settled
}

// Settled is one request's settlement: its fingerprint (x-request-id and
// start time) and units.
type Settled struct {
	ID    Fingerprint
	Units int64
}

// LedgerKeyOf is the adjustment's ledger key.
func (a *Adjustment) LedgerKeyOf() string {
	if a.Key != "" {
		return a.Key
	}
	return LedgerKey(a.Consumer, a.Terms)
}

// WindowStart is the adjustment's window start for windows of size.
func (a *Adjustment) WindowStart(size time.Duration) time.Time {
	if !a.Start.IsZero() {
		return a.Start
	}
	return WindowAt(a.At, size)
}

// WindowAt is the start of the ledger window of size (whole seconds) that
// holds t. Windows are aligned to the Unix epoch, as decide.lua aligns
// them, so that both stores agree on every size: Go's Truncate aligns to
// the year 1, which differs for sizes that do not divide a day.
func WindowAt(t time.Time, size time.Duration) time.Time {
	s := int64(size / time.Second)
	if s <= 0 {
		return t
	}
	u := t.Unix()
	return time.Unix(u-((u%s)+s)%s, 0).In(t.Location())
}

// Ledger is the durable usage ledger. Both stores implement it; admission
// counts arrive through the limiter's decisions, not through this
// interface.
type Ledger interface {
	// Adjust applies settlements to windows that admission counted (a
	// settlement for a window never counted changes nothing, and may be
	// reported as Unmatched in a *PartialError), and to the quota counters
	// they name (Adjustment.Quota) together with their windows. A window
	// never goes below zero. An exported window that changes becomes due
	// again. A request in Requests is applied once across every replica
	// that shares the ledger. When only some adjustments were applied,
	// the error is a *PartialError naming the others.
	Adjust(ctx context.Context, adjustments []Adjustment) error
	// Due lists the windows that ended before `before` and are Due, oldest
	// first.
	Due(ctx context.Context, before time.Time) ([]Window, error)
	// Windows lists a consumer's windows that start in [from, to), oldest
	// first.
	Windows(ctx context.Context, consumer string, from, to time.Time) ([]Window, error)
	// Prepare records that an event of value is about to be sent for w
	// (identified by w and w.Events), so that a retry after a crash sends
	// the same identifier and value; a negative value, that w's last event
	// is about to be cancelled; zero, that nothing is.
	Prepare(ctx context.Context, w Window, value int64) error
	// Commit records that Stripe accepted value for the event w identifies
	// (zero: nothing was sent; negative: w's last event was cancelled), and
	// that each window of accounted is accounted at the Units it holds
	// there. One atomic step.
	Commit(ctx context.Context, w Window, value int64, accounted []Window) error
	// Reject records that Stripe refused w's pending event for good: the
	// windows of accounted are set aside with the reason.
	Reject(ctx context.Context, w Window, reason string, accounted []Window) error
}

// PartialError reports adjustments that were not applied; the rest were.
// Failed could not be applied (the store failed); Unmatched found no window
// to apply to (yet: a replica that counted a request while the store was
// away adds its window when the store is back).
type PartialError struct {
	Failed    []Adjustment
	Unmatched []Adjustment
	Err       error
}

func (e *PartialError) Error() string {
	if len(e.Failed) == 0 {
		return fmt.Sprintf("%d adjustments found no window", len(e.Unmatched))
	}
	return fmt.Sprintf("%d adjustments not applied: %v", len(e.Failed), e.Err)
}

func (e *PartialError) Unwrap() error { return e.Err }
