package portal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/problem"
)

// The usage page's filters, as its GET form names them: range, step, key
// and outcome, all kept in the URL.

// usageRanges are the ranges the usage page offers, in order.
var usageRanges = []struct{ Value, Label string }{
	{"period", "This billing period"}, {"7d", "Last 7 days"}, {"30d", "Last 30 days"}, {"90d", "Last 90 days"},
}

// outcomes are the parts of the chart a filter may keep.
var outcomes = []struct{ Value, Label string }{
	{"all", "Everything"}, {"billed", "Billed"}, {"refunded", "Refunded"}, {"denied", "Denied"},
}

// usageFilter is the usage page's query.
type usageFilter struct {
	Range   string
	Step    history.Step
	Key     string
	Outcome string
}

// parseUsageFilter reads the usage page's query: a message for what is
// wrong, to show with a 400.
func parseUsageFilter(v url.Values) (usageFilter, string) {
	f := usageFilter{Range: v.Get("range"), Step: history.Step(v.Get("step")), Key: v.Get("key"), Outcome: v.Get("outcome")}
	if f.Range == "" {
		f.Range = "period"
	}
	if f.Step == "" {
		f.Step = history.Day
	}
	if f.Outcome == "" {
		f.Outcome = "all"
	}
	known := func(v string, opts []struct{ Value, Label string }) bool {
		for _, o := range opts {
			if o.Value == v {
				return true
			}
		}
		return false
	}
	switch {
	case !known(f.Range, usageRanges):
		return f, "Range " + strconv.Quote(f.Range) + " is not offered: choose this billing period, or the last 7, 30 or 90 days."
	case !f.Step.Valid():
		return f, "Step " + strconv.Quote(string(f.Step)) + " is not offered: choose hours or days."
	case !known(f.Outcome, outcomes):
		return f, "Outcome " + strconv.Quote(f.Outcome) + " is not offered: choose everything, billed, refunded or denied."
	case len(f.Key) > 128:
		return f, "That key id is too long."
	}
	return f, ""
}

// period is the consumer's current billing period, as `levy usage`
// reports it (through Config.Usage) or, without it, as the plan counts.
func (h *Handler) period(ctx context.Context, s *sess) (start, end time.Time, u *PeriodUsage, err error) {
	p, ok := h.plan(s.consumer.Plan)
	if h.cfg.Usage != nil && ok {
		pu, err := h.cfg.Usage.Period(ctx, s.consumer)
		if err != nil {
			return start, end, nil, err
		}
		return pu.Start, pu.End, &pu, nil
	}
	unit := plan.Month
	if ok {
		unit = p.UsagePeriod()
	}
	pr := plan.PeriodAt(h.clock(), unit, s.consumer.PeriodAnchor)
	return pr.Start, pr.End, nil, nil
}

// rangeBounds is the range's [from, to) at step: whole steps up to the
// end of the current one, or the billing period.
func (h *Handler) rangeBounds(ctx context.Context, s *sess, rng string, step history.Step) (from, to time.Time, u *PeriodUsage, err error) {
	if rng == "period" {
		return h.period(ctx, s)
	}
	days, _ := strconv.Atoi(rng[:len(rng)-1])
	to = step.Floor(h.clock()).Add(step.Size())
	return to.Add(-time.Duration(days) * 24 * time.Hour), to, nil, nil
}

func (h *Handler) retention() history.Retention {
	if h.cfg.History == nil || h.cfg.History.Retention == (history.Retention{}) {
		return history.DefaultRetention
	}
	return h.cfg.History.Retention
}

func daysWords(d time.Duration) string {
	n := int64(d / (24 * time.Hour))
	if n == 1 {
		return "1 day"
	}
	return strconv.FormatInt(n, 10) + " days"
}

// usageData is what usage.html shows.
type usageData struct {
	Filter  usageFilter
	Ranges  any
	Outcome any
	// Keys are the consumer's key ids, for the key filter.
	Keys     []string
	From, To time.Time
	Note     string
	Error    string
	Series   *history.Series
	// By is what a bar and a row of the table stand for; ByNote says
	// so when it is hours grouped.
	By     span
	ByNote string
	Chart  *chart
	// Rows are the chart's bars; Table the table's rows for them.
	Rows       []row
	Table      template.HTML
	KeyView    bool
	Total      history.Point
	KeyTotal   history.KeyCounts
	CSV        string
	Period     *PeriodUsage
	ShowPeriod bool
}

