package plan

import (
	"testing"
	"time"
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestPeriodAtIsCalendarTrue(t *testing.T) {
	tests := []struct {
		name   string
		give   string
		unit   Unit
		anchor string
		start  string
		end    string
	}{
		{"month mid", "2026-03-15T10:00:00Z", Month, "", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"},
		{"last nanosecond of January", "2026-01-31T23:59:59.999999999Z", Month, "", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},
		{"first instant of February", "2026-02-01T00:00:00Z", Month, "", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"},
		{"February of a leap year has 29 days", "2028-02-29T12:00:00Z", Month, "", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"February of a common year", "2027-02-28T23:00:00Z", Month, "", "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"},
		{"December rolls into the next year", "2026-12-31T23:59:59Z", Month, "", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"non-UTC input is taken in UTC", "2026-03-01T01:00:00+02:00", Month, "", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"},
		{"day", "2026-03-15T10:00:00Z", Day, "", "2026-03-15T00:00:00Z", "2026-03-16T00:00:00Z"},
		{"leap day", "2028-02-29T23:59:59Z", Day, "", "2028-02-29T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"hour", "2026-03-15T10:59:59Z", Hour, "", "2026-03-15T10:00:00Z", "2026-03-15T11:00:00Z"},
		{"week starts Monday", "2026-11-29T12:00:00Z", Week, "", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"},
		{"week across a year end", "2027-01-01T00:00:00Z", Week, "", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"},
		{"year", "2028-07-01T00:00:00Z", Year, "", "2028-01-01T00:00:00Z", "2029-01-01T00:00:00Z"},
		{"anchored month before the anchor day", "2026-03-10T00:00:00Z", Month, "2025-11-15T08:30:00Z", "2026-02-15T08:30:00Z", "2026-03-15T08:30:00Z"},
		{"anchored month on the anchor instant", "2026-03-15T08:30:00Z", Month, "2025-11-15T08:30:00Z", "2026-03-15T08:30:00Z", "2026-04-15T08:30:00Z"},
		{"anchor on the 31st clamps to February's end", "2026-02-28T12:00:00Z", Month, "2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"},
		{"anchor on the 31st, leap February", "2028-03-01T00:00:00Z", Month, "2028-01-31T00:00:00Z", "2028-02-29T00:00:00Z", "2028-03-31T00:00:00Z"},
		{"anchor on the 31st in a 30-day month", "2026-04-30T00:00:00Z", Month, "2026-01-31T00:00:00Z", "2026-04-30T00:00:00Z", "2026-05-31T00:00:00Z"},
		{"anchored month across the year end", "2027-01-05T00:00:00Z", Month, "2026-06-20T00:00:00Z", "2026-12-20T00:00:00Z", "2027-01-20T00:00:00Z"},
		{"anchored year on a leap day", "2029-03-01T00:00:00Z", Year, "2028-02-29T00:00:00Z", "2029-02-28T00:00:00Z", "2030-02-28T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var anchor time.Time
			if tt.anchor != "" {
				anchor = at(tt.anchor)
			}
			got := PeriodAt(at(tt.give), tt.unit, anchor)
			want := Period{at(tt.start), at(tt.end)}
			if !got.Start.Equal(want.Start) || !got.End.Equal(want.End) {
				t.Fatalf("PeriodAt(%s, %s) = [%s, %s), want [%s, %s)", tt.give, tt.unit, got.Start, got.End, want.Start, want.End)
			}
			if !got.Contains(at(tt.give)) {
				t.Fatalf("period [%s, %s) does not contain %s", got.Start, got.End, tt.give)
			}
		})
	}
}

// Consecutive periods must tile time: each ends where the next starts.
func TestPeriodsTileTime(t *testing.T) {
	anchors := []time.Time{{}, at("2024-01-31T00:00:00Z"), at("2024-02-29T12:00:00Z"), at("2023-05-30T23:59:59Z")}
	for _, u := range Units {
		for _, a := range anchors {
			p := PeriodAt(at("2024-01-01T00:00:00Z"), u, a)
			for i := 0; i < 60; i++ {
				next := PeriodAt(p.End, u, a)
				if !next.Start.Equal(p.End) || !next.End.After(next.Start) {
					t.Fatalf("unit %s anchor %s: period [%s, %s) followed by [%s, %s)", u, a, p.Start, p.End, next.Start, next.End)
				}
				if last := PeriodAt(p.End.Add(-time.Nanosecond), u, a); !last.Start.Equal(p.Start) {
					t.Fatalf("unit %s anchor %s: last instant of [%s, %s) falls in [%s, ...)", u, a, p.Start, p.End, last.Start)
				}
				p = next
			}
		}
	}
}

func TestCostForLongestPrefixWins(t *testing.T) {
	p := &Plan{Costs: map[string]int64{"/v1/search": 5, "/v1/search/deep": 20, "/v1/free": 0}}
	p.Finish()
	tests := []struct {
		give string
		want int64
	}{
		{"/v1/items", 1},
		{"/v1/search", 5},
		{"/v1/search?q=deep", 5},
		{"/v1/search/deep/x", 20},
		{"/v1/free/thing", 0},
		{"", 1},
	}
	for _, tt := range tests {
		if got := p.CostFor(tt.give); got != tt.want {
			t.Errorf("CostFor(%q) = %d, want %d", tt.give, got, tt.want)
		}
	}
}
