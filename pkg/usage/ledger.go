// Package usage is what each request really cost: the durable usage
// ledger (units per consumer, meter and window, counted at admission in
// the same store operation as the limits) and the access-log receiver
// that settles it (refunds statuses that are not billable, adds units the
// upstream reports).
package usage

import (
	"context"
	"fmt"
	"time"
)

// Window is one ledger entry: a consumer's units on one meter in one
// window of time.
type Window struct {
	Consumer string
	Meter    string
	Start    time.Time
	Size     time.Duration
	// Units is everything counted, settled. Billable is the part to
	// invoice (for payg, the units beyond the plan's included units in
	// the billing period); it is not stored but worked out at export from
	// the period's windows.
	Units, Billable int64
	// Exported is set once Stripe accepted the window's meter event.
	Exported bool
}

// End is when the window closes.
func (w Window) End() time.Time { return w.Start.Add(w.Size) }

// Adjustment changes a window after admission (settlement).
type Adjustment struct {
	Consumer string
	Meter    string
	// At is when the request started: it picks the window.
	At    time.Time
	Units int64 // a delta, may be negative
}

// Ledger is the durable usage ledger. Both stores implement it; admission
// counts arrive through the limiter's decisions, not through this
// interface.
type Ledger interface {
	// Adjust applies settlements to windows that admission counted. A
	// window never goes below zero. When only some were applied, the
	// error is a *PartialError naming the others.
	Adjust(ctx context.Context, adjustments []Adjustment) error
	// Closed lists unexported windows that ended before `before`, oldest
	// first, at most max.
	Closed(ctx context.Context, before time.Time, max int) ([]Window, error)
	// MarkExported records that Stripe accepted a window.
	MarkExported(ctx context.Context, w Window) error
	// Windows lists a consumer's windows that start in [from, to).
	Windows(ctx context.Context, consumer string, from, to time.Time) ([]Window, error)
}

// PartialError reports adjustments that were not applied; the rest were.
type PartialError struct {
	Failed []Adjustment
	Err    error
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("%d adjustments not applied: %v", len(e.Failed), e.Err)
}

func (e *PartialError) Unwrap() error { return e.Err }
