package portal

import (
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// Each state says what it means and what to do: pay through Stripe when
// the session can open its customer portal, else ask whom the operator
// names.
func TestStatusSaysWhatToDo(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	grace := now.Add(72 * time.Hour)
	tests := []struct {
		name     string
		consumer apikey.Consumer
		canBill  bool
		contact  string
		want     accountStatus
	}{
		{"active", apikey.Consumer{}, true, "", accountStatus{State: StateActive, Label: "Active", Meaning: "Your keys work."}},
		{"payment failed, with Stripe", apikey.Consumer{SuspendAt: grace}, true, "billing@example.com", accountStatus{
			State: StatePaymentFailed, Label: "Payment failed", Deadline: grace, ManageBilling: true,
			Meaning:    "Your last payment did not go through. Your keys work until 13 Mar 2026 12:00 UTC; after that, requests with them are refused until the invoice is paid.",
			Todo:       "Update your payment method by 13 Mar 2026 12:00 UTC.",
			Contact:    "billing@example.com",
			ContactURL: "mailto:billing@example.com"}},
		{"payment failed, without Stripe", apikey.Consumer{SuspendAt: grace}, false, "https://example.com/help", accountStatus{
			State: StatePaymentFailed, Label: "Payment failed", Deadline: grace,
			Meaning:     "Your last payment did not go through. Your keys work until 13 Mar 2026 12:00 UTC; after that, requests with them are refused until the invoice is paid.",
			Todo:        "to update your payment method by 13 Mar 2026 12:00 UTC.",
			ContactTodo: true, Contact: "https://example.com/help", ContactURL: "https://example.com/help"}},
		{"the grace period ran out", apikey.Consumer{SuspendAt: now.Add(-time.Hour)}, true, "", accountStatus{
			State: StateSuspended, Label: "Suspended", Deadline: now.Add(-time.Hour), ManageBilling: true,
			Meaning: "Your last payment did not go through and was not settled by 10 Mar 2026 11:00 UTC, so requests with your keys are refused.",
			Todo:    "Update your payment method: your keys work again once the invoice is paid."}},
		{"the grace period ran out, without Stripe", apikey.Consumer{SuspendAt: now}, false, "", accountStatus{
			State: StateSuspended, Label: "Suspended", Deadline: now,
			Meaning: "Your last payment did not go through and was not settled by 10 Mar 2026 12:00 UTC, so requests with your keys are refused.",
			Todo:    "to settle the invoice: your keys work again once it is paid.", ContactTodo: true}},
		// The operator's switch wins: paying does not lift it.
		{"suspended by the provider", apikey.Consumer{Suspended: true, SuspendAt: grace}, true, "billing@example.com", accountStatus{
			State: StateSuspended, Label: "Suspended",
			Meaning: "Your provider has suspended this account: requests with your keys are refused.",
			Todo:    "to find out why and to have it resumed.", ContactTodo: true,
			Contact: "billing@example.com", ContactURL: "mailto:billing@example.com"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statusOf(&tt.consumer, now, tt.canBill, tt.contact); got != tt.want {
				t.Fatalf("statusOf =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// The cost in words: money as people write it, the projection only once
// the rate says something, and when the quota or cap is reached.
func TestCostSaysSoFarAtTheEndAndWhenTheLimitIsReached(t *testing.T) {
	march := plan.Period{Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)}
	day11 := time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC)
	usd := func(fixed, per1k plan.Amount) *plan.Pricing {
		return &plan.Pricing{Currency: "USD", Fixed: fixed, Per1K: per1k}
	}
	payg := &plan.Plan{Model: plan.PayG, Quota: &plan.Quota{Requests: 5000, Period: plan.Month, Enforcement: plan.Soft, Cap: 20000},
		Pricing: usd(10_000_000, 500_000)}
	tiered := &plan.Plan{Model: plan.Tiered, Quota: &plan.Quota{Requests: 100000, Period: plan.Month, Enforcement: plan.Hard}, Pricing: usd(49_000_000, 0)}
	free := &plan.Plan{Model: plan.Freemium, Quota: &plan.Quota{Requests: 1000, Period: plan.Month, Enforcement: plan.Hard}}
	tests := []struct {
		name string
		plan *plan.Plan
		now  time.Time
		used int64
		want *costView
	}{
		{"no pricing", &plan.Plan{Model: plan.Tiered}, day11, 10, nil},
		{"payg under the cap", payg, day11, 6200, &costView{Price: "$10.00 per month, plus $0.50 per 1,000 units beyond the 5,000 included",
			SoFar: "$10.60", AtEnd: "$17.11", Units: 19220, LimitName: "spend cap",
			Limit: "At this rate you stay under your spend cap of 20,000 units."}},
		{"payg reaching the cap", payg, day11, 10000, &costView{Price: "$10.00 per month, plus $0.50 per 1,000 units beyond the 5,000 included",
			SoFar: "$12.50", AtEnd: "$17.50", Units: 20000, Capped: true, LimitName: "spend cap",
			Limit: "At this rate you will reach your spend cap of 20,000 units on 21 Mar 2026 00:00 UTC; after that, requests are refused until the period ends, 1 Apr 2026 00:00 UTC."}},
		{"payg early", payg, march.Start.Add(time.Hour), 6000, &costView{Price: "$10.00 per month, plus $0.50 per 1,000 units beyond the 5,000 included",
			SoFar: "$10.50", LimitName: "spend cap",
			Early: "It is early in the period to project from the rate so far: the projection starts 2 Mar 2026 00:00 UTC."}},
		{"tiered, the quota runs out", tiered, day11, 50000, &costView{Price: "$49.00 per month", SoFar: "$49.00", AtEnd: "$49.00",
			Units: 100000, Capped: true, LimitName: "quota",
			Limit: "At this rate you will reach your quota of 100,000 units on 21 Mar 2026 00:00 UTC; after that, requests are refused until the period ends, 1 Apr 2026 00:00 UTC."}},
		{"tiered, used up", tiered, day11, 100000, &costView{Price: "$49.00 per month", SoFar: "$49.00", AtEnd: "$49.00",
			Units: 100000, Capped: true, LimitName: "quota", LimitReached: true,
			Limit: "You have reached your quota of 100,000 units: requests are refused until the period ends, 1 Apr 2026 00:00 UTC."}},
		{"free, lasting", free, day11, 100, &costView{Free: true, Units: 310, LimitName: "quota",
			Limit: "At this rate your quota of 1,000 units lasts the period."}},
		{"free, early", free, march.Start.Add(time.Hour), 100, &costView{Free: true, Units: 100, LimitName: "quota",
			Early: "It is early in the period to project from the rate so far: the projection starts 2 Mar 2026 00:00 UTC."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := costOf(tt.plan, march, tt.now, tt.used)
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Fatalf("costOf =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}
