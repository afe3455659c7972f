package plan

import (
	"testing"
	"time"
)

func pricing(t *testing.T, currency, fixed, per1k string) *Pricing {
	t.Helper()
	c, err := ParseCurrency(currency)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseAmount(fixed)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseAmount(per1k)
	if err != nil {
		t.Fatal(err)
	}
	return &Pricing{Currency: c, Fixed: f, Per1K: p}
}

func TestEstimateProjectsThePeriodAtTheRateSoFar(t *testing.T) {
	march := Period{time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)} // 31 days
	day11 := time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)                                                     // 10 days in
	day21 := time.Date(2026, 3, 21, 0, 0, 0, 0, time.UTC)
	// An anchored cycle: Jan 31 to Feb 28 (28 days), half past 14 days in.
	anchored := PeriodAt(time.Date(2026, 2, 14, 12, 0, 0, 0, time.UTC), Month, time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC))

	payg := &Plan{Model: PayG, Quota: &Quota{Requests: 5000, Period: Month, Enforcement: Soft, Cap: 20000}, Pricing: pricing(t, "usd", "10", "0.50")}
	tiered := &Plan{Model: Tiered, Quota: &Quota{Requests: 100000, Period: Month, Enforcement: Hard}, Pricing: pricing(t, "USD", "49.00", "0")}
	small := &Plan{Model: Tiered, Quota: &Quota{Requests: 1000, Period: Month, Enforcement: Hard}, Pricing: pricing(t, "EUR", "49", "0")}
	overage := &Plan{Model: Tiered, Quota: &Quota{Requests: 1000, Period: Month, Enforcement: Soft}, Pricing: pricing(t, "USD", "20", "1")}
	free := &Plan{Model: Freemium, Quota: &Quota{Requests: 1000, Period: Month, Enforcement: Hard}}
	// A hard quota on payg: nothing is ever beyond it to bill.
	hardPayg := &Plan{Model: PayG, Quota: &Quota{Requests: 1000, Period: Month, Enforcement: Hard}, Pricing: pricing(t, "USD", "5", "2")}
	cent := &Plan{Model: PayG, Pricing: pricing(t, "USD", "0", "0.01")} // a cent per 1,000, every unit billed
	yen := &Plan{Model: PayG, Pricing: pricing(t, "JPY", "4900", "5")}
	dinar := &Plan{Model: PayG, Pricing: pricing(t, "BHD", "1.250", "0.0005")}
	dear := &Plan{Model: PayG, Pricing: pricing(t, "USD", "1000000", "1000000")}

	tests := []struct {
		name   string
		plan   *Plan
		period Period
		now    time.Time
		used   int64
		want   Estimate
	}{
		{"zero usage", payg, march, day11, 0,
			Estimate{Currency: "USD", SoFar: 1000, Projected: true, AtEnd: 1000, Limit: 20000}},
		{"early in the period, within the included units", payg, march, march.Start.Add(6 * time.Hour), 3000,
			Estimate{Currency: "USD", SoFar: 1000, Limit: 20000}},
		{"early in the period, beyond them", payg, march, march.Start.Add(12 * time.Hour), 6000,
			Estimate{Currency: "USD", SoFar: 1050, Limit: 20000}},
		// 1,200 units beyond 5,000 so far: $0.60; 6,200 × 31/10 = 19,220
		// at the end, 14,220 beyond: $7.11.
		{"beyond the included units", payg, march, day11, 6200,
			Estimate{Currency: "USD", SoFar: 1060, Projected: true, AtEnd: 1711, UnitsAtEnd: 19220, Limit: 20000}},
		// 31,000 at this rate, stopped at the 20,000 cap on day 21.
		{"projected past the spend cap", payg, march, day11, 10000,
			Estimate{Currency: "USD", SoFar: 1250, Projected: true, AtEnd: 1750, UnitsAtEnd: 20000, Limit: 20000, Capped: true, LimitAt: day21}},
		// Settled debt may take the units past the cap: it is never billed.
		{"past the spend cap", payg, march, day11, 25000,
			Estimate{Currency: "USD", SoFar: 1750, Projected: true, AtEnd: 1750, UnitsAtEnd: 20000, Limit: 20000, Capped: true, LimitReached: true}},
		{"the period is over", payg, march, march.End.Add(time.Hour), 6200,
			Estimate{Currency: "USD", SoFar: 1060, Projected: true, AtEnd: 1060, UnitsAtEnd: 6200, Limit: 20000}},
		{"a fixed price, the quota lasts", tiered, march, day11, 20000,
			Estimate{Currency: "USD", SoFar: 4900, Projected: true, AtEnd: 4900, UnitsAtEnd: 62000, Limit: 100000}},
		{"a fixed price, the quota runs out", tiered, march, day11, 50000,
			Estimate{Currency: "USD", SoFar: 4900, Projected: true, AtEnd: 4900, UnitsAtEnd: 100000, Limit: 100000, Capped: true, LimitAt: day21}},
		// A fixed price is known early; when the quota runs out is not.
		{"a fixed price early in the period", tiered, march, march.Start.Add(time.Hour), 50000,
			Estimate{Currency: "USD", SoFar: 4900, Projected: true, AtEnd: 4900, UnitsAtEnd: 50000, Limit: 100000}},
		// 725 units in 14.5 of 28 days: 1,000 after 20 days.
		{"an anchored cycle", small, anchored, time.Date(2026, 2, 14, 12, 0, 0, 0, time.UTC), 725,
			Estimate{Currency: "EUR", SoFar: 4900, Projected: true, AtEnd: 4900, UnitsAtEnd: 1000, Limit: 1000, Capped: true,
				LimitAt: time.Date(2026, 2, 20, 0, 0, 0, 0, time.UTC)}},
		{"a soft quota's overage on a fixed price", overage, march, day11, 1000,
			Estimate{Currency: "USD", SoFar: 2000, Projected: true, AtEnd: 2210, UnitsAtEnd: 3100}},
		{"pay as you go with a hard quota", hardPayg, march, day11, 1000,
			Estimate{Currency: "USD", SoFar: 500, Projected: true, AtEnd: 500, UnitsAtEnd: 1000, Limit: 1000, Capped: true, LimitReached: true}},
		{"free, running out", free, march, day11, 500,
			Estimate{Free: true, Projected: true, UnitsAtEnd: 1000, Limit: 1000, Capped: true, LimitAt: day21}},
		{"free, used up", free, march, day11, 1000,
			Estimate{Free: true, Projected: true, UnitsAtEnd: 1000, Limit: 1000, Capped: true, LimitReached: true}},
		// $0.005 rounds up to a cent, $0.00499 down; once, on the total.
		{"half a cent rounds up", cent, march, march.End, 500,
			Estimate{Currency: "USD", SoFar: 1, Projected: true, AtEnd: 1, UnitsAtEnd: 500}},
		{"less rounds down", cent, march, march.End, 499,
			Estimate{Currency: "USD", Projected: true, UnitsAtEnd: 499}},
		{"yen have no minor unit", yen, march, march.End, 1500,
			Estimate{Currency: "JPY", SoFar: 4908, Projected: true, AtEnd: 4908, UnitsAtEnd: 1500}},
		{"dinars have three", dinar, march, march.End, 3000,
			Estimate{Currency: "BHD", SoFar: 1252, Projected: true, AtEnd: 1252, UnitsAtEnd: 3000}},
		// 2^40 units at the dearest price: exact, no overflow.
		{"the largest figures", dear, march, march.End, 1 << 40,
			Estimate{Currency: "USD", SoFar: 100_000_000 + 1<<40*100_000, Projected: true, AtEnd: 100_000_000 + 1<<40*100_000, UnitsAtEnd: 1 << 40}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.plan.Estimate(tt.period, tt.now, tt.used)
			tt.want.RateFrom = tt.period.Start.Add(min(24*time.Hour, tt.period.End.Sub(tt.period.Start)/10))
			if !ok || got != tt.want {
				t.Fatalf("Estimate = %+v, %v\nwant       %+v", got, ok, tt.want)
			}
		})
	}
}

