package config

import (
	"slices"
	"strconv"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// Catalog builds the plan catalog. Call it on a validated config.
func (c *Config) Catalog() (*plan.Catalog, error) {
	plans := make([]*plan.Plan, 0, len(c.Plans))
	for _, name := range sortedKeys(c.Plans) {
		ps := c.Plans[name]
		p := &plan.Plan{Name: name, Model: plan.Model(ps.Model), Costs: ps.Costs,
			Meter: ps.Billing.Meter, StripePrices: ps.Billing.StripePrices, NonBillable: nonBillable(ps.Billing.NonBillable)}
		p.Rate = ps.Rate.rate()
		p.Pricing = ps.Pricing.pricing()
		for _, a := range ps.Alerts {
			p.Alerts = append(p.Alerts, int(a))
		}
		slices.Sort(p.Alerts)
		for route, rs := range ps.Routes {
			if p.Routes == nil {
				p.Routes = map[string]plan.Route{}
			}
			p.Routes[route] = plan.Route{Rate: rs.Rate.rate(), Cost: rs.Cost}
		}
		if q := ps.Quota; q != nil {
			unit, _ := plan.ParseUnit(q.Period)
			enf := q.Enforcement
			if enf == "" {
				enf = defaultEnforcement(ps.Model)
			}
			p.Quota = &plan.Quota{Requests: q.Requests, Period: unit, Enforcement: plan.Enforcement(enf), Cap: q.Cap}
		}
		plans = append(plans, p)
	}
	return plan.NewCatalog(plans...)
}

// Directory returns the consumers and keys declared in the file.
func (c *Config) Directory() ([]*apikey.Consumer, []*apikey.Key) {
	var consumers []*apikey.Consumer
	var keys []*apikey.Key
	for _, cs := range c.Consumers {
		con := &apikey.Consumer{ID: cs.ID, Plan: cs.Plan, Suspended: cs.Status == "suspended", StripeCustomerID: cs.StripeCustomerID}
		if cs.PeriodAnchor != nil {
			con.PeriodAnchor = cs.PeriodAnchor.UTC()
		}
		consumers = append(consumers, con)
		for _, ks := range cs.Keys {
			// A hash says nothing of its key; a plaintext key (dev mode)
			// gives its hint.
			k := &apikey.Key{ID: c.keyID(ks), Hash: c.keyHash(ks), ConsumerID: cs.ID, Revoked: ks.Status == "revoked", Hint: apikey.Hint(ks.Key)}
			if ks.ExpiresAt != nil {
				k.ExpiresAt = ks.ExpiresAt.UTC()
			}
			keys = append(keys, k)
		}
	}
	return consumers, keys
}

func (r *RateSpec) rate() *plan.Rate {
	if r == nil {
		return nil
	}
	return &plan.Rate{Requests: r.Requests, Per: time.Duration(r.Per), Burst: r.Burst}
}

// nonBillable parses validated status patterns ("429", "5xx").
func nonBillable(patterns []string) plan.NonBillable {
	if len(patterns) == 0 {
		return plan.DefaultNonBillable()
	}
	n := plan.NonBillable{Codes: map[int]bool{}, Classes: map[int]bool{}}
	for _, p := range patterns {
		if len(p) == 3 && p[1:] == "xx" {
			n.Classes[int(p[0]-'0')] = true
		} else if code, err := strconv.Atoi(p); err == nil {
			n.Codes[code] = true
		}
	}
	return n
}
