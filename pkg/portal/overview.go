package portal

import (
	"strings"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// Account states the overview tells apart.
const (
	StateActive        = "active"
	StatePaymentFailed = "payment-failed"
	StateSuspended     = "suspended"
)

// accountStatus is the overview's status: the account's state, what it
// means, and what to do about it.
type accountStatus struct {
	State string
	// Label is the state in a word or two ("Payment failed").
	Label string
	// Meaning says what the state does to the customer's requests;
	// Todo what to do about it ("" when nothing), after "Contact <whom>"
	// when ContactTodo.
	Meaning, Todo string
	ContactTodo   bool
	// Deadline is when a failed payment's grace period ends.
	Deadline time.Time
	// ManageBilling offers the Stripe customer portal (the plan page's
	// "Manage billing"), where a payment method is updated.
	ManageBilling bool
	// Contact and ContactURL name whom to turn to ("" : the provider,
	// unnamed).
	Contact, ContactURL string
}

// statusOf is c's status at now. canBill: the session may open the
// Stripe customer portal for c.
func statusOf(c *apikey.Consumer, now time.Time, canBill bool, contact string) accountStatus {
	s := accountStatus{State: StateActive, Label: "Active", Meaning: "Your keys work."}
	s.Contact, s.ContactURL = contact, contactURL(contact)
	switch {
	case c.Suspended:
		// The operator's switch: only the operator lifts it.
		s.State, s.Label = StateSuspended, "Suspended"
		s.Meaning = "Your provider has suspended this account: requests with your keys are refused."
		s.Todo, s.ContactTodo = "to find out why and to have it resumed.", true
	case !c.SuspendAt.IsZero() && now.Before(c.SuspendAt):
		// A failed payment's grace period: a paid invoice ends it.
		s.State, s.Label, s.Deadline = StatePaymentFailed, "Payment failed", c.SuspendAt
		s.Meaning = "Your last payment did not go through. Your keys work until " + when(c.SuspendAt) +
			"; after that, requests with them are refused until the invoice is paid."
		s.ManageBilling = canBill
		if canBill {
			s.Todo = "Update your payment method by " + when(c.SuspendAt) + "."
		} else {
			s.Todo, s.ContactTodo = "to update your payment method by "+when(c.SuspendAt)+".", true
		}
	case !c.SuspendAt.IsZero():
		// The grace period ran out: paying lifts the suspension.
		s.State, s.Label, s.Deadline = StateSuspended, "Suspended", c.SuspendAt
		s.Meaning = "Your last payment did not go through and was not settled by " + when(c.SuspendAt) +
			", so requests with your keys are refused."
		s.ManageBilling = canBill
		if canBill {
			s.Todo = "Update your payment method: your keys work again once the invoice is paid."
		} else {
			s.Todo, s.ContactTodo = "to settle the invoice: your keys work again once it is paid.", true
		}
	}
	return s
}

// when writes a moment as the portal does.
func when(t time.Time) string { return t.UTC().Format("2 Jan 2006 15:04 UTC") }

// contactURL is the link to contact: mailto: for an email address.
func contactURL(contact string) string {
	switch {
	case contact == "":
		return ""
	case strings.Contains(contact, "://"):
		return contact
	}
	return "mailto:" + contact
}

// costView is the overview's "Cost this period": the period's cost so
// far and at its end at the rate so far (plan.Estimate), in words.
type costView struct {
	Free bool
	// Price is the plan's price ("$10.00 per month, plus $0.50 per 1,000
	// units beyond the 5,000 included").
	Price string
	// SoFar and AtEnd are money ("$12.34"); AtEnd is "" when it is too
	// early in the period to project.
	SoFar, AtEnd string
	// Units is the projected units at the period's end; Capped: the
	// spend cap (or quota) stops them.
	Units  int64
	Capped bool
	// Limit names the hard limit: "quota" or "spend cap".
	LimitName string
	// Early says from when the projection is shown.
	Early string
	// Limit says when the quota or spend cap is (or was) reached at this
	// rate; LimitReached: it is.
	Limit        string
	LimitReached bool
}

// costOf is the overview's cost for plan p over period, with used units
// so far at now; nil when p has no pricing (and is not free).
func costOf(p *plan.Plan, period plan.Period, now time.Time, used int64) *costView {
	e, ok := p.Estimate(period, now, used)
	if !ok {
		return nil
	}
	v := &costView{Free: e.Free, Units: e.UnitsAtEnd, Capped: e.Capped, LimitName: "quota"}
	if !e.Free {
		v.Price, v.SoFar = priceWords(p), e.Currency.Format(e.SoFar)
		if e.Projected {
			v.AtEnd = e.Currency.Format(e.AtEnd)
		}
	}
	if p.Quota != nil && p.Quota.Enforcement == plan.Soft {
		v.LimitName = "spend cap"
	}
	rated := !now.Before(e.RateFrom)
	of := " of " + groupDigits(e.Limit) + " units"
	end := when(period.End)
	switch {
	case e.LimitReached:
		v.LimitReached = true
		v.Limit = "You have reached your " + v.LimitName + of + ": requests are refused until the period ends, " + end + "."
	case !e.LimitAt.IsZero():
		v.Limit = "At this rate you will reach your " + v.LimitName + of + " on " + when(e.LimitAt) +
			"; after that, requests are refused until the period ends, " + end + "."
	case e.Limit > 0 && rated && v.LimitName == "quota":
		v.Limit = "At this rate your quota" + of + " lasts the period."
	case e.Limit > 0 && rated:
		v.Limit = "At this rate you stay under your spend cap" + of + "."
	}
	if !rated && (!e.Projected || e.Limit > 0 && !e.LimitReached) {
		v.Early = "It is early in the period to project from the rate so far: the projection starts " + when(e.RateFrom) + "."
	}
	return v
}

// priceWords says p's price: "$49.00 per month", "$0.50 per 1,000 units
// beyond the 5,000 included".
func priceWords(p *plan.Plan) string {
	pr := p.Pricing
	c := pr.Currency
	var parts []string
	if pr.Fixed > 0 || pr.Per1K == 0 {
		parts = append(parts, c.FormatAmount(pr.Fixed)+" per "+string(p.UsagePeriod()))
	}
	if pr.Per1K > 0 {
		units := c.FormatAmount(pr.Per1K) + " per 1,000 units"
		if q := p.Quota; q != nil && q.Requests > 0 {
			units += " beyond the " + groupDigits(q.Requests) + " included"
		}
		parts = append(parts, units)
	}
	return strings.Join(parts, ", plus ")
}