// Only a free plan is estimated without pricing.
func TestEstimateNeedsPricingUnlessFree(t *testing.T) {
	march := Period{time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)}
	for _, p := range []*Plan{{Model: Tiered}, {Model: PayG}} {
		if e, ok := p.Estimate(march, march.Start.Add(48*time.Hour), 10); ok {
			t.Errorf("%s without pricing: %+v", p.Model, e)
		}
	}
	if _, ok := (&Plan{Model: Freemium}).Estimate(march, march.Start.Add(48*time.Hour), 10); !ok {
		t.Error("a free plan has no estimate")
	}
}

// A period shorter than ten days is projected after a tenth of it.
func TestEstimateRateFromIsADayOrATenth(t *testing.T) {
	p := &Plan{Model: Tiered, Pricing: &Pricing{Currency: "USD"}}
	tests := []struct {
		unit Unit
		want time.Duration
	}{
		{Hour, 6 * time.Minute},
		{Day, 144 * time.Minute},
		{Week, 16*time.Hour + 48*time.Minute},
		{Month, 24 * time.Hour},
	}
	now := time.Date(2026, 3, 11, 15, 30, 0, 0, time.UTC)
	for _, tt := range tests {
		period := PeriodAt(now, tt.unit, time.Time{})
		e, _ := p.Estimate(period, now, 0)
		if got := e.RateFrom.Sub(period.Start); got != tt.want {
			t.Errorf("%s: rate from %v in, want %v", tt.unit, got, tt.want)
		}
	}
}
