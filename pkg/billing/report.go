package billing

import (
	"context"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/authz"
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
	// Used is the period's units (the quota counter); Included the units
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
}

// Report reads a consumer's current period from the limiter (without
// counting anything) and the ledger.
func Report(ctx context.Context, lim limiter.Limiter, ledger usage.Ledger, c *apikey.Consumer, p *plan.Plan) (UsageReport, error) {
	limits := authz.Limits(c, p, 0, 0)
	units := limits[len(limits)-1] // the quota or usage counter
	d, err := lim.Decide(ctx, []limiter.Limit{units})
	if err != nil {
		return UsageReport{}, err
	}
	st := d.Statuses[0]
	period := plan.PeriodAt(d.Now, units.Unit, units.Anchor)
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
	t := termsOf(c, p)
	var prior int64
	for _, w := range windows {
		if w.Meter != p.Meter {
			continue
		}
		var bill int64
		if t.billed {
			bill = beyond(prior, w.Units, t.included)
		}
		prior += w.Units
		r.Settled += w.Units
		r.Billable += bill
		if w.Exported {
			r.Exported += bill
		}
	}
	r.Pending = r.Billable - r.Exported
	if t.billed {
		r.Overage = max(r.Settled-r.Included, 0)
	}
	return r, nil
}
