package billing

import (
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/plan"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestSelectionPeriods(t *testing.T) {
	now := at("2026-11-20T10:00:00Z")
	nov := at("2026-11-01T00:00:00Z")
	anchor := at("2025-03-15T08:23:17Z")
	tests := []struct {
		name   string
		give   selection
		unit   plan.Unit
		anchor time.Time
		want   []string // period starts
		end    string   // the last period's end
	}{
		{"current calendar month", selection{now: now}, plan.Month, time.Time{}, []string{"2026-11-01T00:00:00Z"}, "2026-12-01T00:00:00Z"},
		{"current anchored month", selection{now: now}, plan.Month, anchor, []string{"2026-11-15T08:23:17Z"}, "2026-12-15T08:23:17Z"},
		{"a calendar month", selection{now: now, month: nov}, plan.Month, time.Time{}, []string{"2026-11-01T00:00:00Z"}, "2026-12-01T00:00:00Z"},
		{"the anchored period starting in the month", selection{now: now, month: nov}, plan.Month, anchor, []string{"2026-11-15T08:23:17Z"}, "2026-12-15T08:23:17Z"},
		{"a year holding the month", selection{now: now, month: nov}, plan.Year, time.Time{}, []string{"2026-01-01T00:00:00Z"}, "2027-01-01T00:00:00Z"},
		{"a year starting in the month", selection{now: now, month: at("2026-01-01T00:00:00Z")}, plan.Year, time.Time{}, []string{"2026-01-01T00:00:00Z"}, "2027-01-01T00:00:00Z"},
		{"weeks starting in the month", selection{now: now, month: nov}, plan.Week, time.Time{},
			[]string{"2026-11-02T00:00:00Z", "2026-11-09T00:00:00Z", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"}, "2026-12-07T00:00:00Z"},
		{"an anchor on the 31st in February", selection{now: now, month: at("2026-02-01T00:00:00Z")}, plan.Month, at("2026-01-31T00:00:00Z"),
			[]string{"2026-02-28T00:00:00Z"}, "2026-03-31T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.give.periods(tt.unit, tt.anchor)
			if len(got) != len(tt.want) || !got[len(got)-1].End.Equal(at(tt.end)) {
				t.Fatalf("periods %v", got)
			}
			for i, p := range got {
				if !p.Start.Equal(at(tt.want[i])) || !tt.give.selects(p) {
					t.Fatalf("period %d: %v (selected %v), want start %s", i, p, tt.give.selects(p), tt.want[i])
				}
			}
			from, to := tt.give.span(tt.anchor)
			if from.After(got[0].Start) || to.Before(got[len(got)-1].End) {
				t.Fatalf("span [%s, %s) misses %v", from, to, got)
			}
		})
	}
}

func TestSelectionLeavesOutPeriodsOfOtherMonths(t *testing.T) {
	sel := selection{now: at("2026-11-20T10:00:00Z"), month: at("2026-11-01T00:00:00Z")}
	for _, p := range []plan.Period{
		{Start: at("2026-10-15T00:00:00Z"), End: at("2026-11-15T00:00:00Z")}, // ends in it
		{Start: at("2026-12-01T00:00:00Z"), End: at("2027-01-01T00:00:00Z")},
		{Start: at("2026-10-26T00:00:00Z"), End: at("2026-11-02T00:00:00Z")}, // a week across its start
	} {
		if sel.selects(p) {
			t.Errorf("%v selected", p)
		}
	}
}

// Stripe's range is on minutes and holds exactly the events the exporter
// stamps for the period's windows (the last second of each).
func TestStripeRange(t *testing.T) {
	tests := []struct {
		name     string
		period   plan.Period
		size     time.Duration
		from, to string
	}{
		{"calendar month", plan.Period{Start: at("2026-11-01T00:00:00Z"), End: at("2026-12-01T00:00:00Z")}, time.Minute,
			"2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"},
		{"anchor off the minute, minute windows", plan.Period{Start: at("2026-11-15T08:23:17Z"), End: at("2026-12-15T08:23:17Z")}, time.Minute,
			"2026-11-15T08:24:00Z", "2026-12-15T08:24:00Z"},
		{"anchor off the minute, 5 minute windows", plan.Period{Start: at("2026-11-15T08:23:17Z"), End: at("2026-12-15T08:23:17Z")}, 5 * time.Minute,
			"2026-11-15T08:25:00Z", "2026-12-15T08:25:00Z"},
		{"second windows", plan.Period{Start: at("2026-11-01T00:00:00Z"), End: at("2026-12-01T00:00:00Z")}, time.Second,
			"2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from, to := stripeRange(tt.period, tt.size)
			if !from.Equal(at(tt.from)) || !to.Equal(at(tt.to)) {
				t.Fatalf("[%s, %s), want [%s, %s)", from, to, tt.from, tt.to)
			}
			// The first window's event is in, the one of the window before
			// (the previous period's last) is not.
			sec := int64(tt.size / time.Second)
			first := time.Unix((tt.period.Start.Unix()+sec-1)/sec*sec, 0)
			if ev := first.Add(tt.size - time.Second); ev.Before(from) || !ev.Before(to) {
				t.Fatalf("the first window's event at %s is outside", ev)
			}
			if ev := first.Add(-time.Second); !ev.Before(from) {
				t.Fatalf("the previous period's last event at %s is inside", ev)
			}
		})
	}
}

func TestFixIdentifierFitsStripesLimit(t *testing.T) {
	p := plan.Period{Start: at("2026-11-01T00:00:00Z")}
	short := FixIdentifier(Account{Consumer: "acme", Meter: "api_calls", Period: p}, 12)
	if short != "levy:fix:acme:api_calls:1793491200:12" {
		t.Fatalf("%q", short)
	}
	long := FixIdentifier(Account{Consumer: string(make([]byte, 120)), Meter: "api_calls", Period: p}, 12)
	if len(long) > 100 || long == FixIdentifier(Account{Consumer: string(make([]byte, 120)), Meter: "api_calls", Period: p}, 13) {
		t.Fatalf("%q", long)
	}
}
