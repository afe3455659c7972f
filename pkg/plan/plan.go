// Package plan defines what a consumer buys: a billing model, a rate (token
// bucket), a quota per billing period and per-route costs. A Catalog is an
// immutable snapshot of all plans; configuration reloads swap whole catalogs.
package plan

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Model is one of the three billing models every plan is one of.
type Model string

const (
	// Tiered is a fixed monthly plan with a hard quota.
	Tiered Model = "tiered"
	// PayG is metered: included units, then allowed and billed as overage,
	// with an optional hard cap.
	PayG Model = "payg"
	// Freemium is free, strictly throttled, with a small hard quota.
	Freemium Model = "freemium"
)

// Enforcement says what happens when a quota is used up.
type Enforcement string

const (
	// Hard denies with 429 until the period resets.
	Hard Enforcement = "hard"
	// Soft allows and counts the excess as overage.
	Soft Enforcement = "soft"
)

// Rate is a token bucket: Requests per Per, holding at most Burst tokens.
type Rate struct {
	Requests int64
	Per      time.Duration
	Burst    int64
}

// Quota limits the units used per billing period.
type Quota struct {
	// Requests is the quota (hard) or the included units (soft).
	Requests    int64
	Period      Unit
	Enforcement Enforcement
	// Cap, for soft quotas, is a hard ceiling on all units of a period
	// (a payg spend cap, in units). Zero means none.
	Cap int64
}

// Plan is one sellable plan.
type Plan struct {
	Name  string
	Model Model
	Rate  *Rate  // nil: no rate limit
	Quota *Quota // nil: usage is still counted per month, never limited
	// Costs maps a path prefix to the units one request costs; the longest
	// matching prefix wins, otherwise a request costs one unit.
	Costs map[string]int64
	// Routes set limits and costs per `route` descriptor value for
	// RateLimitService rules that take their limit from the plan.
	Routes map[string]Route
	// Meter is the Stripe billing meter's event name that this plan's
	// billable usage is reported to; empty reports nothing.
	Meter string
	// StripePrices are the Stripe prices whose subscriptions put a
	// consumer on this plan.
	StripePrices []string
	// NonBillable lists response statuses that are refunded at settlement:
	// exact codes (429) or classes (500 for "5xx", as 5 in Classes).
	NonBillable NonBillable
	// Pricing is what the plan costs, for the portal's estimate; nil when
	// the config gives no prices.
	Pricing *Pricing
	// Alerts are the percentages of the period's limit (the spend cap when
	// there is one, else the quota or included units) whose crossing
	// sends a usage alert, ascending.
	Alerts []int
	// costPrefixes is Costs' keys, longest first.
	costPrefixes []string
}

// NonBillable is a set of response statuses that cost nothing.
type NonBillable struct {
	Codes   map[int]bool
	Classes map[int]bool // 5 means 5xx
}

// DefaultNonBillable refunds 429 and every 5xx.
func DefaultNonBillable() NonBillable {
	return NonBillable{Codes: map[int]bool{429: true}, Classes: map[int]bool{5: true}}
}

// Billable reports whether a response with this status is billed.
func (n NonBillable) Billable(status int) bool {
	return !n.Codes[status] && !n.Classes[status/100]
}

// Route is a plan's limit and cost for one route of the RateLimitService.
type Route struct {
	Rate *Rate // nil: the rule's own limit
	Cost int64 // units per hit; 0 means 1
}

// Finish prepares derived fields; call it once after filling a Plan.
func (p *Plan) Finish() {
	p.costPrefixes = p.costPrefixes[:0]
	for prefix := range p.Costs {
		p.costPrefixes = append(p.costPrefixes, prefix)
	}
	sort.Slice(p.costPrefixes, func(i, j int) bool {
		a, b := p.costPrefixes[i], p.costPrefixes[j]
		if len(a) != len(b) {
			return len(a) > len(b)
		}
		return a < b
	})
}

// CostFor returns the units a request to path costs. The query string is
// ignored.
func (p *Plan) CostFor(path string) int64 {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	for _, prefix := range p.costPrefixes {
		if strings.HasPrefix(path, prefix) {
			return p.Costs[prefix]
		}
	}
	return 1
}

// UsagePeriod is the period usage is counted over: the quota's, or a
// calendar month for plans without a quota.
func (p *Plan) UsagePeriod() Unit {
	if p.Quota != nil {
		return p.Quota.Period
	}
	return Month
}

// Catalog is an immutable set of plans by name.
type Catalog struct {
	plans  map[string]*Plan
	names  []string
	prices map[string]*Plan
}

// NewCatalog builds a catalog; plans must not be changed afterwards.
func NewCatalog(plans ...*Plan) (*Catalog, error) {
	c := &Catalog{plans: make(map[string]*Plan, len(plans)), prices: map[string]*Plan{}}
	for _, p := range plans {
		if _, dup := c.plans[p.Name]; dup {
			return nil, fmt.Errorf("duplicate plan %q", p.Name)
		}
		p.Finish()
		c.plans[p.Name] = p
		for _, price := range p.StripePrices {
			c.prices[price] = p
		}
		c.names = append(c.names, p.Name)
	}
	sort.Strings(c.names)
	return c, nil
}

// Get returns the named plan.
func (c *Catalog) Get(name string) (*Plan, bool) {
	p, ok := c.plans[name]
	return p, ok
}

// ByStripePrice returns the plan a Stripe price puts a subscriber on.
func (c *Catalog) ByStripePrice(price string) (*Plan, bool) {
	p, ok := c.prices[price]
	return p, ok
}

// Names lists the plans in name order.
func (c *Catalog) Names() []string { return c.names }
