package portal

import (
	"encoding/xml"
	"math"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/history"
)

// The usage and keys pages' queries come from the address bar: whatever
// they hold is a page or a clear 400, and the chart drawn from any
// figures has finite coordinates inside its box.
func FuzzUsageQueriesAndChart(f *testing.F) {
	f.Add("range=7d&step=hour&key=key_1&outcome=denied", int64(5), int64(-3), int64(math.MaxInt64))
	f.Add("sort=last_used&order=asc&page=2&range=period", int64(0), int64(0), int64(0))
	f.Add("range=%zz&page=-1&page=9999999999", int64(1<<40), int64(7), int64(-1<<62))
	f.Fuzz(func(t *testing.T, raw string, a, b, c int64) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		if uf, bad := parseUsageFilter(v); bad == "" && (!uf.Step.Valid() || len(uf.Key) > 128) {
			t.Fatalf("%q accepted as %+v", raw, uf)
		}
		if kq, bad := parseKeysQuery(v); bad == "" {
			if kq.Page < 1 {
				t.Fatalf("%q accepted as page %d", raw, kq.Page)
			}
			table := newKeysTable(kq, int(uint8(a)))
			if table.Page < 1 || table.Page > table.Pages || table.LastShown < table.First-1 {
				t.Fatalf("pager %+v", table)
			}
		}
		start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
		rows := []row{
			{Start: start, End: start.Add(time.Hour), Billed: a, Refunded: b, Denied: history.Denied{Rate: c, Quota: a, Cap: b}, Allowed: c, KeyDenied: a},
			{Start: start.Add(time.Hour), End: start.Add(2 * time.Hour), Billed: c, Refunded: a},
		}
		for _, key := range []bool{false, true} {
			for _, o := range outcomes {
				ch := newChart(rows, span{Step: history.Hour, Hours: 1}, segmentsFor(key, o.Value), yTitle(key, o.Value))
				for _, bar := range ch.Bars {
					for _, s := range bar.Segs {
						if math.IsNaN(s.Y) || math.IsInf(s.Y, 0) || s.H <= 0 || s.Y < ch.Top-1e-6 || s.Y+s.H > ch.Bottom+1e-6 {
							t.Fatalf("segment %+v outside the plot (%v..%v) for %v", s, ch.Top, ch.Bottom, rows)
						}
					}
				}
				checkSVG(t, ch)
				checkTable(t, rows, key)
			}
		}
	})
}

// checkSVG parses the chart's hand-written SVG: it is well-formed, and
// holds one focusable bar a row whose <title> is the bar's figures, and
// rectangles whose coordinates are numbers inside the plot.
func checkSVG(t *testing.T, ch *chart) {
	t.Helper()
	var svg struct {
		ViewBox string `xml:"viewBox,attr"`
		Bars    []struct {
			Class    string `xml:"class,attr"`
			TabIndex string `xml:"tabindex,attr"`
			Role     string `xml:"role,attr"`
			Title    string `xml:"title"`
			Hit      struct {
				Class string `xml:"class,attr"`
				X     string `xml:"x,attr"`
				Y     string `xml:"y,attr"`
				W     string `xml:"width,attr"`
				H     string `xml:"height,attr"`
			} `xml:"rect"`
			Segs []struct {
				Class string `xml:"class,attr"`
				D     string `xml:"d,attr"`
			} `xml:"path"`
		} `xml:"g"`
	}
	out := string(ch.SVG())
	if err := xml.Unmarshal([]byte(out), &svg); err != nil {
		t.Fatalf("the chart's SVG does not parse: %v\n%s", err, out)
	}
	var bars int
	for _, g := range svg.Bars {
		if g.Class != "bar" {
			continue
		}
		want := ch.Bars[bars]
		if g.TabIndex != "0" || g.Role != "img" || g.Title != want.Title || g.Hit.Class != "hit" || len(g.Segs) != len(want.Segs) {
			t.Fatalf("bar %d: %+v, want %+v", bars, g, want)
		}
		hit := []string{g.Hit.X, g.Hit.Y, g.Hit.W, g.Hit.H}
		if want := []string{num(want.X), num(ch.Top), num(want.W), num(ch.PlotHeight)}; !slices.Equal(hit, want) {
			t.Fatalf("bar %d: hit area %v, want %v", bars, hit, want)
		}
		for i, s := range g.Segs {
			r := want.Segs[i]
			if d := "M" + num(want.X) + " " + num(r.Y) + "h" + num(want.W) + "v" + num(r.H) + "h-" + num(want.W) + "z"; s.Class != r.Class || s.D != d {
				t.Fatalf("bar %d: segment %+v, want %s %s", bars, s, r.Class, d)
			}
		}
		bars++
	}
	if bars != len(ch.Bars) {
		t.Fatalf("%d bars in the SVG, want %d", bars, len(ch.Bars))
	}
}

// checkTable parses the table's hand-written rows: one a row, the
// figures of the view's columns with their labels.
func checkTable(t *testing.T, rows []row, keyView bool) {
	t.Helper()
	var body struct {
		Rows []struct {
			Th    string `xml:"th"`
			Cells []struct {
				Label string `xml:"data-label,attr"`
				Text  string `xml:",chardata"`
			} `xml:"td"`
		} `xml:"tr"`
	}
	out := "<tbody>" + string(tableRows(rows, span{Step: history.Hour, Hours: 1}, keyView)) + "</tbody>"
	if err := xml.Unmarshal([]byte(out), &body); err != nil || len(body.Rows) != len(rows) {
		t.Fatalf("the table's rows: %v\n%s", err, out)
	}
	for i, r := range rows {
		want := []string{"Billed", groupDigits(r.Billed), "Refunded", groupDigits(r.Refunded), "Denied: rate", groupDigits(r.Denied.Rate),
			"Denied: quota", groupDigits(r.Denied.Quota), "Denied: cap", groupDigits(r.Denied.Cap)}
		if keyView {
			want = []string{"Allowed", groupDigits(r.Allowed), "Denied", groupDigits(r.KeyDenied)}
		}
		var got []string
		for _, c := range body.Rows[i].Cells {
			got = append(got, c.Label, c.Text)
		}
		if body.Rows[i].Th != spanWords(r, history.Hour) || !slices.Equal(got, want) {
			t.Fatalf("row %d: %s %v, want %s %v", i, body.Rows[i].Th, got, spanWords(r, history.Hour), want)
		}
	}
}

// num writes a coordinate as the SVG should: a number to a tenth.
func num(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}
