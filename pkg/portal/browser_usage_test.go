package portal_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/levyhq/levy/pkg/await"
)

// usagePage checks the usage page in the browser of
// TestPortalInHeadlessChromium, signed in as acme: after traffic through
// ext_authz, the period's billed units are what `levy usage` (the admin
// API's report) says, on the page and in the CSV download; a bar's
// figures show on focus and on hover; the filters stay in the URL.
func usagePage(t *testing.T, ctx context.Context, l *browserLevy, authz authv3.AuthorizationClient, key string, shot func(string)) {
	t.Helper()
	// Past the plan's burst of 200 (100 a second come back): some
	// rate-limit denials for the chart, however slow the checks run.
	denied := 0
	for i := 0; i < 2000 && denied < 20; i++ {
		if !allowed(t, authz, key) {
			denied++
		}
	}
	if denied == 0 {
		t.Fatal("2000 checks and no rate-limit denial")
	}
	type report struct {
		Used    int64 `json:"used"`
		Settled int64 `json:"settled"`
	}
	var rep report
	var shown string
	await.Until(t, 30*time.Second, func() bool {
		l.admin(t, "GET", "/v1/consumers/acme/usage", nil, &rep)
		if err := chromedp.Do(ctx, chromedp.Navigate(l.publicURL+"/portal/usage"), chromedp.WaitVisible(chromedp.CSS("#total-billed"))); err != nil {
			t.Fatalf("usage page: %v", err)
		}
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#total-billed")))
		if err != nil {
			t.Fatal(err)
		}
		shown = s
		// The ledger's windows may trail the quota counter for a moment.
		return rep.Settled >= 200 && rep.Used == rep.Settled && s == groupDigits(rep.Settled)
	}, "the usage page's billed units this period to equal levy usage's (used and settled)")
	t.Logf("usage page: %s billed; levy usage: %+v", shown, rep)
	shot("11-usage")

	// Focus: the bar with billed units (today's) tells its figures.
	bar := chromedp.CSS("#usage-chart .bar:has(.s-billed)")
	if err := chromedp.Do(ctx, chromedp.Focus(bar)); err != nil {
		t.Fatalf("focus a bar: %v", err)
	}
	readout, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#chart-readout")))
	if err != nil {
		t.Fatal(err)
	}
	title, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS("#usage-chart .bar:has(.s-billed) title")))
	if err != nil {
		t.Fatal(err)
	}
	if readout != title || !strings.Contains(readout, "billed units "+groupDigits(rep.Settled)+",") || strings.Contains(readout, "rate limit 0,") {
		t.Errorf("focused bar: readout %q, title %q; want billed units %d and rate-limit denials", readout, title, rep.Settled)
	}
	// Its accessible name, as a screen reader gets it, is its title.
	nodes, err := chromedp.Run(ctx, chromedp.Nodes(bar))
	if err != nil || len(nodes) == 0 {
		t.Fatalf("the bar's node: %v", err)
	}
	fetchRelatives := false
	ax, err := chromedp.Call(ctx, accessibility.GetPartialAXTree, accessibility.GetPartialAXTreeParams{BackendNodeID: nodes[0].BackendNodeID, FetchRelatives: &fetchRelatives})
	if err != nil || len(ax.Nodes) == 0 || ax.Nodes[0].Name == nil {
		t.Fatalf("the bar's accessibility node: %v %v", ax, err)
	}
	var name string
	if err := json.Unmarshal(ax.Nodes[0].Name.Value, &name); err != nil || name != title {
		t.Errorf("the focused bar's accessible name is %q (%v), want its title %q", name, err, title)
	}
	shot("11b-usage-focus")
	// Hover: a bar without traffic replaces it. On the period's first
	// day the period has no such bar (today's is its only one): then the
	// hover is checked on the billed bar itself, whose figures it shows.
	quiet := "#usage-chart .bar:not(:has(.s-billed))"
	want := "billed units 0,"
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("`+quiet+`").length`)); err != nil || n == 0 {
		quiet, want = "#usage-chart .bar:has(.s-billed)", "billed units "+groupDigits(rep.Settled)+","
	}
	xy, err := chromedp.Run(ctx, chromedp.Evaluate[[]float64](`(() => { const r = document.querySelector("`+quiet+`").getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()`))
	if err != nil || len(xy) != 2 {
		t.Fatalf("a quiet bar's place: %v %v", xy, err)
	}
	if err := chromedp.Do(ctx, chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, xy[0], xy[1])); err != nil {
		t.Fatal(err)
	}
	hovered, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#chart-readout")))
	first, _ := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(quiet+" title")))
	if hovered != first || !strings.Contains(hovered, want) {
		t.Errorf("hovered a bar: readout %q, its title %q, want %q", hovered, first, want)
	}

	// The CSV download, fetched with the session: billed units add up to
	// levy usage's.
	href, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#usage-csv"), "href"))
	if err != nil || !href.Exists {
		t.Fatalf("CSV link: %v", err)
	}
	// The page's CSP allows no fetch (connect-src none): the test GETs
	// the link with the browser's session cookie, as a download does.
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{l.publicURL + "/portal/"}})
	if err != nil || len(cookies.Cookies) == 0 {
		t.Fatalf("the browser's cookies: %v %v", cookies, err)
	}
	req, _ := http.NewRequest("GET", l.publicURL+href.Value, nil)
	for _, c := range cookies.Cookies {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(data)
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("CSV: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil || len(recs) < 2 || recs[0][1] != "billed" {
		t.Fatalf("CSV: %v\n%s", err, body)
	}
	var billed int64
	for _, r := range recs[1:] {
		n, err := strconv.ParseInt(r[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		billed += n
	}
	if billed != rep.Settled {
		t.Errorf("the CSV's billed units add up to %d; levy usage says %d", billed, rep.Settled)
	}

	// Filters: a GET form; the URL keeps them, and the page shows them.
	if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.CSS("#f-range"), "7d"), chromedp.SetValue(chromedp.CSS("#f-step"), "hour"),
		chromedp.SetValue(chromedp.CSS("#f-outcome"), "billed")); err != nil {
		t.Fatal(err)
	}
	applied, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS("#apply-filters")))
	if err != nil || applied.Status != 200 {
		t.Fatalf("apply filters: %v %v", applied, err)
	}
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	if q := u.Query(); q.Get("range") != "7d" || q.Get("step") != "hour" || q.Get("outcome") != "billed" {
		t.Errorf("the URL does not keep the filters: %s", loc)
	}
	if v, _ := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#f-outcome"))); v != "billed" {
		t.Errorf("the form shows outcome %q after reloading", v)
	}
	bars, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#usage-chart .bar").length`))
	if err != nil || bars != 7*24 {
		t.Errorf("7 days by hour: %d bars (%v)", bars, err)
	}
	shot("11c-usage-7d-hourly")

	// 30 days by hour: drawn by 6 hours, which the page says; the
	// focused bar names the hours it holds.
	if err := chromedp.Do(ctx, chromedp.Navigate(l.publicURL+"/portal/usage?range=30d&step=hour"), chromedp.WaitVisible(chromedp.CSS("#chart-by"))); err != nil {
		t.Fatalf("30 days by hour: %v", err)
	}
	// The readout's listener is added on DOMContentLoaded, which may
	// come after the note is visible.
	await.Until(t, 10*time.Second, func() bool {
		state, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.readyState`))
		return err == nil && state == "complete"
	}, "the 30-day page to finish loading")
	if err := chromedp.Do(ctx, chromedp.Focus(chromedp.CSS("#usage-chart .bar:has(.s-billed)"))); err != nil {
		t.Fatalf("focus a bar of 30 days by hour: %v", err)
	}
	bars, err = chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#usage-chart .bar").length`))
	if err != nil || bars < 120 || bars > 121 {
		t.Errorf("30 days by hour: %d bars (%v), want 120 or 121 of 6 hours", bars, err)
	}
	note, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#chart-by")))
	readout, _ = chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#chart-readout")))
	if !strings.Contains(note, "sums 6 hours") || !strings.Contains(readout, "0–") || !strings.Contains(readout, "billed units "+groupDigits(rep.Settled)) {
		t.Errorf("30 days by hour: note %q, readout %q", note, readout)
	}
	shot("11f-usage-30d-hourly")

	// The keys page counts the key's requests.
	if err := chromedp.Do(ctx, chromedp.Navigate(l.publicURL+"/portal/keys?sort=allowed&order=desc"), chromedp.WaitVisible(chromedp.CSS("table"))); err != nil {
		t.Fatal(err)
	}
	top, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("tbody tr td.allowed")))
	if top == "0" || top == "" {
		t.Errorf("keys by allowed: the top key has %q allowed requests", top)
	}
	shot("5b-keys-counts")
}

// groupDigits writes n as the portal does: 1,234.
func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
