package portal

import (
	"context"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/levyhq/levy/pkg/history"
)

// The keys page's counts: each key's allowed and denied requests over a
// range (the history's per-key totals), when it was last used (the
// latest hour with a request in the hourly history), sorted and cut into
// pages on the server, with the range, sort, order and page in the URL.

// keysPageSize is how many keys a page lists.
const keysPageSize = 20

// keySorts are the keys page's sort orders.
var keySorts = []struct{ Value, Label string }{
	{"created", "Created"}, {"last_used", "Last used"}, {"allowed", "Allowed"}, {"denied", "Denied"},
}

// keysQuery is the keys page's query.
type keysQuery struct {
	Range, Sort, Order string
	Page               int
}

func (q keysQuery) url(change func(*keysQuery)) string {
	c := q
	change(&c)
	v := url.Values{"range": {c.Range}, "sort": {c.Sort}, "order": {c.Order}, "page": {strconv.Itoa(c.Page)}}
	return "/portal/keys?" + v.Encode()
}

// parseKeysQuery reads the keys page's query: a message for what is
// wrong, to show with a 400.
func parseKeysQuery(v url.Values) (keysQuery, string) {
	q := keysQuery{Range: v.Get("range"), Sort: v.Get("sort"), Order: v.Get("order"), Page: 1}
	if q.Range == "" {
		q.Range = "30d"
	}
	if q.Sort == "" {
		q.Sort = "created"
	}
	if q.Order == "" {
		q.Order = "desc"
	}
	if p := v.Get("page"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 1_000_000 {
			return q, "Page " + strconv.Quote(p) + " is not a page number."
		}
		q.Page = n
	}
	switch {
	case !slices.ContainsFunc(usageRanges, func(r struct{ Value, Label string }) bool { return r.Value == q.Range }):
		return q, "Range " + strconv.Quote(q.Range) + " is not offered: choose this billing period, or the last 7, 30 or 90 days."
	case !slices.ContainsFunc(keySorts, func(s struct{ Value, Label string }) bool { return s.Value == q.Sort }):
		return q, "Sort " + strconv.Quote(q.Sort) + " is not offered: choose created, last_used, allowed or denied."
	case q.Order != "asc" && q.Order != "desc":
		return q, "Order " + strconv.Quote(q.Order) + " is not offered: choose asc or desc."
	}
	return q, ""
}

// keyCounts reads the consumer's per-key totals over the range (by day)
// and each key's last hour with a request (over the hourly history).
func (h *Handler) keyCounts(ctx context.Context, s *sess, rng string) (counts map[string]history.KeyCounts, last map[string]time.Time, from, to time.Time, err error) {
	from, to, _, err = h.rangeBounds(ctx, s, rng, history.Day)
	if err != nil {
		return
	}
	sr, err := h.cfg.History.Series(ctx, s.Consumer, history.Query{From: from, To: to, Step: history.Day, Key: history.AllKeys})
	if err != nil {
		return
	}
	counts = map[string]history.KeyCounts{}
	for _, k := range sr.Keys {
		counts[k.Key] = k.KeyCounts
	}
	now := h.clock()
	hourTo := history.Hour.Floor(now).Add(time.Hour)
	bs, err := h.cfg.History.Store.Buckets(ctx, s.Consumer, history.Hour, hourTo.Add(-h.retention().Hourly), hourTo)
	if err != nil {
		return
	}
	last = map[string]time.Time{}
	for _, b := range bs {
		for id, kc := range b.Keys {
			if kc.Allowed+kc.Denied > 0 && b.Start.After(last[id]) {
				last[id] = b.Start
			}
		}
	}
	return counts, last, sr.From, sr.To, nil
}

// sortKeys orders views by q's column, ties by id.
func sortKeys(views []keyView, q keysQuery) {
	cmpInt := func(a, b int64) int { return int(min(max(a-b, -1), 1)) }
	by := map[string]func(a, b keyView) int{
		"created":   func(a, b keyView) int { return a.CreatedAt.Compare(b.CreatedAt) },
		"last_used": func(a, b keyView) int { return a.LastUsed.Compare(b.LastUsed) },
		"allowed":   func(a, b keyView) int { return cmpInt(a.Allowed, b.Allowed) },
		"denied":    func(a, b keyView) int { return cmpInt(a.Denied, b.Denied) },
	}[q.Sort]
	slices.SortStableFunc(views, func(a, b keyView) int {
		c := by(a, b)
		if c == 0 {
			c = strings.Compare(a.ID, b.ID)
		}
		if q.Order == "desc" {
			return -c
		}
		return c
	})
}

// column is a sortable column header of the keys table.
type column struct {
	Label, URL string
	// Sort is aria-sort's value: ascending, descending or none.
	Sort string
	// Num: a column of numbers, aligned right.
	Num bool
}

// keysTable is the keys page's table: its sortable columns, the range
// form and the pager.
type keysTable struct {
	Query      keysQuery
	Ranges     any
	Counted    bool
	CountError string
	// From and To are the counted days, To's included.
	From, To         time.Time
	Created          column
	LastUsed         column
	Allowed, Denied  column
	Page, Pages      int
	Total            int
	Prev, Next       string
	HourlyKept       string
	First, LastShown int
}

func newKeysTable(q keysQuery, total int) keysTable {
	t := keysTable{Query: q, Ranges: usageRanges, Total: total, Pages: max(1, (total+keysPageSize-1)/keysPageSize)}
	t.Page = min(q.Page, t.Pages)
	col := func(name, label string) column {
		c := column{Label: label, Sort: "none"}
		order := "desc"
		if q.Sort == name {
			c.Sort = map[string]string{"asc": "ascending", "desc": "descending"}[q.Order]
			if q.Order == "desc" {
				order = "asc"
			}
		}
		c.URL = q.url(func(c *keysQuery) { c.Sort, c.Order, c.Page = name, order, 1 })
		return c
	}
	t.Created, t.LastUsed, t.Allowed, t.Denied = col("created", "Created"), col("last_used", "Last used"), col("allowed", "Allowed"), col("denied", "Denied")
	t.Allowed.Num, t.Denied.Num = true, true
	if t.Page > 1 {
		t.Prev = q.url(func(c *keysQuery) { c.Page = t.Page - 1 })
	}
	if t.Page < t.Pages {
		t.Next = q.url(func(c *keysQuery) { c.Page = t.Page + 1 })
	}
	t.First = (t.Page-1)*keysPageSize + 1
	t.LastShown = min(t.Page*keysPageSize, total)
	return t
}
