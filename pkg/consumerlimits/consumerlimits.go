// Package consumerlimits builds the limits a consumer's plan puts on its
// requests: the plan's token bucket, its quota (or a usage counter), and
// the usage ledger. It is the one place that says what they are and how
// their state is keyed; ext_authz decides them, the usage report reads the
// quota, and a developer portal shows them, all through For.
package consumerlimits

import (
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// Limits are a consumer's limits on one plan, by name.
type Limits struct {
	// Rate is the plan's token bucket, one token a request; nil when the
	// plan has no rate. It is per plan, so an upgrade starts on the new
	// plan's full bucket at once.
	Rate *limiter.Limit
	// Quota is the plan's quota per billing period, or a soft usage
	// counter without a maximum when the plan has none (usage is counted
	// either way). It is not per plan: usage so far in the period carries
	// over to a new plan's quota.
	Quota limiter.Limit
	// Ledger counts the units in the usage ledger's window, in the same
	// decision; nil when there is no ledger window.
	Ledger *limiter.Limit
}

// For returns the limits consumer c's requests on plan p are decided
// against, with the quota and the ledger at cost; window is the usage
// ledger's window (zero: no ledger). All of them carry the consumer's hash
// tag, so they share one store slot.
func For(c *apikey.Consumer, p *plan.Plan, cost int64, window time.Duration) Limits {
	var l Limits
	if r := p.Rate; r != nil {
		l.Rate = &limiter.Limit{
			Kind: limiter.Bucket, Name: "rate", Key: keyspace.Rate(c.ID, p.Name), Cost: 1,
			Requests: r.Requests, Per: r.Per, Burst: r.Burst,
		}
	}
	l.Quota = limiter.Limit{Kind: limiter.Quota, Name: "usage", Key: usage.QuotaKey(c.ID), Cost: cost,
		Unit: p.UsagePeriod(), Anchor: c.PeriodAnchor, Soft: true}
	if pq := p.Quota; pq != nil {
		l.Quota.Name, l.Quota.Max, l.Quota.Soft, l.Quota.Cap = "quota", pq.Requests, pq.Enforcement == plan.Soft, pq.Cap
	}
	if window > 0 {
		l.Ledger = &limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey(c.ID, usage.TermsOf(p)), Cost: cost, WindowSize: window}
	}
	return l
}

// Slice returns the limits as one decision takes them, in this order: Rate
// (when set), Quota, Ledger (when set). QuotaAt and LedgerAt say where the
// quota and the ledger are, for reading their statuses.
func (l Limits) Slice() []limiter.Limit {
	out := make([]limiter.Limit, 0, 3)
	if l.Rate != nil {
		out = append(out, *l.Rate)
	}
	out = append(out, l.Quota)
	if l.Ledger != nil {
		out = append(out, *l.Ledger)
	}
	return out
}

// QuotaAt is the quota's index in Slice.
func (l Limits) QuotaAt() int {
	if l.Rate != nil {
		return 1
	}
	return 0
}

// LedgerAt is the ledger's index in Slice, -1 when there is none.
func (l Limits) LedgerAt() int {
	if l.Ledger == nil {
		return -1
	}
	return l.QuotaAt() + 1
}
