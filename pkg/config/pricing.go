package config

import (
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/levyhq/levy/pkg/plan"
)

// PricingSpec is what a plan costs, as written in the file. levy bills
// nothing from it (Stripe bills from its prices): the developer portal
// tells a customer from it what the period costs so far and what it will
// cost at its end at the current rate.
type PricingSpec struct {
	// Currency is an ISO 4217 code: USD, EUR, JPY.
	Currency string `yaml:"currency"`
	// Fixed is the price of one period (the quota's period, a calendar
	// month without a quota), in the currency's major units: 49.00.
	Fixed Price `yaml:"fixed"`
	// Per1K is the price of 1,000 units beyond the included ones (payg,
	// or a tiered plan with a soft quota): 0.50, or 0.0005 for fractions
	// of a cent.
	Per1K Price `yaml:"per_1k"`
}

// Price is an amount of money as written in the file (49, 49.00, "0.0005"):
// its text is read as a decimal, never through a float.
type Price plan.Amount

// UnmarshalYAML implements yaml.Unmarshaler, reporting the line of a bad
// value.
func (p *Price) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n, fmt.Errorf("a price is a decimal number such as 49.00"))
	}
	a, err := plan.ParseAmount(n.Value)
	if err != nil {
		return lineError(n, err)
	}
	*p = Price(a)
	return nil
}

func (c *Config) validatePricing(errs *Errors, at string, p PlanSpec) {
	pr := p.Pricing
	if pr == nil {
		return
	}
	at += ".pricing"
	if p.Model == string(plan.Freemium) {
		c.problem(errs, at, "a freemium plan is free: leave out pricing (the portal says so without it)")
		return
	}
	cur, err := plan.ParseCurrency(pr.Currency)
	if err != nil {
		c.problem(errs, at+".currency", "%v", err)
		return
	}
	if plan.Amount(pr.Fixed).Decimals() > cur.Decimals() {
		most := fmt.Sprintf("at most %d decimals", cur.Decimals())
		if cur.Decimals() == 0 {
			most = "no decimals"
		}
		c.problem(errs, at+".fixed", "%s: %s prices have %s (per_1k may have up to 6)", plan.Amount(pr.Fixed), cur, most)
	}
	// A tiered plan's quota is hard unless it says soft.
	soft := p.Quota != nil && p.Quota.Enforcement == string(plan.Soft)
	if pr.Per1K != 0 && p.Model != string(plan.PayG) && !soft {
		c.problem(errs, at+".per_1k", "prices units beyond the included ones, and a %s plan without a soft quota has none: leave it out, or give the plan quota.enforcement: soft", p.Model)
	}
}

// pricing is the plan's pricing; call it on a validated config.
func (p *PricingSpec) pricing() *plan.Pricing {
	if p == nil {
		return nil
	}
	cur, _ := plan.ParseCurrency(p.Currency)
	return &plan.Pricing{Currency: cur, Fixed: plan.Amount(p.Fixed), Per1K: plan.Amount(p.Per1K)}
}
