package portal_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/history"
)

// record writes usage as the history's roll-up and flushes would: billed
// and refunded units in an hour (and its day), and one key's decisions.
func (e *env) record(consumer, key string, hour time.Time, billed, refunded, allowed int64, denied history.Denied) {
	e.t.Helper()
	ctx := context.Background()
	day := history.Day.Floor(hour)
	// The day's units are the sum of its hours': read what is there.
	bs, err := e.hist.Buckets(ctx, consumer, history.Day, day, day.Add(24*time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	var dayBilled, dayRefunded int64
	for _, b := range bs {
		dayBilled, dayRefunded = b.Billed, b.Refunded
	}
	if err := e.hist.SetUsage(ctx, []history.Usage{
		{Consumer: consumer, Step: history.Hour, Start: hour, Billed: billed, Refunded: refunded},
		{Consumer: consumer, Step: history.Day, Start: day, Billed: dayBilled + billed, Refunded: dayRefunded + refunded},
	}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.hist.AddCounts(ctx, []history.Counts{{Consumer: consumer, Key: key, Hour: hour, Allowed: allowed, Denied: denied}}); err != nil {
		e.t.Fatal(err)
	}
}

var (
	totalRE = func(id string) *regexp.Regexp { return regexp.MustCompile(`id="` + id + `">([^<]*)<`) }
	// A bar's accessible name is its <title>.
	barRE = regexp.MustCompile(`<g class="bar" tabindex="0" role="img"><title>([^<]*)</title>`)
)

func total(t *testing.T, body, id string) string {
	t.Helper()
	m := totalRE(id).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no #%s on the page:\n%s", id, body)
	}
	return m[1]
}

// seed gives a and b usage on 9 and 10 March (the env's clock is 10 March
// 12:00, in the billing period from 1 March).
func (e *env) seed() {
	h9 := time.Date(2026, 3, 9, 14, 0, 0, 0, time.UTC)
	h10 := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	e.record("a", e.keyA, h9, 1200, 30, 40, history.Denied{Rate: 3})
	e.record("a", e.keyA, h10, 800, 0, 25, history.Denied{Quota: 2, Cap: 1})
	e.record("b", e.keyB, h10, 99999, 555, 7777, history.Denied{Rate: 4444})
}

// The usage page and its series route show the session's consumer's
// figures only: another consumer's totals never appear, an id in the
// query is refused, another consumer's key is unknown, and the CSV is the
// admin route's for the session's consumer.
func TestUsageShowsOnlyTheSessionsConsumer(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.seed()
	b := e.browser()
	e.signIn(b, "a")

	page := b.get("/portal/usage")
	if page.status != 200 {
		t.Fatalf("usage page: %d %s", page.status, page.body)
	}
	if got := total(t, page.body, "total-billed"); got != "2,000" {
		t.Errorf("billed this period %q, want 2,000", got)
	}
	if got := total(t, page.body, "total-refunded"); got != "30" {
		t.Errorf("refunded %q, want 30", got)
	}
	if got := total(t, page.body, "total-denied"); got != "6" {
		t.Errorf("denied %q, want 6", got)
	}
	for _, leak := range []string{"99,999", "99999", "4,444", e.keyB} {
		if strings.Contains(page.body, leak) {
			t.Errorf("a's usage page shows b's %q", leak)
		}
	}

	// The JSON series: a's, whatever id the query names.
	a := b.get("/portal/usage/series?step=day&from=2026-03-01T00:00:00Z&to=2026-04-01T00:00:00Z")
	var s history.Series
	if err := json.Unmarshal([]byte(a.body), &s); a.status != 200 || err != nil {
		t.Fatalf("series: %d %v %s", a.status, err, a.body)
	}
	if s.Consumer != "a" || s.Total.Billed != 2000 || s.Total.Refunded != 30 {
		t.Errorf("series: consumer %q billed %d refunded %d", s.Consumer, s.Total.Billed, s.Total.Refunded)
	}
	for _, q := range []string{"consumer=b", "id=b", "consumer_id=b", "step=day&consumer=b"} {
		if a := b.get("/portal/usage/series?" + q); a.status != 400 || !strings.Contains(a.body, "unknown_parameter") {
			t.Errorf("series?%s: %d %s", q, a.status, a.body)
		}
		if a := b.get("/portal/usage?" + q); strings.Contains(a.body, "99,999") {
			t.Errorf("usage?%s shows b's units", q)
		}
	}
	for _, p := range []string{"/portal/usage/series/b", "/portal/usage/b", "/portal/b/usage"} {
		if a := b.get(p); a.status != 404 {
			t.Errorf("GET %s: %d", p, a.status)
		}
	}
	// b's key: as unknown as a key that never was, on the page and in the
	// series.
	if a := b.get("/portal/usage?key=" + e.keyB); a.status != 404 || strings.Contains(a.body, "7,777") {
		t.Errorf("usage?key=<b's key>: %d", a.status)
	}
	if a := b.get("/portal/usage/series?step=day&key=" + e.keyB); a.status != 200 || !strings.Contains(a.body, `"allowed":0,"denied":0`) {
		t.Errorf("series?key=<b's key>: %d %s", a.status, a.body)
	}

	// The CSV link: the admin route's CSV of a's series.
	link := regexp.MustCompile(`href="(/portal/usage/series\?[^"]+)" id="usage-csv"`).FindStringSubmatch(page.body)
	if link == nil {
		t.Fatalf("no CSV link:\n%s", page.body)
	}
	csv := b.get(strings.ReplaceAll(link[1], "&amp;", "&"))
	if csv.status != 200 || !strings.HasPrefix(csv.header.Get("Content-Type"), "text/csv") || !strings.Contains(csv.header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("CSV: %d %v", csv.status, csv.header)
	}
	q, _ := url.ParseQuery(strings.SplitN(strings.ReplaceAll(link[1], "&amp;", "&"), "?", 2)[1])
	r := &history.Reader{Store: e.hist, Clock: e.clock.Now}
	hq, err := r.ParseQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	want, err := r.Series(context.Background(), "a", hq)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	history.WriteCSV(&buf, want)
	if csv.body != buf.String() {
		t.Errorf("portal CSV differs from the admin route's:\n%s\nwant\n%s", csv.body, buf.String())
	}

	// Without scope usage: neither the page nor the series.
	k := e.browser()
	e.signIn(k, "a", "keys")
	for _, p := range []string{"/portal/usage", "/portal/usage/series"} {
		if a := k.get(p); a.status != 403 {
			t.Errorf("%s without scope usage: %d", p, a.status)
		}
	}
	// Signed out: to sign-in.
	if a := e.browser().get("/portal/usage/series"); a.status != 303 {
		t.Errorf("series without a session: %d", a.status)
	}
}

// Each bar is a focusable group whose title and accessible name give its
// figures; the outcome filter keeps its parts; a key's view shows its
// requests; bad filters get a clear 400.
func TestUsageChartBarsFiltersAndBadInput(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.seed()
	b := e.browser()
	e.signIn(b, "a")

	page := b.get("/portal/usage?range=7d&step=day&outcome=all")
	bars := barRE.FindAllStringSubmatch(page.body, -1)
	if page.status != 200 || len(bars) != 7 {
		t.Fatalf("7 days by day: %d, %d bars", page.status, len(bars))
	}
	want := "Mon 9 Mar 2026: billed units 1,200, refunded units (5xx, 429) 30, denied: rate limit 3, denied: quota 0, denied: spend cap 0"
	if got := bars[5][1]; got != want {
		t.Errorf("9 March's bar: %q, want %q", got, want)
	}
	if n := strings.Count(page.body, "<title>"); n != 1+7 {
		t.Errorf("%d <title>s: want the page's and one a bar", n)
	}
	if rows := strings.Count(page.body, `<th scope="row">`); rows != 7 {
		t.Errorf("the table has %d rows, want 7", rows)
	}

	denied := b.get("/portal/usage?range=7d&step=day&outcome=denied")
	if strings.Contains(denied.body, `<path class="s-billed"`) || !strings.Contains(denied.body, `<path class="s-quota"`) {
		t.Error("outcome=denied still draws billed units, or no denials")
	}
	for _, sel := range []string{`value="7d" selected`, `value="day" selected`, `value="denied" selected`} {
		if !strings.Contains(denied.body, sel) {
			t.Errorf("the filter form does not keep %s", sel)
		}
	}

	hours := b.get("/portal/usage?range=7d&step=hour")
	if n := len(barRE.FindAllString(hours.body, -1)); n != 7*24 {
		t.Errorf("7 days by hour: %d bars", n)
	}
	long := b.get("/portal/usage?range=90d&step=hour")
	if n := len(barRE.FindAllString(long.body, -1)); long.status != 200 || n != 90 || !strings.Contains(long.body, "shown by day") {
		t.Errorf("90 days by hour: %d, %d bars, and no note that it is shown by day", long.status, n)
	}

	key := b.get("/portal/usage?range=7d&step=day&key=" + e.keyA)
	if got := total(t, key.body, "total-allowed"); key.status != 200 || got != "65" {
		t.Errorf("key view: %d, allowed %q want 65", key.status, got)
	}
	if got := total(t, key.body, "total-key-denied"); got != "6" {
		t.Errorf("key view: denied %q want 6", got)
	}

	for _, q := range []string{"range=1y", "step=minute", "outcome=maybe", "key=" + strings.Repeat("k", 200), "range=%00"} {
		a := b.get("/portal/usage?" + q)
		if a.status != 400 || !strings.Contains(a.body, "not offered") && !strings.Contains(a.body, "too long") {
			t.Errorf("usage?%s: %d %s", q, a.status, a.body)
		}
	}
	for _, q := range []string{"step=week", "from=yesterday", "from=2026-03-10T00:00:00Z&to=2026-03-01T00:00:00Z", "step=hour&from=2025-01-01T00:00:00Z", "format=xml", "step=day&step=hour"} {
		if a := b.get("/portal/usage/series?" + q); a.status != 400 || !strings.Contains(a.header.Get("Content-Type"), "problem+json") {
			t.Errorf("series?%s: %d %s", q, a.status, a.body)
		}
	}
}

// A range of more hours than a week is drawn by groups of hours, which
// the page says, so that it stays light; the bars and the table's rows
// hold the same figures, they add up to the totals, and the CSV link
// still offers every hour.
func TestUsageLongHourlyRangeIsDrawnByGroupsOfHours(t *testing.T) {
	e := newEnv(t, nil, nil)
	e.seed()
	b := e.browser()
	e.signIn(b, "a")

	// The clock is 10 March 12:00: the last 30 days are the 720 hours
	// from 8 February 13:00, drawn by 6 hours from 12:00 (the first
	// bar holds 5 of them, the last one).
	page := b.get("/portal/usage?range=30d&step=hour")
	if page.status != 200 {
		t.Fatalf("30 days by hour: %d %s", page.status, page.body)
	}
	bars := barRE.FindAllStringSubmatch(page.body, -1)
	if len(bars) != 121 {
		t.Fatalf("30 days by hour: %d bars, want 121 of 6 hours", len(bars))
	}
	tests := []struct {
		give int
		want string
	}{
		{0, "8 Feb 2026 13:00–18:00 UTC: billed units 0,"},
		{1, "8 Feb 2026 18:00–24:00 UTC: billed units 0,"},
		{116, "9 Mar 2026 12:00–18:00 UTC: billed units 1,200, refunded units (5xx, 429) 30, denied: rate limit 3,"},
		{120, "10 Mar 2026 12:00–13:00 UTC: billed units 0,"},
	}
	for _, tt := range tests {
		if got := bars[tt.give][1]; !strings.HasPrefix(got, tt.want) {
			t.Errorf("bar %d: %q, want %q...", tt.give, got, tt.want)
		}
	}
	for _, want := range []string{"Units over time, by 6 hours", "Each bar, and each row of the table, sums 6 hours (UTC): 121 bars for the 720 hours of this range; the first holds 5 hours, the last 1. The CSV download has every hour.",
		`<caption class="visually-hidden">Usage by 6 hours</caption>`, "Hours (UTC)",
		`<th scope="row">10 Mar 2026 06:00–12:00 UTC</th><td data-label="Billed">800</td>`} {
		if !strings.Contains(page.body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if rows := strings.Count(page.body, `<th scope="row">`); rows != 121 {
		t.Errorf("the table has %d rows, want one a bar", rows)
	}
	var billed int64
	for _, m := range regexp.MustCompile(`billed units ([0-9,]+),`).FindAllStringSubmatch(page.body, -1) {
		n, _ := strconv.ParseInt(strings.ReplaceAll(m[1], ",", ""), 10, 64)
		billed += n
	}
	if got := total(t, page.body, "total-billed"); billed != 2000 || got != "2,000" {
		t.Errorf("the bars' billed units add up to %d, the total says %s; want 2,000", billed, got)
	}
	if !strings.Contains(page.body, "step=hour") || !strings.Contains(page.body, "by hour, UTC") {
		t.Error("the CSV link is not by hour")
	}

	// A key's requests are grouped alike.
	key := b.get("/portal/usage?range=30d&step=hour&key=" + e.keyA)
	if n := len(barRE.FindAllString(key.body, -1)); key.status != 200 || n != 121 ||
		!strings.Contains(key.body, "9 Mar 2026 12:00–18:00 UTC: allowed requests 40, denied requests 3") {
		t.Errorf("a key's 30 days by hour: %d, %d bars", key.status, n)
	}
	// A week of hours is drawn hour by hour, and says nothing of groups.
	week := b.get("/portal/usage?range=7d&step=hour")
	if strings.Contains(week.body, `id="chart-by"`) || !strings.Contains(week.body, "Units over time, by hour") {
		t.Error("7 days by hour is not drawn by hour")
	}
}

// The keys page counts each key's requests over the range, tells when it
// was last used (its latest hour with a request), and sorts and pages on
// the server with all of it in the URL.
func TestKeysPageCountsSortsAndPages(t *testing.T) {
	e := newEnv(t, nil, nil)
	ops := apikey.Ops{Store: e.keys, Hasher: func() apikey.Hasher { return hasher }, Clock: e.clock.Now}
	ids := []string{e.keyA}
	for range 24 {
		e.clock.Add(time.Minute)
		k, _, err := ops.Issue(context.Background(), "a", "", time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
	}
	hour := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	// Key i has i*10 allowed and 25-i denied; key 7 was used an hour later.
	for i, id := range ids {
		e.record("a", id, hour, 0, 0, int64(i*10), history.Denied{Rate: int64(25 - i)})
	}
	e.record("a", ids[7], hour.Add(time.Hour), 0, 0, 1, history.Denied{})
	e.record("b", e.keyB, hour, 0, 0, 100000, history.Denied{})

	b := e.browser()
	e.signIn(b, "a")
	rowRE := regexp.MustCompile(`<tr id="key-([^"]+)">`)
	rows := func(path string) []string {
		t.Helper()
		a := b.get(path)
		if a.status != 200 {
			t.Fatalf("%s: %d %s", path, a.status, a.body)
		}
		var out []string
		for _, m := range rowRE.FindAllStringSubmatch(a.body, -1) {
			out = append(out, m[1])
		}
		return out
	}
	// newEnv made a's first key on the wall clock, after the others.
	first := rows("/portal/keys")
	if len(first) != 20 || first[0] != ids[0] || first[1] != ids[24] {
		t.Fatalf("default: %d rows, first %v; want 20, newest first", len(first), first[:2])
	}
	page2 := rows("/portal/keys?range=30d&sort=created&order=desc&page=2")
	if len(page2) != 5 || page2[4] != ids[1] {
		t.Errorf("page 2: %v", page2)
	}
	if oldest := rows("/portal/keys?sort=created&order=asc"); oldest[0] != ids[1] {
		t.Errorf("oldest first: %v", oldest[:1])
	}
	byAllowed := rows("/portal/keys?range=7d&sort=allowed&order=desc")
	if byAllowed[0] != ids[24] || byAllowed[1] != ids[23] {
		t.Errorf("by allowed, most first: %v", byAllowed[:2])
	}
	byDenied := rows("/portal/keys?range=7d&sort=denied&order=desc")
	if byDenied[0] != ids[0] {
		t.Errorf("by denied, most first: %v", byDenied[:1])
	}
	byLast := rows("/portal/keys?range=7d&sort=last_used&order=desc")
	if byLast[0] != ids[7] {
		t.Errorf("by last used: %v", byLast[:1])
	}

	a := b.get("/portal/keys?range=7d&sort=allowed&order=desc")
	row := a.body[strings.Index(a.body, `<tr id="key-`+ids[7]+`"`):]
	row = row[:strings.Index(row, "</tr>")]
	for _, want := range []string{`class="num allowed">71<`, `class="num denied">18<`, "10 Mar 2026 10:00 UTC"} {
		if !strings.Contains(row, want) {
			t.Errorf("key 7's row lacks %q:\n%s", want, row)
		}
	}
	if strings.Contains(a.body, "100,000") || strings.Contains(a.body, e.keyB) {
		t.Error("a's keys page shows b's key or counts")
	}
	for _, want := range []string{`aria-sort="descending"`, `href="/portal/keys?order=asc&amp;page=1&amp;range=7d&amp;sort=allowed"`,
		`href="/portal/keys?order=desc&amp;page=2&amp;range=7d&amp;sort=allowed"`, "page 1 of 2"} {
		if !strings.Contains(a.body, want) {
			t.Errorf("keys page lacks %s", want)
		}
	}
	for _, q := range []string{"sort=secret", "order=up", "page=0", "page=x", "range=forever"} {
		if a := b.get("/portal/keys?" + q); a.status != 400 {
			t.Errorf("keys?%s: %d", q, a.status)
		}
	}
	if got := rows("/portal/keys?page=99"); len(got) != 5 {
		t.Errorf("a page past the last shows the last: %d rows", len(got))
	}
}
