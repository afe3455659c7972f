package portal

import (
	"html/template"
	"strconv"
)

// The usage chart and its table's rows are written here into one byte
// buffer, not through html/template, whose execution once an element was
// most of the page's cost (see chart.go for the figures). What goes in
// is numbers, fixed class names and attributes, and text escaped as
// template.HTMLEscapeString does; FuzzUsageQueriesAndChart parses the
// output.

// SVG is the chart as an inline <svg> element.
func (c *chart) SVG() template.HTML {
	w := svgWriter{b: make([]byte, 0, 2048+len(c.Bars)*(160+len(c.Legend)*64))}
	w.s(`<svg class="chart" id="usage-chart" viewBox="0 0 `)
	w.i(c.Width)
	w.s(` `)
	w.i(c.Height)
	w.s(`" role="group" aria-labelledby="chart-title">`)
	w.s("\n" + `<g class="grid" aria-hidden="true">`)
	for _, t := range c.YTicks {
		w.s(`<line `)
		w.hline(c.Left, c.Right, t.Pos)
		w.s(`/><text class="ylabel" x="`)
		w.n(c.Left - 8)
		w.s(`" y="`)
		w.n(t.Pos)
		w.s(`">`)
		w.text(t.Label)
		w.s(`</text>`)
	}
	w.s(`<text class="ytitle" x="`)
	w.n(c.Left - 56)
	w.s(`" y="`)
	w.n(c.Top - 18)
	w.s(`">`)
	w.text(c.YTitle)
	w.s("</text></g>\n" + `<g class="xlabels" aria-hidden="true">`)
	for _, t := range c.XLabels {
		w.s(`<text class="xlabel" x="`)
		w.n(t.Pos)
		w.s(`" y="`)
		w.n(c.XLabelY)
		w.s(`">`)
		w.text(t.Label)
		w.s(`</text>`)
	}
	w.s(`<line class="axis" `)
	w.hline(c.Left, c.Right, c.AxisY)
	w.s("/></g>\n")
	for _, b := range c.Bars {
		// The group's accessible name is its <title> (SVG-AAM), which
		// portal.js also shows in the readout.
		w.s(`<g class="bar" tabindex="0" role="img"><title>`)
		w.text(b.Title)
		w.s(`</title><rect class="hit" x="`)
		w.n(b.X)
		w.s(`" y="`)
		w.n(c.Top)
		w.s(`" width="`)
		w.n(b.W)
		w.s(`" height="`)
		w.n(c.PlotHeight)
		w.s(`"/>`)
		// A segment is a path, shorter than a rect with its four
		// attributes: a tenth of the page at 30 days.
		for _, r := range b.Segs {
			w.s(`<path class="`)
			w.s(r.Class)
			w.s(`" d="M`)
			w.n(b.X)
			w.s(` `)
			w.n(r.Y)
			w.s(`h`)
			w.n(b.W)
			w.s(`v`)
			w.n(r.H)
			w.s(`h-`)
			w.n(b.W)
			w.s(`z"/>`)
		}
		w.s("</g>\n")
	}
	if c.Empty {
		w.s(`<text class="empty" x="`)
		w.n((c.Left + c.Right) / 2)
		w.s(`" y="`)
		w.n((c.Top + c.Bottom) / 2)
		w.s(`">Nothing to show in this range</text>`)
	}
	w.s(`</svg>`)
	return template.HTML(w.b)
}

// tableRows are the rows of the table under the chart, a row a bar:
// the span's words, then the figures of the view's columns.
func tableRows(rows []row, by span, keyView bool) template.HTML {
	w := svgWriter{b: make([]byte, 0, len(rows)*220)}
	for _, r := range rows {
		w.s(`<tr><th scope="row">`)
		w.text(spanWords(r, by.Step))
		w.s(`</th>`)
		if keyView {
			w.cell("Allowed", r.Allowed)
			w.cell("Denied", r.KeyDenied)
		} else {
			w.cell("Billed", r.Billed)
			w.cell("Refunded", r.Refunded)
			w.cell("Denied: rate", r.Denied.Rate)
			w.cell("Denied: quota", r.Denied.Quota)
			w.cell("Denied: cap", r.Denied.Cap)
		}
		w.s("</tr>\n")
	}
	return template.HTML(w.b)
}

// svgWriter appends the chart's markup to b.
type svgWriter struct{ b []byte }

// s appends markup: a constant of this file, or a fixed class name.
func (w *svgWriter) s(markup string) { w.b = append(w.b, markup...) }

// text appends s escaped, as text or an attribute's value, as
// html/template escapes it.
func (w *svgWriter) text(s string) { w.b = append(w.b, template.HTMLEscapeString(s)...) }

// hline appends a horizontal line's coordinates, from x1 to x2 at y.
func (w *svgWriter) hline(x1, x2, y float64) {
	w.s(`x1="`)
	w.n(x1)
	w.s(`" x2="`)
	w.n(x2)
	w.s(`" y1="`)
	w.n(y)
	w.s(`" y2="`)
	w.n(y)
	w.s(`"`)
}

func (w *svgWriter) i(v int) { w.b = strconv.AppendInt(w.b, int64(v), 10) }

// n appends a coordinate to a tenth, without a trailing ".0": 123.4, 52.
func (w *svgWriter) n(v float64) {
	if v == 0 {
		v = 0 // not -0
	}
	w.b = strconv.AppendFloat(w.b, v, 'f', 1, 64)
	if k := len(w.b); w.b[k-2] == '.' && w.b[k-1] == '0' {
		w.b = w.b[:k-2]
	}
}

// cell appends a table cell of a figure, labelled with its column for
// the narrow layout, which shows no header.
func (w *svgWriter) cell(label string, v int64) {
	w.s(`<td data-label="`)
	w.s(label)
	w.s(`">`)
	w.s(groupDigits(v))
	w.s(`</td>`)
}
