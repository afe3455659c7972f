package portal

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/levyhq/levy/pkg/history"
)

// The usage chart is drawn on the server as inline SVG: stacked bars whose
// colours come from classes in portal.css (the CSP allows no inline
// style), each bar a focusable group whose <title> gives its figures.
//
// It is written into a byte buffer (chartsvg.go), not through
// html/template, and draws at most maxBars bars: a longer range at hour
// step is drawn by groups of hours, which the page says, while the CSV
// download keeps every hour. Executing the template once an element
// cost a 30-day range at hour step (720 bars, and 720 rows in the table)
// about 60ms of CPU and 839 KB a load; four sessions browsing took a
// third of a 2-core machine's CPU from levy's decisions.
// BenchmarkUsagePage measures the whole page through its handler, with
// every bar's five segments drawn (the worst case):
//
//	go test -run '^$' -bench UsagePage -benchtime 2s -count 3 ./pkg/portal/
//
// on a 2-core VM loaded by other work (load average 6 to 9):
//
//	                   before: template, every hour   after: written, at most 168 bars
//	30 days by hour    60-93 ms  839 KB  9.8 MB/op    1.5-2.4 ms  93 KB  1.2 MB/op (121 bars of 6 hours)
//	90 days by day     9-11 ms   112 KB  1.3 MB/op    1.3-1.4 ms  70 KB  0.6 MB/op
//	7 days by hour     13-17 ms  199 KB  2.3 MB/op    2.4-2.7 ms 124 KB  1.2 MB/op (168 bars)
//	this period by day 1.9-2.4 ms 35 KB  0.35 MB/op   0.4 ms      23 KB  0.16 MB/op
//
// Writing without the template alone, every hour drawn, took 30 days by
// hour to 14-17 ms and 517 KB: still a page a person can make levy spend
// a CPU on 60 times a second, so grouping the bars does the rest. A
// segment is a <path> rather than a <rect> (a tenth of the bytes at 30
// days), and each bar's figures are written once, in its <title>, which
// is also its accessible name (they were in an aria-label and a
// data-figures attribute as well).

// maxBars is the most bars the chart draws: a week of hours, the
// longest range it draws hour by hour. More bars than that are a few
// pixels wide, too narrow to point at or to read, and each costs bytes
// and CPU on every load.
const maxBars = 7 * 24

// span is what one bar and one row of the table stand for: a day, an
// hour, or Hours hours.
type span struct {
	Step  history.Step
	Hours int
}

// String names the span for headings: "day", "hour", "6 hours".
func (s span) String() string {
	if s.Step == history.Day {
		return "day"
	}
	if s.Hours <= 1 {
		return "hour"
	}
	return strconv.Itoa(s.Hours) + " hours"
}

// spanFor is the span of rows' bars at step: an hour up to maxBars
// hours, else the fewest hours of 2, 3, 4, 6, 8, 12 or 24 that keep
// them within maxBars bars (6 hours for 30 days). Each divides a day,
// so that a bar starts on the hour in UTC and never spans midnight.
func spanFor(rows []row, step history.Step) span {
	if step == history.Day || len(rows) <= maxBars {
		return span{Step: step, Hours: 1}
	}
	first, last := rows[0].Start, rows[len(rows)-1].Start
	for _, h := range []int{2, 3, 4, 6, 8, 12} {
		size := time.Duration(h) * time.Hour
		if bars := int(last.Truncate(size).Sub(first.Truncate(size))/size) + 1; bars <= maxBars {
			return span{Step: step, Hours: h}
		}
	}
	return span{Step: step, Hours: 24}
}

// group sums rows of consecutive hours into one row a span: each starts
// on a multiple of its hours in UTC, so the first and the last may hold
// fewer, and its Start and End are the first and last hours it holds.
func group(rows []row, by span) []row {
	if by.Hours <= 1 {
		return rows
	}
	size := time.Duration(by.Hours) * time.Hour
	out := make([]row, 0, len(rows)/by.Hours+2)
	for _, r := range rows {
		if n := len(out); n > 0 && out[n-1].Start.Truncate(size).Equal(r.Start.Truncate(size)) {
			out[n-1].add(r)
			continue
		}
		out = append(out, r)
	}
	return out
}

// row is one bar of the usage page's chart and one row of its table: a
// step, or hours summed (group).
type row struct {
	Start, End time.Time
	// Account view: billed and refunded units, denials by reason.
	Billed, Refunded int64
	Denied           history.Denied
	// Key view: the key's requests.
	Allowed, KeyDenied int64
}

// add sums the next step, o, into r.
func (r *row) add(o row) {
	r.End = o.End
	r.Billed += o.Billed
	r.Refunded += o.Refunded
	r.Denied.Rate += o.Denied.Rate
	r.Denied.Quota += o.Denied.Quota
	r.Denied.Cap += o.Denied.Cap
	r.Allowed += o.Allowed
	r.KeyDenied += o.KeyDenied
}