func (h *Handler) usagePage(w http.ResponseWriter, r *http.Request, s *sess) {
	f, bad := parseUsageFilter(r.URL.Query())
	d := usageData{Filter: f, Ranges: usageRanges, Outcome: outcomes}
	if bad != "" {
		h.render(w, r, http.StatusBadRequest, "message.html", page{Title: "Filter not offered", Session: s, Data: message{Text: bad}})
		return
	}
	if h.cfg.History == nil {
		d.Error = "Usage history is not kept by this service."
		h.render(w, r, http.StatusOK, "usage.html", page{Title: "Usage", Active: "usage", Session: s, Data: d})
		return
	}
	ctx := r.Context()
	keys, err := h.cfg.Keys.ListKeys(ctx, s.Consumer)
	if err == nil {
		for _, k := range keys {
			d.Keys = append(d.Keys, k.ID)
		}
		if f.Key != "" && !slices.Contains(d.Keys, f.Key) {
			// Another consumer's key is as unknown as one that never was.
			h.render(w, r, http.StatusNotFound, "message.html", page{Title: "Key not found", Session: s,
				Data: message{Text: "You have no key with that id."}})
			return
		}
	}
	from, to, pu, err := h.rangeBounds(ctx, s, f.Range, f.Step)
	if err == nil && f.Step == history.Hour && to.Sub(from) > h.retention().Hourly {
		d.Note = "Hourly figures are kept for " + daysWords(h.retention().Hourly) + ": this range is shown by day."
		f.Step = history.Day
		from, to, pu, err = h.rangeBounds(ctx, s, f.Range, f.Step)
	}
	var sr *history.Series
	if err == nil {
		sr, err = h.cfg.History.Series(ctx, s.Consumer, history.Query{From: from, To: to, Step: f.Step, Key: f.Key})
	}
	if err == nil && f.Key != "" {
		// Units are kept per account; a key has its requests, by step.
		var bs []history.Bucket
		bs, err = h.cfg.History.Store.Buckets(ctx, s.Consumer, sr.Step, sr.From, sr.To)
		if err == nil {
			d.KeyView = true
			d.Rows = keyRows(sr, bs, f.Key)
		}
	}
	if err != nil {
		h.log.Error("portal usage series", zap.String("consumer", s.Consumer), zap.Error(err))
		d.Error = "Your usage cannot be read right now. Try again in a minute."
		h.render(w, r, http.StatusServiceUnavailable, "usage.html", page{Title: "Usage", Active: "usage", Session: s, Data: d})
		return
	}
	if !d.KeyView {
		d.Rows = accountRows(sr)
	}
	d.Series, d.From, d.To, d.Total = sr, sr.From, sr.To, sr.Total
	for _, k := range sr.Keys {
		if k.Key == f.Key {
			d.KeyTotal = k.KeyCounts
		}
	}
	d.Period, d.ShowPeriod = pu, f.Range == "period" && !d.KeyView
	d.By = spanFor(d.Rows, sr.Step)
	if d.By.Hours > 1 {
		hours := len(d.Rows)
		d.Rows = group(d.Rows, d.By)
		d.ByNote = groupNote(d.Rows, d.By, hours)
	}
	d.Chart = newChart(d.Rows, d.By, segmentsFor(d.KeyView, f.Outcome), yTitle(d.KeyView, f.Outcome))
	d.Table = tableRows(d.Rows, d.By, d.KeyView)
	csv := url.Values{"from": {sr.From.Format(time.RFC3339)}, "to": {sr.To.Format(time.RFC3339)}, "step": {string(sr.Step)}, "format": {"csv"}}
	d.CSV = "/portal/usage/series?" + csv.Encode()
	h.render(w, r, http.StatusOK, "usage.html", page{Title: "Usage", Active: "usage", Session: s, Data: d})
}

// groupNote tells that rows, a bar each, sum hours of a range by span,
// and which hold fewer: "Each bar, and each row of the table, sums 6
// hours (UTC): 121 bars for the 720 hours of this range; the first holds
// 5 hours, the last 1. The CSV download has every hour."
func groupNote(rows []row, by span, hours int) string {
	note := fmt.Sprintf("Each bar, and each row of the table, sums %s (UTC): %d bars for the %d hours of this range", by, len(rows), hours)
	held := func(r row) int { return int(r.End.Sub(r.Start) / time.Hour) }
	first, last := held(rows[0]), held(rows[len(rows)-1])
	switch {
	case first < by.Hours && last < by.Hours && len(rows) > 1:
		note += fmt.Sprintf("; the first holds %s, the last %d", hoursWords(first), last)
	case first < by.Hours:
		note += "; the first holds " + hoursWords(first)
	case last < by.Hours:
		note += "; the last holds " + hoursWords(last)
	}
	return note + ". The CSV download has every hour."
}

func hoursWords(n int) string {
	if n == 1 {
		return "1 hour"
	}
	return strconv.Itoa(n) + " hours"
}

// seriesRoute answers the session's consumer's series as JSON, or CSV
// with format=csv: the admin API's /v1/consumers/{id}/usage/series with
// the consumer taken from the session. Any other parameter (an id
// included) is refused.
func (h *Handler) seriesRoute(w http.ResponseWriter, r *http.Request, s *sess) {
	if h.cfg.History == nil {
		problem.Write(w, problem.New(http.StatusServiceUnavailable, "history_unavailable", "the usage history is off"))
		return
	}
	q, err := h.cfg.History.ParseQuery(r.URL.Query())
	var sr *history.Series
	if err == nil {
		sr, err = h.cfg.History.Series(r.Context(), s.Consumer, q)
	}
	var qe *history.QueryError
	switch {
	case errors.As(err, &qe):
		problem.Write(w, problem.New(http.StatusBadRequest, qe.Reason, qe.Detail))
	case err != nil:
		h.log.Error("portal usage series", zap.String("consumer", s.Consumer), zap.Error(err))
		problem.Write(w, problem.New(http.StatusServiceUnavailable, "store_unavailable", "the usage history cannot be read right now"))
	case q.CSV:
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="usage-%s-%s.csv"`, sr.Step, sr.From.Format("2006-01-02")))
		w.WriteHeader(http.StatusOK)
		if err := history.WriteCSV(w, sr); err != nil {
			h.log.Warn("write portal usage CSV", zap.String("consumer", s.Consumer), zap.Error(err))
		}
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		json.NewEncoder(w).Encode(sr)
	}
}
