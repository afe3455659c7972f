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

// row is one step of the usage page's table and one bar of its chart.
type row struct {
	Start time.Time
	// Account view: billed and refunded units, denials by reason.
	Billed, Refunded int64
	Denied           history.Denied
	// Key view: the key's requests.
	Allowed, KeyDenied int64
}

func accountRows(s *history.Series) []row {
	out := make([]row, 0, len(s.Points))
	for _, p := range s.Points {
		out = append(out, row{Start: p.Start, Billed: p.Billed, Refunded: p.Refunded, Denied: p.Denied})
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
		out = append(out, row{Start: p.Start, Allowed: kc.Allowed, KeyDenied: kc.Denied})
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
	// Segs stack from the bottom; the template adds a clear rectangle of
	// the plot's height, so that hovering above a short bar still shows
	// its figures.
	Segs  []rect
	Title string
}

type rect struct {
	Class   string
	Y, H    float64
	Visible bool
}

type tick struct {
	Pos   float64
	Label string
}

// newChart lays out rows as stacked bars of segs.
func newChart(rows []row, step history.Step, segs []segment, yTitle string) *chart {
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
		c.YTicks = append(c.YTicks, tick{Pos: c.Bottom - v/top*c.PlotHeight, Label: label})
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
	every := max(1, int(math.Ceil(float64(n)/8)))
	for i, r := range rows {
		b := bar{X: c.Left + float64(i)*slot + gap/2, W: math.Max(slot-gap, 0.5), Title: barTitle(r, step, segs)}
		y := c.Bottom
		for _, s := range segs {
			h := float64(max(s.value(r), 0)) / top * c.PlotHeight
			y -= h
			b.Segs = append(b.Segs, rect{Class: s.Class, Y: y, H: h, Visible: h > 0})
		}
		c.Bars = append(c.Bars, b)
		if i%every == 0 {
			c.XLabels = append(c.XLabels, tick{Pos: b.X + b.W/2, Label: stepLabel(r.Start, step, every)})
		}
	}
	return c
}

// barTitle is a bar's figures in words: its tooltip and accessible name.
func barTitle(r row, step history.Step, segs []segment) string {
	var b strings.Builder
	b.WriteString(stepWords(r.Start, step))
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

// stepWords names a step: "10 Mar 2026" or "10 Mar 2026 14:00–15:00 UTC".
func stepWords(t time.Time, step history.Step) string {
	t = t.UTC()
	if step == history.Day {
		return t.Format("Mon 2 Jan 2006")
	}
	return t.Format("2 Jan 2006 15:04") + "–" + t.Add(time.Hour).Format("15:04") + " UTC"
}

// stepLabel is an x-axis label: short, since eight share the axis.
func stepLabel(t time.Time, step history.Step, every int) string {
	t = t.UTC()
	if step == history.Day || every >= 24 {
		return t.Format("2 Jan")
	}
	if every >= 3 {
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
