package portal

import (
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/history"
)

// hours are n rows of an hour from start, each with one billed unit.
func hours(start time.Time, n int) []row {
	out := make([]row, n)
	for i := range out {
		t := start.Add(time.Duration(i) * time.Hour)
		out[i] = row{Start: t, End: t.Add(time.Hour), Billed: 1, Allowed: 2}
	}
	return out
}

// The chart draws at most a week of hours as bars: a longer range at
// hour step is drawn by groups of hours that divide a day, starting on
// their multiples in UTC, and every hour's figures are in one bar.
func TestChartDrawsAtMostAWeekOfBars(t *testing.T) {
	at13 := time.Date(2026, 2, 8, 13, 0, 0, 0, time.UTC)
	midnight := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		give      []row
		step      history.Step
		wantHours int
		wantBars  int
	}{
		{"a week of hours, hour by hour", hours(at13, 7*24), history.Hour, 1, 168},
		{"two weeks of hours, by 3", hours(at13, 14*24), history.Hour, 3, 113},
		{"30 days of hours, by 6", hours(at13, 30*24), history.Hour, 6, 121},
		{"a 31-day period from midnight, by 6", hours(midnight, 31*24), history.Hour, 6, 124},
		{"35 days of hours, by 6", hours(at13, 35*24), history.Hour, 6, 141},
		{"90 days of hours, by day", hours(at13, 90*24), history.Hour, 24, 91},
		{"90 days, by day", hours(at13, 90), history.Day, 1, 90},
		{"nothing", nil, history.Hour, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			by := spanFor(tt.give, tt.step)
			got := group(tt.give, by)
			if by.Hours != tt.wantHours || len(got) != tt.wantBars {
				t.Fatalf("%d bars of %d hours, want %d of %d", len(got), by.Hours, tt.wantBars, tt.wantHours)
			}
			var billed, allowed int64
			for _, r := range got {
				billed, allowed = billed+r.Billed, allowed+r.Allowed
			}
			if billed != int64(len(tt.give)) || allowed != 2*int64(len(tt.give)) {
				t.Errorf("the bars hold %d billed, %d allowed; want every row's", billed, allowed)
			}
			if len(got) > 0 && (!got[0].Start.Equal(tt.give[0].Start) || !got[len(got)-1].End.Equal(tt.give[len(tt.give)-1].End)) {
				t.Errorf("the bars run from %v to %v, want the rows' %v to %v", got[0].Start, got[len(got)-1].End, tt.give[0].Start, tt.give[len(tt.give)-1].End)
			}
		})
	}
}

func TestSpanWordsNameTheHoursABarHolds(t *testing.T) {
	d := func(day, hour int) time.Time { return time.Date(2026, 3, day, hour, 0, 0, 0, time.UTC) }
	tests := []struct {
		give row
		step history.Step
		want string
	}{
		{row{Start: d(10, 14), End: d(10, 15)}, history.Hour, "10 Mar 2026 14:00–15:00 UTC"},
		{row{Start: d(10, 23), End: d(11, 0)}, history.Hour, "10 Mar 2026 23:00–24:00 UTC"},
		{row{Start: d(9, 13), End: d(9, 18)}, history.Hour, "9 Mar 2026 13:00–18:00 UTC"},
		{row{Start: d(9, 0), End: d(10, 0)}, history.Hour, "9 Mar 2026 00:00–24:00 UTC"},
		{row{Start: d(9, 0), End: d(10, 0)}, history.Day, "Mon 9 Mar 2026"},
	}
	for _, tt := range tests {
		if got := spanWords(tt.give, tt.step); got != tt.want {
			t.Errorf("spanWords(%v): %q, want %q", tt.give.Start, got, tt.want)
		}
	}
}
