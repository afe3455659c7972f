package config

import (
	"testing"

	"github.com/levyhq/levy/pkg/plan"
)

// A price is read as its text: a YAML float, an int or a string, exactly.
func TestPricesAreReadAsWritten(t *testing.T) {
	text := `plans:
  a: {model: tiered, pricing: {currency: eur, fixed: 19.90}}
  b: {model: payg, pricing: {currency: USD, fixed: 5, per_1k: "0.0005"}}
  c: {model: tiered}
`
	c, err := Parse([]byte(text), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	cat, err := c.Catalog()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		plan string
		want *plan.Pricing
	}{
		{"a", &plan.Pricing{Currency: "EUR", Fixed: 19_900_000}},
		{"b", &plan.Pricing{Currency: "USD", Fixed: 5_000_000, Per1K: 500}},
		{"c", nil},
	}
	for _, tt := range tests {
		p, _ := cat.Get(tt.plan)
		if (p.Pricing == nil) != (tt.want == nil) || p.Pricing != nil && *p.Pricing != *tt.want {
			t.Errorf("plan %s: pricing %+v, want %+v", tt.plan, p.Pricing, tt.want)
		}
	}
}