func accountRows(s *history.Series) []row {
	out := make([]row, 0, len(s.Points))
	for _, p := range s.Points {
		out = append(out, row{Start: p.Start, End: p.Start.Add(s.Step.Size()), Billed: p.Billed, Refunded: p.Refunded, Denied: p.Denied})
	}
	return out
}

// keyRows are key's allowed and denied requests at each of s's steps,
// from the buckets read for the same range.
func keyRows(s *history.Series, bs []history.Bucket, key string) []row {
	byStart := map[int64]history.KeyCounts{}
	for _, b := range bs {
		byStart[b.Start.Unix()] = b.Keys[key]
	}
	out := make([]row, 0, len(s.Points))
	for _, p := range s.Points {
		kc := byStart[p.Start.Unix()]
		out = append(out, row{Start: p.Start, End: p.Start.Add(s.Step.Size()), Allowed: kc.Allowed, KeyDenied: kc.Denied})
	}
	return out
}

// segment is one kind of figure a bar stacks.
type segment struct {
	Class, Label string
	value        func(row) int64
}

var (
	segBilled    = segment{"s-billed", "Billed units", func(r row) int64 { return r.Billed }}
	segRefunded  = segment{"s-refunded", "Refunded units (5xx, 429)", func(r row) int64 { return r.Refunded }}
	segRate      = segment{"s-rate", "Denied: rate limit", func(r row) int64 { return r.Denied.Rate }}
	segQuota     = segment{"s-quota", "Denied: quota", func(r row) int64 { return r.Denied.Quota }}
	segCap       = segment{"s-cap", "Denied: spend cap", func(r row) int64 { return r.Denied.Cap }}
	segAllowed   = segment{"s-billed", "Allowed requests", func(r row) int64 { return r.Allowed }}
	segKeyDenied = segment{"s-rate", "Denied requests", func(r row) int64 { return r.KeyDenied }}
)

// segmentsFor are the segments an outcome filter keeps, bottom first.
func segmentsFor(keyView bool, outcome string) []segment {
	if keyView {
		switch outcome {
		case "billed", "refunded":
			return []segment{segAllowed}
		case "denied":
			return []segment{segKeyDenied}
		}
		return []segment{segAllowed, segKeyDenied}
	}
	switch outcome {
	case "billed":
		return []segment{segBilled}
	case "refunded":
		return []segment{segRefunded}
	case "denied":
		return []segment{segRate, segQuota, segCap}
	}
	return []segment{segBilled, segRefunded, segRate, segQuota, segCap}
}

// yTitle names the y axis's unit for a view.
func yTitle(keyView bool, outcome string) string {
	switch {
	case keyView:
		return "Requests"
	case outcome == "billed" || outcome == "refunded":
		return "Units"
	case outcome == "denied":
		return "Requests denied"
	}
	return "Units (denials: requests)"
}

// chart is the SVG's geometry, in viewBox units.
type chart struct {
	Width, Height            int
	Left, Right, Top, Bottom float64
	Bars                     []bar
	YTicks                   []tick
	XLabels                  []tick
	Legend                   []segment
	Empty                    bool
	// YTitle names the y axis's unit.
	YTitle                                string
	PlotWidth, PlotHeight, AxisY, XLabelY float64
}

type bar struct {
	X, W float64
	// Segs stack from the bottom, the ones too short to see left out;
	// the SVG adds a clear rectangle of the plot's height, so that
	// hovering above a short bar still shows its figures.
	Segs  []rect
	Title string
}

type rect struct {
	Class string
	Y, H  float64
}

type tick struct {
	Pos   float64
	Label string
}

