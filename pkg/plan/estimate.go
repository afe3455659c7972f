package plan

import (
	"math"
	"math/bits"
	"time"
)

// Estimate is a billing period's cost at its usage so far, and its cost
// at its end if usage goes on at the rate seen so far in it: what the
// developer portal's overview tells a customer. Money is in the
// currency's minor units (cents), rounded as Pricing.Cost rounds.
type Estimate struct {
	Currency Currency
	// Free: the plan costs nothing (freemium).
	Free bool
	// SoFar is the period's cost so far: the fixed price and the units
	// beyond the included ones so far.
	SoFar int64
	// Projected: AtEnd and UnitsAtEnd are known. Early in the period
	// (before RateFrom) they are not when the cost depends on the rate:
	// a few hours' rate says little about a month.
	Projected bool
	// RateFrom is when the period has run long enough for its rate to be
	// projected: a day in, or a tenth of it for periods shorter than ten
	// days.
	RateFrom time.Time
	// AtEnd is the projected cost of the whole period, UnitsAtEnd its
	// projected units (no more than Limit).
	AtEnd      int64
	UnitsAtEnd int64
	// Limit is the most units the period allows: a hard quota, or a soft
	// quota's spend cap; 0 when there is none. Capped: it stops the
	// projection (or the units so far).
	Limit  int64
	Capped bool
	// LimitReached: the units so far are at Limit already.
	LimitReached bool
	// LimitAt is when Limit is reached at this rate, when that is before
	// the period ends; zero otherwise, and before RateFrom.
	LimitAt time.Time
}

// Estimate projects period's cost from used, its units up to now: units
// so far / time elapsed × the whole period, stopped at the hard quota or
// the spend cap, the units beyond the included ones priced at Per1K.
// It is false for a plan without pricing, unless the plan is free
// (freemium), which needs none.
func (p *Plan) Estimate(period Period, now time.Time, used int64) (Estimate, bool) {
	e := Estimate{Free: p.Model == Freemium}
	var pr Pricing
	switch {
	case e.Free:
	case p.Pricing != nil:
		pr = *p.Pricing
		e.Currency = pr.Currency
	default:
		return Estimate{}, false
	}
	total := period.End.Sub(period.Start)
	if total <= 0 {
		return Estimate{}, false
	}
	if now.Before(period.Start) {
		now = period.Start
	}
	if now.After(period.End) {
		now = period.End
	}
	elapsed := now.Sub(period.Start)
	e.RateFrom = period.Start.Add(min(24*time.Hour, total/10))
	rated := !now.Before(e.RateFrom)

	// What is billed per unit: units beyond the quota's requests (all
	// of them without a quota) on payg and on a tiered plan with a soft
	// quota, as usage.TermsOf bills them.
	var included int64
	soft := p.Quota != nil && p.Quota.Enforcement == Soft
	perUnit := !e.Free && (p.Model == PayG || p.Model == Tiered && soft)
	if p.Quota != nil {
		included = p.Quota.Requests
	}
	switch {
	case p.Quota == nil:
	case !soft && p.Quota.Requests > 0:
		e.Limit = p.Quota.Requests
	case soft && p.Quota.Cap > 0:
		e.Limit = p.Quota.Cap
	}
	cost := func(units int64) int64 {
		if !perUnit {
			return pr.Cost(0)
		}
		return pr.Cost(units - included)
	}

	used = max(used, 0)
	sofar := used
	if e.Limit > 0 && sofar >= e.Limit {
		sofar, e.LimitReached, e.Capped = e.Limit, true, true
	}
	e.SoFar = cost(sofar)

	e.Projected = rated || !perUnit || pr.Per1K == 0
	if !rated {
		// Not yet telling: the cost so far is the cost at the end only
		// when it does not grow with the units.
		if e.Projected {
			e.AtEnd, e.UnitsAtEnd = e.SoFar, sofar
		}
		return e, true
	}
	units := mulDiv(used, int64(total), int64(elapsed))
	if e.Limit > 0 && units >= e.Limit {
		units, e.Capped = e.Limit, true
		if !e.LimitReached {
			at := period.Start.Add(time.Duration(mulDiv(int64(elapsed), e.Limit, used)))
			if at.Before(period.End) {
				e.LimitAt = at
			}
		}
	}
	e.UnitsAtEnd, e.AtEnd = units, cost(units)
	return e, true
}

// mulDiv is a × b / c rounded down, for a, b >= 0 and c > 0, saturating
// at math.MaxInt64.
func mulDiv(a, b, c int64) int64 {
	if c <= 0 {
		return math.MaxInt64
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi >= uint64(c) {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, uint64(c))
	return int64(min(q, math.MaxInt64))
}
