package plan

import (
	"fmt"
	"time"
)

// Unit is the length of a quota period.
type Unit string

// The period units. Months and years are calendar-true: they start at the
// first instant of the calendar month (or at the consumer's billing anchor)
// in UTC, never at a 30-day approximation.
const (
	Hour  Unit = "hour"
	Day   Unit = "day"
	Week  Unit = "week"
	Month Unit = "month"
	Year  Unit = "year"
)

// Units lists the valid period units, for error messages.
var Units = []Unit{Hour, Day, Week, Month, Year}

// ParseUnit accepts a unit name as written in configuration files.
func ParseUnit(s string) (Unit, error) {
	for _, u := range Units {
		if string(u) == s {
			return u, nil
		}
	}
	return "", fmt.Errorf("unknown period %q (want one of hour, day, week, month, year)", s)
}

// Period is one concrete quota period: [Start, End).
type Period struct {
	Start, End time.Time
}

// Contains reports whether t falls inside the period.
func (p Period) Contains(t time.Time) bool {
	return !t.Before(p.Start) && t.Before(p.End)
}

// PeriodAt returns the period of unit u that contains t.
//
// With a zero anchor, periods are calendar-aligned in UTC: hours on the hour,
// days at midnight, weeks on Monday (ISO 8601), months on the 1st, years on
// January 1st. With an anchor (the start of a consumer's billing cycle),
// monthly and yearly periods start on the anchor's day and time of day; a day
// the month does not have is clamped to its last day, as Stripe does (an
// anchor on the 31st gives Feb 28 or 29, Apr 30, ...). Hours, days and weeks
// ignore the anchor.
func PeriodAt(t time.Time, u Unit, anchor time.Time) Period {
	t = t.UTC()
	switch u {
	case Hour:
		s := t.Truncate(time.Hour)
		return Period{s, s.Add(time.Hour)}
	case Day:
		s := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return Period{s, s.AddDate(0, 0, 1)}
	case Week:
		d := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		back := (int(d.Weekday()) + 6) % 7 // days since Monday
		s := d.AddDate(0, 0, -back)
		return Period{s, s.AddDate(0, 0, 7)}
	case Year:
		return anchoredPeriod(t, anchor, 12)
	default:
		return anchoredPeriod(t, anchor, 1)
	}
}

// anchoredPeriod finds the period of `months` months containing t whose
// boundaries fall on the anchor's day of month and time of day.
func anchoredPeriod(t, anchor time.Time, months int) Period {
	// Whole seconds, as the Redis store computes them.
	anchor = anchor.UTC().Truncate(time.Second)
	if anchor.IsZero() {
		anchor = time.Date(2000, time.January, 1, 0, 0, 0, 0, time.UTC)
	}
	// Candidate boundary in t's month (or, for years, in t's year at the
	// anchor's month); step back one period while it lies after t.
	y, m := t.Year(), t.Month()
	if months == 12 {
		m = anchor.Month()
	}
	start := boundary(y, m, anchor)
	for start.After(t) {
		y, m = addMonths(y, m, -months)
		start = boundary(y, m, anchor)
	}
	ny, nm := addMonths(y, m, months)
	return Period{start, boundary(ny, nm, anchor)}
}

// boundary is the anchor's day and time of day in month m of year y,
// clamped to the month's last day.
func boundary(y int, m time.Month, anchor time.Time) time.Time {
	day := anchor.Day()
	if last := daysIn(y, m); day > last {
		day = last
	}
	return time.Date(y, m, day, anchor.Hour(), anchor.Minute(), anchor.Second(), anchor.Nanosecond(), time.UTC)
}

func addMonths(y int, m time.Month, n int) (int, time.Month) {
	total := y*12 + int(m) - 1 + n
	return total / 12, time.Month(total%12 + 1)
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}
