// Package consumerlimits builds the limits a consumer's plan puts on its
// requests: the plan's token bucket, its quota (or a usage counter), and
// the usage ledger. It is the one place that says what they are and how
// their state is keyed; ext_authz decides them, the usage report reads the
// quota, and a developer portal shows them, all through For.
package consumerlimits

import (
	"context"
	"fmt"
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

// Period is consumer c's billing period on plan p that holds t: the
// period its quota (or usage) counter counts, the one levy usage reports
// and usage alerts and the console's denials are counted in.
func Period(c *apikey.Consumer, p *plan.Plan, t time.Time) plan.Period {
	q := For(c, p, 0, 0).Quota
	return plan.PeriodAt(t, q.Unit, q.Anchor)
}

// Peeker reads limits without counting anything (limiter.Local.Peek,
// limiter.Redis.Peek).
type Peeker interface {
	Peek(ctx context.Context, limits []limiter.Limit) (limiter.Reading, error)
}

// Subject is a consumer on its plan, whose period usage is to be read.
type Subject struct {
	Consumer *apikey.Consumer
	Plan     *plan.Plan
}

// PeriodUsage is a consumer's units in its current billing period.
type PeriodUsage struct {
	// Quota is the counter that was read (For's Quota at cost 0): its
	// Max, Soft and Cap say what the units count against.
	Quota  limiter.Limit
	Used   int64
	Period plan.Period
	// Now is the store's clock at the read.
	Now time.Time
}

// PeekBatch is how many consumers a PeekPeriods call of the console's
// index and of the usage alerts' scan reads: one Peek, so one round trip
// to one Redis instead of one a consumer. A scan for usage alerts of
// 100,000 consumers on Redis over loopback (pkg/alert's BenchmarkScan100k)
// takes 0.32 s and 100 round trips this way, 6.2 to 6.6 s and 100,000
// round trips with a Peek a consumer.
const PeekBatch = 1000

// PeekPeriods reads the period usage of subjects in one Peek (one round
// trip to the local store or to one Redis; on a Redis Cluster one
// pipeline, a round trip to each master). The result is in subjects'
// order.
func PeekPeriods(ctx context.Context, r Peeker, subjects []Subject) ([]PeriodUsage, error) {
	if len(subjects) == 0 {
		return nil, nil
	}
	limits := make([]limiter.Limit, len(subjects))
	for i, s := range subjects {
		limits[i] = For(s.Consumer, s.Plan, 0, 0).Quota
	}
	read, err := r.Peek(ctx, limits)
	if err != nil {
		return nil, err
	}
	if len(read.Statuses) != len(limits) {
		return nil, fmt.Errorf("peek answered %d statuses for %d limits", len(read.Statuses), len(limits))
	}
	out := make([]PeriodUsage, len(limits))
	for i, st := range read.Statuses {
		q := limits[i]
		out[i] = PeriodUsage{Quota: q, Used: st.Used, Period: plan.PeriodAt(read.Now, q.Unit, q.Anchor), Now: read.Now}
	}
	return out, nil
}