// newChart lays out rows, a bar each of by, as stacked bars of segs.
// Coordinates are rounded to tenths of a unit (the SVG is about 960
// pixels wide), each segment's top and bottom before its height, so that
// stacked segments meet.
func newChart(rows []row, by span, segs []segment, yTitle string) *chart {
	c := &chart{Width: 960, Height: 380, Left: 72, Right: 944, Top: 52, Bottom: 320, Legend: segs, YTitle: yTitle}
	c.PlotWidth, c.PlotHeight = c.Right-c.Left, c.Bottom-c.Top
	c.AxisY, c.XLabelY = c.Bottom, c.Bottom+8 // labels hang below it
	// Sums in floating point: figures near the int64 limit add up
	// without wrapping.
	var peak float64
	for _, r := range rows {
		var sum float64
		for _, s := range segs {
			sum += float64(max(s.value(r), 0))
		}
		peak = max(peak, sum)
	}
	c.Empty = peak == 0
	top := peak
	if peak < 1e15 {
		top = float64(niceCeil(int64(peak)))
	}
	for i := 0; i <= 4; i++ {
		v := top * float64(i) / 4
		label := strconv.FormatFloat(v, 'g', 3, 64)
		if v < 1e15 {
			label = shortNumber(int64(v))
		}
		c.YTicks = append(c.YTicks, tick{Pos: tenths(c.Bottom - v/top*c.PlotHeight), Label: label})
	}
	n := len(rows)
	if n == 0 {
		return c
	}
	slot := c.PlotWidth / float64(n)
	gap := math.Min(slot*0.2, 4)
	if slot < 3 {
		gap = 0
	}
	labels := xLabels(rows, by)
	c.Bars = make([]bar, 0, n)
	for i, r := range rows {
		b := bar{X: tenths(c.Left + float64(i)*slot + gap/2), W: max(tenths(slot-gap), 0.5), Title: barTitle(r, by, segs)}
		var sum float64
		y := c.Bottom
		for _, s := range segs {
			sum += float64(max(s.value(r), 0))
			next := tenths(c.Bottom - sum/top*c.PlotHeight)
			if next < y {
				b.Segs = append(b.Segs, rect{Class: s.Class, Y: next, H: y - next})
			}
			y = next
		}
		c.Bars = append(c.Bars, b)
		if labels[i] != "" {
			c.XLabels = append(c.XLabels, tick{Pos: tenths(b.X + b.W/2), Label: labels[i]})
		}
	}
	return c
}

// tenths rounds v to a tenth.
func tenths(v float64) float64 { return math.Round(v*10) / 10 }

// xLabels are the x axis's labels, one a bar ("" for none): about
// eight, on every few bars, or at hour step on midnights when they are
// a day or more apart, so that a date labels its day's first bar.
func xLabels(rows []row, by span) []string {
	out := make([]string, len(rows))
	every := max(1, int(math.Ceil(float64(len(rows))/8)))
	hours := every * by.Hours
	if by.Step == history.Hour && hours >= 24 {
		days := 0
		for i, r := range rows {
			if t := r.Start.UTC(); t.Hour() == 0 {
				if days%((hours+23)/24) == 0 {
					out[i] = t.Format("2 Jan")
				}
				days++
			}
		}
		return out
	}
	for i := 0; i < len(rows); i += every {
		out[i] = stepLabel(rows[i].Start, by.Step, hours)
	}
	return out
}

// barTitle is a bar's figures in words: its tooltip and accessible name.
func barTitle(r row, by span, segs []segment) string {
	var b strings.Builder
	b.WriteString(spanWords(r, by.Step))
	b.WriteString(": ")
	for i, s := range segs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strings.ToLower(s.Label[:1]) + s.Label[1:])
		b.WriteString(" ")
		b.WriteString(groupDigits(s.value(r)))
	}
	return b.String()
}

// spanWords names a row's time: "Mon 10 Mar 2026", "10 Mar 2026
// 14:00–15:00 UTC" or, for hours grouped, "10 Mar 2026 12:00–18:00 UTC".
func spanWords(r row, step history.Step) string {
	t := r.Start.UTC()
	if step == history.Day {
		return t.Format("Mon 2 Jan 2006")
	}
	end := r.End.UTC().Format("15:04")
	if r.End.Sub(r.Start) > 0 && r.End.UTC().Day() != t.Day() {
		end = "24:00"
	}
	return t.Format("2 Jan 2006 15:04") + "–" + end + " UTC"
}

// stepLabel is an x-axis label: short, since eight share the axis;
// hours is how many hours apart labels are.
func stepLabel(t time.Time, step history.Step, hours int) string {
	t = t.UTC()
	if step == history.Day || hours >= 24 {
		return t.Format("2 Jan")
	}
	if hours >= 3 {
		return t.Format("2 Jan 15h")
	}
	return t.Format("15:04")
}

// niceCeil is the y axis's top: four ticks of 1, 2, 2.5 or 5 times a
// power of ten (at least 1), so that every tick is a whole number.
func niceCeil(v int64) int64 {
	for p := int64(1); ; p *= 10 {
		for _, m := range []int64{10, 20, 25, 50} {
			if step := m * p / 10; m*p%10 == 0 && 4*step >= v {
				return 4 * step
			}
		}
		if p > math.MaxInt64/100 {
			return v
		}
	}
}

// shortNumber writes an axis value: 950, 12k, 1.5M.
func shortNumber(v int64) string {
	switch {
	case v >= 1_000_000 && v%100_000 == 0:
		return strconv.FormatFloat(float64(v)/1e6, 'f', -1, 64) + "M"
	case v >= 10_000 && v%100 == 0:
		return strconv.FormatFloat(float64(v)/1e3, 'f', -1, 64) + "k"
	}
	return groupDigits(v)
}
