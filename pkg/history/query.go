package history

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query is what a series is asked for.
type Query struct {
	// From and To bound the series: the points whose start is in
	// [From, To), From rounded down and To up to the step.
	From, To time.Time
	Step     Step
	// Key asks for per-key totals: an API key's id, or AllKeys; "" for
	// none.
	Key string
	// CSV asks for the CSV form (format=csv).
	CSV bool
}

// AllKeys asks for the totals of every key (key=all).
const AllKeys = "all"

// QueryError is a query that cannot be answered as asked: a 400, whose
// Reason and Detail the problem document carries.
type QueryError struct {
	Reason, Detail string
}

func (e *QueryError) Error() string { return e.Reason + ": " + e.Detail }

// Point is one step of a series.
type Point struct {
	Start    time.Time `json:"start"`
	Billed   int64     `json:"billed"`
	Refunded int64     `json:"refunded"`
	Denied   Denied    `json:"denied"`
}

// KeyTotal is one API key's decisions over a series' range.
type KeyTotal struct {
	Key string `json:"key"`
	KeyCounts
}

// Series is a consumer's usage over a range.
type Series struct {
	Consumer string    `json:"consumer"`
	Step     Step      `json:"step"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	// Points are every step of [From, To), zero where nothing happened.
	Points []Point `json:"points"`
	// Total is the points' sum.
	Total Point `json:"total"`
	// Keys are per-key totals, when asked (Query.Key).
	Keys []KeyTotal `json:"keys,omitempty"`
}

// Reader answers series from a store: the admin API's and the portal's
// (which asks with the consumer of its session).
type Reader struct {
	Store     Store
	Retention Retention
	// Clock is the time; nil means time.Now.
	Clock func() time.Time
}

// DefaultSpan is a series' range when From is not given: a day of hours,
// or thirty days.
func DefaultSpan(s Step) time.Duration {
	if s == Day {
		return 30 * 24 * time.Hour
	}
	return 24 * time.Hour
}

// ParseQuery reads a query's parameters (from, to: RFC 3339; step: hour
// or day, default hour; key: an id or "all"; format: json or csv) and
// checks them against the retention: a *QueryError for what is wrong.
func (r *Reader) ParseQuery(v url.Values) (Query, error) {
	for name, vals := range v {
		if !slices.Contains([]string{"from", "to", "step", "key", "format"}, name) {
			return Query{}, &QueryError{"unknown_parameter", "unknown parameter " + strconv.Quote(name) + "; known: from, to, step, key, format"}
		}
		if len(vals) > 1 {
			return Query{}, &QueryError{"repeated_parameter", "parameter " + strconv.Quote(name) + " is given more than once"}
		}
	}
	q := Query{Step: Step(v.Get("step")), Key: v.Get("key")}
	if q.Step == "" {
		q.Step = Hour
	}
	if !q.Step.Valid() {
		return q, &QueryError{"invalid_step", fmt.Sprintf("step %q: want hour or day", v.Get("step"))}
	}
	switch f := v.Get("format"); f {
	case "", "json":
	case "csv":
		q.CSV = true
	default:
		return q, &QueryError{"invalid_format", fmt.Sprintf("format %q: want json or csv", f)}
	}
	if len(q.Key) > 128 || strings.ContainsAny(q.Key, "\x00\n") {
		return q, &QueryError{"invalid_key", "key: want an API key id (up to 128 characters) or all"}
	}
	parse := func(name string) (time.Time, error) {
		s := v.Get(name)
		if s == "" {
			return time.Time{}, nil
		}
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return t, &QueryError{"invalid_" + name, fmt.Sprintf("%s %q: want an RFC 3339 time such as 2026-03-01T00:00:00Z", name, s)}
		}
		return t, nil
	}
	var err error
	if q.From, err = parse("from"); err != nil {
		return q, err
	}
	if q.To, err = parse("to"); err != nil {
		return q, err
	}
	return q, r.normalize(&q)
}

// normalize fills From and To, rounds them to the step and checks the
// range.
func (r *Reader) normalize(q *Query) error {
	if !q.Step.Valid() {
		return &QueryError{"invalid_step", fmt.Sprintf("step %q: want hour or day", q.Step)}
	}
	if q.To.IsZero() {
		q.To = r.now()
	}
	if q.From.IsZero() {
		q.From = q.To.Add(-DefaultSpan(q.Step))
	}
	if q.From.After(q.To) {
		return &QueryError{"invalid_range", fmt.Sprintf("from %s is after to %s", q.From.Format(time.RFC3339), q.To.Format(time.RFC3339))}
	}
	q.From = q.Step.Floor(q.From)
	if to := q.Step.Floor(q.To); to.Before(q.To) {
		q.To = to.Add(q.Step.Size())
	} else {
		q.To = to
	}
	ret := r.retention().Of(q.Step)
	if q.To.Sub(q.From) > ret+q.Step.Size() {
		return &QueryError{"range_too_long", fmt.Sprintf("from %s to %s is longer than the %s history kept (%s): ask for step=day, or a shorter range",
			q.From.Format(time.RFC3339), q.To.Format(time.RFC3339), q.Step, days(ret))}
	}
	return nil
}

func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

func (r *Reader) now() time.Time {
	if r.Clock != nil {
		return r.Clock()
	}
	return time.Now()
}

func (r *Reader) retention() Retention {
	if r.Retention == (Retention{}) {
		return DefaultRetention
	}
	return r.Retention
}

// Series reads consumer's series for q (a Query from ParseQuery, or built
// by the caller: it is checked again).
func (r *Reader) Series(ctx context.Context, consumer string, q Query) (*Series, error) {
	if err := r.normalize(&q); err != nil {
		return nil, err
	}
	bs, err := r.Store.Buckets(ctx, consumer, q.Step, q.From, q.To)
	if err != nil {
		return nil, err
	}
	s := &Series{Consumer: consumer, Step: q.Step, From: q.From, To: q.To, Points: []Point{}}
	byStart := make(map[int64]*Bucket, len(bs))
	for i := range bs {
		byStart[bs[i].Start.Unix()] = &bs[i]
	}
	keys := map[string]KeyCounts{}
	for t := q.From; t.Before(q.To); t = t.Add(q.Step.Size()) {
		p := Point{Start: t}
		if b := byStart[t.Unix()]; b != nil {
			p.Billed, p.Refunded, p.Denied = b.Billed, b.Refunded, b.Denied
			for id, kc := range b.Keys {
				if q.Key == AllKeys || q.Key == id {
					k := keys[id]
					k.Allowed += kc.Allowed
					k.Denied += kc.Denied
					keys[id] = k
				}
			}
		}
		s.Total.Billed += p.Billed
		s.Total.Refunded += p.Refunded
		s.Total.Denied.add(p.Denied)
		s.Points = append(s.Points, p)
	}
	s.Total.Start = q.From
	if q.Key != "" {
		s.Keys = []KeyTotal{}
		if _, ok := keys[q.Key]; !ok && q.Key != AllKeys {
			keys[q.Key] = KeyCounts{} // asked for, and nothing counted
		}
		for _, id := range sortedKeys(keys) {
			s.Keys = append(s.Keys, KeyTotal{Key: id, KeyCounts: keys[id]})
		}
	}
	return s, nil
}

// CSVHeader is the CSV form's first line.
var CSVHeader = []string{"start", "billed", "refunded", "denied_rate", "denied_quota", "denied_cap"}

// WriteCSV writes the series' points as CSV: a header line, then a line
// a point (per-key totals are in the JSON form only).
func WriteCSV(w io.Writer, s *Series) error {
	cw := csv.NewWriter(w)
	cw.Write(CSVHeader)
	n := func(v int64) string { return strconv.FormatInt(v, 10) }
	for _, p := range s.Points {
		cw.Write([]string{p.Start.UTC().Format(time.RFC3339), n(p.Billed), n(p.Refunded), n(p.Denied.Rate), n(p.Denied.Quota), n(p.Denied.Cap)})
	}
	cw.Flush()
	return cw.Error()
}
