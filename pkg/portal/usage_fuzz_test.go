package portal

import (
	"math"
	"net/url"
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
			{Start: start, Billed: a, Refunded: b, Denied: history.Denied{Rate: c, Quota: a, Cap: b}, Allowed: c, KeyDenied: a},
			{Start: start.Add(time.Hour), Billed: c, Refunded: a},
		}
		for _, key := range []bool{false, true} {
			for _, o := range outcomes {
				ch := newChart(rows, history.Hour, segmentsFor(key, o.Value), yTitle(key, o.Value))
				for _, bar := range ch.Bars {
					for _, s := range bar.Segs {
						if math.IsNaN(s.Y) || math.IsInf(s.Y, 0) || s.H < 0 || s.Y < ch.Top-1e-6 || s.Y+s.H > ch.Bottom+1e-6 {
							t.Fatalf("segment %+v outside the plot (%v..%v) for %v", s, ch.Top, ch.Bottom, rows)
						}
					}
				}
			}
		}
	})
}
