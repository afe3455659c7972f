package billing

import (
	"context"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/consumerlimits"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// UsageReport is a consumer's current billing period.
type UsageReport struct {
	Consumer    string    `json:"consumer"`
	Plan        string    `json:"plan"`
	Model       string    `json:"model"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	// Used is the period's units (the quota counter: what admission
	// counted, moved by access-log settlement like the ledger); Included
	// the units
	// the plan includes (payg) or allows (hard quotas); Overage the units
	// beyond them.
	Used     int64 `json:"used"`
	Included int64 `json:"included"`
	Overage  int64 `json:"overage"`
	// Settled is the ledger's units in the period (after access-log
	// settlement); Billable the part to invoice; Exported the part Stripe
	// has accepted, Pending the rest.
	Settled  int64 `json:"settled"`
	Billable int64 `json:"billable"`
	Exported int64 `json:"exported"`
	Pending  int64 `json:"pending"`
	// Windows are the period's ledger windows (levy usage --windows).
	Windows []WindowReport `json:"windows,omitempty"`
}

// Peeker reads limits without counting anything (limiter.Local.Peek).
type Peeker interface {
	Peek(ctx context.Context, limits []limiter.Limit) (limiter.Reading, error)
}

// Report reads a consumer's current period from the limiter (without
// counting anything) and the ledger.
func Report(ctx context.Context, lim Peeker, ledger usage.Ledger, c *apikey.Consumer, p *plan.Plan, cat *plan.Catalog) (UsageReport, error) {
	units := consumerlimits.For(c, p, 0, 0).Quota // the quota or usage counter
	read, err := lim.Peek(ctx, []limiter.Limit{units})
	if err != nil {
		return UsageReport{}, err
	}
	st := read.Statuses[0]
	period := plan.PeriodAt(read.Now, units.Unit, units.Anchor)
	r := UsageReport{Consumer: c.ID, Plan: p.Name, Model: string(p.Model), PeriodStart: period.Start, PeriodEnd: period.End,
		Used: st.Used, Included: units.Max, Overage: max(st.Used-units.Max, 0)}
	if units.Max == 0 && units.Soft {
		r.Overage = 0 // no quota: nothing is "over"
		if p.Model == plan.PayG {
			r.Overage = st.Used
		}
	}
	windows, err := ledger.Windows(ctx, c.ID, period.Start, period.End)
	if err != nil {
		return UsageReport{}, err
	}
	// Every meter the consumer's usage in the period went to: a plan
	// change may have moved it.
	accounts := map[string][]usage.Window{}
	var meters []string
	for _, w := range windows {
		if _, ok := accounts[w.Meter]; !ok {
			meters = append(meters, w.Meter)
		}
		accounts[w.Meter] = append(accounts[w.Meter], w)
	}
	for _, m := range meters {
		st := StatementOf(Account{Consumer: c.ID, Meter: m, Period: period}, accounts[m], c, cat)
		r.Billable += st.Target
		r.Exported += st.Billed
		for _, w := range st.Windows {
			r.Settled += w.Units
		}
		for _, w := range st.Windows {
			r.Windows = append(r.Windows, reportWindow(w))
		}
	}
	r.Pending = max(r.Billable-r.Exported, 0)
	if t := usage.TermsOf(p); t.Billed {
		r.Overage = max(r.Settled-r.Included, 0)
	}
	return r, nil
}

// WindowReport is one ledger window as levy usage --windows shows it.
type WindowReport struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Plan  string    `json:"plan,omitempty"` // the plan its units were admitted under
	Meter string    `json:"meter"`
	// Admitted is what admission counted; Refunded and Reported what
	// settlement took off and added; Units the result.
	Admitted int64 `json:"admitted"`
	Refunded int64 `json:"refunded"`
	Reported int64 `json:"reported"`
	Units    int64 `json:"units"`
	// Billable is the window's part of the period's bill; Billed the value
	// of the meter events it identifies (an event carries its period's
	// units not billed before); Identifiers those events' identifiers.
	Billable    int64    `json:"billable"`
	Billed      int64    `json:"billed"`
	Exported    bool     `json:"exported"`
	Identifiers []string `json:"identifiers,omitempty"`
	// Pending is an event's value sent and not yet confirmed; Rejected why
	// Stripe refused the window for good.
	Pending  int64  `json:"pending,omitempty"`
	Rejected string `json:"rejected,omitempty"`
}

func reportWindow(w usage.Window) WindowReport {
	r := WindowReport{Start: w.Start, End: w.End(), Plan: w.Terms.Plan, Meter: w.Meter,
		Admitted: w.Units - w.Reported + w.Refunded, Refunded: w.Refunded, Reported: w.Reported, Units: w.Units,
		Billable: w.Billable, Billed: w.Billed, Exported: w.Exported, Pending: w.Pending, Rejected: w.Rejected}
	n := w.Events
	if w.Pending > 0 {
		n++
	}
	for i := range n {
		r.Identifiers = append(r.Identifiers, Identifier(w, i))
	}
	return r
}
