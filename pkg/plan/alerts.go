package plan

// AlertLimit is what a plan's usage alerts are shares of: its spend cap
// when it has one (what refuses requests on a soft quota), else its quota
// or included units. Units 0: the plan has neither.
func (p *Plan) AlertLimit() (units int64, name string) {
	q := p.Quota
	switch {
	case q == nil:
		return 0, ""
	case q.Cap > 0:
		return q.Cap, "spend cap"
	case q.Requests > 0 && q.Enforcement == Soft:
		return q.Requests, "included units"
	case q.Requests > 0:
		return q.Requests, "quota"
	}
	return 0, ""
}

// AlertsCrossed are the plan's alert thresholds (percentages) that used
// units of the period have reached, ascending.
func (p *Plan) AlertsCrossed(used int64) []int {
	limit, _ := p.AlertLimit()
	if limit <= 0 || used <= 0 {
		return nil
	}
	var out []int
	for _, t := range p.Alerts {
		// used/limit >= t/100, in integers; t is at most 1000, so the
		// product stays far below overflow for any real limit.
		if used*100 >= int64(t)*limit {
			out = append(out, t)
		}
	}
	return out
}

// PeriodWord is how a period reads in "your monthly quota".
func PeriodWord(u Unit) string {
	switch u {
	case Hour:
		return "hourly"
	case Day:
		return "daily"
	case Week:
		return "weekly"
	case Month:
		return "monthly"
	case Year:
		return "yearly"
	}
	return string(u)
}
