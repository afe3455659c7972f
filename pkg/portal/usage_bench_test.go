package portal

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/history"
)

// BenchmarkUsagePage loads the usage page as a signed-in session does,
// through the page's handler, over a month of hours and 90 days of days
// kept in memory: reading the series, laying out the chart and rendering
// the page. page-KB is the page's size. See chart.go for the figures.
func BenchmarkUsagePage(b *testing.B) {
	now := time.Date(2026, 3, 10, 12, 30, 0, 0, time.UTC)
	h := New(Config{
		Keys:    benchKeys{},
		History: &history.Reader{Store: seededHistory(now), Clock: func() time.Time { return now }},
		Clock:   func() time.Time { return now },
	})
	s := &sess{sessionRecord: sessionRecord{Consumer: "bench", Scopes: AllScopes}, consumer: &apikey.Consumer{ID: "bench", Plan: "pro"}}
	for _, q := range []string{"range=30d&step=hour", "range=90d&step=day", "range=7d&step=hour", "range=period&step=day"} {
		b.Run(q, func(b *testing.B) {
			r := httptest.NewRequest("GET", "/portal/usage?"+q, nil)
			var w countingWriter
			b.ReportAllocs()
			for b.Loop() {
				w = countingWriter{}
				h.usagePage(&w, r, s)
			}
			if w.status != http.StatusOK {
				b.Fatalf("%s: %d", q, w.status)
			}
			b.ReportMetric(float64(w.n)/1024, "page-KB")
		})
	}
}

// seededHistory is a memory history.Store with consumer bench's 35 days
// of hours and 100 days of days up to now, every one with traffic.
func seededHistory(now time.Time) memHistory {
	m := memHistory{}
	end := history.Hour.Floor(now)
	for t := end.Add(-35 * 24 * time.Hour); !t.After(end); t = t.Add(time.Hour) {
		m.add(history.Hour, t, t.Unix()/3600%500)
	}
	for t := history.Day.Floor(now).Add(-100 * 24 * time.Hour); !t.After(now); t = t.Add(24 * time.Hour) {
		m.add(history.Day, t, 24*(t.Unix()/86400%500))
	}
	return m
}

// memHistory is a history.Store in memory, for the benchmark: buckets by
// step, oldest first.
type memHistory map[history.Step][]history.Bucket

func (m memHistory) add(step history.Step, start time.Time, n int64) {
	m[step] = append(m[step], history.Bucket{Consumer: "bench", Step: step, Start: start, Billed: 1000 + n, Refunded: n / 50,
		Denied: history.Denied{Rate: n / 10, Quota: n / 100, Cap: n / 200}, Keys: map[string]history.KeyCounts{"bench-key": {Allowed: 1000 + n, Denied: n / 10}}})
}

func (m memHistory) SetUsage(context.Context, []history.Usage) error   { return nil }
func (m memHistory) AddCounts(context.Context, []history.Counts) error { return nil }
func (m memHistory) Activity(context.Context, []string) (map[string]history.Activity, error) {
	return nil, nil
}

func (m memHistory) Buckets(_ context.Context, _ string, step history.Step, from, to time.Time) ([]history.Bucket, error) {
	var out []history.Bucket
	for _, b := range m[step] {
		if !b.Start.Before(from) && b.Start.Before(to) {
			out = append(out, b)
		}
	}
	return out, nil
}

// benchKeys is the consumer's one key; the page calls nothing else.
type benchKeys struct{ apikey.Store }

func (benchKeys) ListKeys(context.Context, string) ([]*apikey.Key, error) {
	return []*apikey.Key{{ID: "bench-key", ConsumerID: "bench"}}, nil
}

// countingWriter is a ResponseWriter that counts the body's bytes.
type countingWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *countingWriter) Header() http.Header {
	if w.h == nil {
		w.h = http.Header{}
	}
	return w.h
}
func (w *countingWriter) WriteHeader(s int)           { w.status = s }
func (w *countingWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }
