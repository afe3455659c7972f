package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/browsertest"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/console"
	"github.com/levyhq/levy/pkg/server"
)

const token = "console-browser-test-token"

// startLevy runs a levy with the developer portal on its public listener
// and the console on its internal one.
func startLevy(t *testing.T) *server.Server {
	t.Helper()
	text := `plans:
  pro: {model: tiered, rate: {requests: 100, per: 1s, burst: 200}, quota: {requests: 100000, period: month}}
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 1000, period: month}}
portal:
  public_url: http://portal.example.com
usage:
  history: {every: 1s}
`
	cfg, err := config.Parse([]byte(text), "console.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Source = ""
	cfg.Listen = config.Listen{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0", Public: "127.0.0.1:0"}
	cfg.Store.DataDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LEVY_ADMIN_TOKEN", token)
	cfg.ApplyEnv(nil)
	srv, err := server.New(cfg, server.Options{Log: zaptest.NewLogger(t), ReloadEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv
}

func adminCall(t *testing.T, base, method, path string, body, out any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, base+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatal(err)
		}
	}
}

func allowed(t *testing.T, client authv3.AuthorizationClient, key string) bool {
	t.Helper()
	h := map[string]string{":method": "GET", ":path": "/v1/items", ":authority": "api.example.com", "x-api-key": key}
	resp, err := client.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/v1/items", Host: "api.example.com", Headers: h}}}})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return resp.GetStatus().GetCode() == 0
}

// The console in a real browser: the admin token signs in; the list
// searches, filters and pages on the server; a consumer's page changes
// its plan, revokes a key (which ext_authz then refuses) and mints a
// portal link; no page breaks the Content-Security-Policy.
func TestConsoleInHeadlessChromium(t *testing.T) {
	chromium := browsertest.Chromium(t)
	srv := startLevy(t)
	base := "http://" + srv.HTTPAddr()
	shots := os.Getenv("LEVY_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	authz := authv3.NewAuthorizationClient(conn)

	// 60 free consumers, then one on pro with a key that has been used.
	for i := range 60 {
		adminCall(t, base, "PUT", fmt.Sprintf("/v1/consumers/shop-%02d", i), map[string]any{"plan": "free",
			"labels": map[string]string{"name": fmt.Sprintf("Shop %d", i), "team": []string{"retail", "ops"}[i%2]}}, nil)
	}
	adminCall(t, base, "PUT", "/v1/consumers/globex", map[string]any{"plan": "pro", "labels": map[string]string{"name": "Globex Corporation", "team": "ops"}}, nil)
	var key struct {
		ID  string `json:"id"`
		Key string `json:"key"`
	}
	adminCall(t, base, "POST", "/v1/consumers/globex/keys", map[string]any{"id": "globex-main"}, &key)
	for range 3 {
		if !allowed(t, authz, key.Key) {
			t.Fatal("ext_authz refuses globex's new key")
		}
	}
	// shop-07 spends free's burst of 10 and is refused twice.
	var shopKey struct {
		Key string `json:"key"`
	}
	adminCall(t, base, "POST", "/v1/consumers/shop-07/keys", map[string]any{}, &shopKey)
	denied := 0
	for range 12 {
		if !allowed(t, authz, shopKey.Key) {
			denied++
		}
	}
	if denied != 2 {
		t.Fatalf("shop-07: %d of 12 checks denied on a burst of 10, want 2", denied)
	}
	// The usage history flushes them (every second here); a change made
	// through the admin API then asks the console's index for a rebuild.
	await.Until(t, 20*time.Second, func() bool {
		var series struct {
			Total struct {
				Denied struct{ Rate int } `json:"denied"`
			} `json:"total"`
		}
		adminCall(t, base, "GET", "/v1/consumers/shop-07/usage/series", nil, &series)
		return series.Total.Denied.Rate == 2
	}, "shop-07's two denials in the usage history")
	adminCall(t, base, "PATCH", "/v1/consumers/shop-07", map[string]any{"labels": map[string]any{"tier": "trial"}}, nil)
	checked := time.Now()

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	defer cancelAlloc()
	browserCtx, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	var mu sync.Mutex
	var consoleLines []string
	csp := map[string]string{}
	err = chromedp.Listen(browserCtx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *cdplog.EventEntryAdded:
			consoleLines = append(consoleLines, fmt.Sprintf("%s %s: %s", ev.Entry.Source, ev.Entry.Level, ev.Entry.Text))
		case *cdpruntime.EventExceptionThrown:
			consoleLines = append(consoleLines, "exception: "+ev.ExceptionDetails.Text)
		case *network.EventResponseReceived:
			if ev.Type == network.ResourceTypeDocument {
				v, _ := ev.Response.Headers["Content-Security-Policy"].(string)
				csp[ev.Response.URL] = v
			}
		}
	})
	if err != nil {
		t.Fatalf("start %s: %v", chromium, err)
	}
	ctx, cancelTimeout := context.WithTimeout(browserCtx, 2*time.Minute)
	defer cancelTimeout()
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	submit := func(what string, sel chromedp.CSS, want int64) {
		t.Helper()
		resp, err := chromedp.RunResponse(ctx, chromedp.Click(sel))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if resp.Status != want {
			t.Fatalf("%s: HTTP %d, want %d", what, resp.Status, want)
		}
	}
	text := func(sel chromedp.CSS) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(filepath.Join(shots, "console-"+name+".png"), png, 0o644)
		}
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
	}
	// view is a screenshot of what the window shows (a long list's top).
	view := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err == nil {
			err = os.WriteFile(filepath.Join(shots, "console-"+name+".png"), png, 0o644)
		}
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
	}

	do("open the console", chromedp.Navigate(base+"/console/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	shot("1-sign-in")
	do("wrong token", chromedp.SendKeys(chromedp.CSS("#token"), "guess"))
	submit("sign in with a wrong token", "#sign-in", 401)
	do("token", chromedp.SendKeys(chromedp.CSS("#token"), token))
	submit("sign in", "#sign-in", 200)
	// The index is rebuilt off the request path; the consumers made above
	// show once it has been.
	await.Until(t, 20*time.Second, func() bool {
		do("overview", chromedp.Navigate(base+"/console/"), chromedp.WaitVisible(chromedp.CSS("#freshness")))
		return strings.HasPrefix(text("#freshness"), "61 consumers")
	}, "the console's index to hold the 61 consumers")
	if top := text("#top-consumers"); !strings.HasPrefix(top, "shop-07") || !strings.Contains(top, "globex") {
		t.Errorf("top consumers: %q", top)
	}
	shot("2-overview")

	// Denials this period and last seen come from the usage history's
	// activity records: shop-07 leads by denials, both consumers that
	// called show when, and one that never did says so.
	await.Until(t, 20*time.Second, func() bool {
		do("consumers by denials", chromedp.Navigate(base+"/console/consumers?sort=denied"), chromedp.WaitVisible(chromedp.CSS("#consumers")))
		return strings.HasPrefix(text("#consumers tbody tr:first-child th"), "shop-07")
	}, "the console's index to hold shop-07's denials")
	if got := text(`#consumers tbody tr:first-child td[data-label="Denials"]`); got != "2" {
		t.Errorf("shop-07's denials: %q, want 2", got)
	}
	lastSeen := func(row int) (time.Time, string) {
		t.Helper()
		sel := fmt.Sprintf(`#consumers tbody tr:nth-child(%d) td[data-label="Last seen"]`, row)
		shown := text(chromedp.CSS(sel))
		if shown == "never" {
			return time.Time{}, shown
		}
		at, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(sel+" time"), "datetime"))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		seen, err := time.Parse(time.RFC3339, at.Value)
		if err != nil {
			t.Errorf("%s: %v", sel, err)
		}
		return seen, shown
	}
	if seen, shown := lastSeen(1); seen.Before(checked.Add(-time.Minute)) || seen.After(time.Now()) || !strings.HasSuffix(shown, "UTC") {
		t.Errorf("shop-07 last seen %q (%v); the checks were made at %v", shown, seen, checked)
	}
	do("consumers by last seen", chromedp.Navigate(base+"/console/consumers?sort=seen"), chromedp.WaitVisible(chromedp.CSS("#consumers")))
	first, _ := lastSeen(1)
	second, _ := lastSeen(2)
	_, third := lastSeen(3)
	rows := text("#consumers tbody tr:nth-child(1) th") + " " + text("#consumers tbody tr:nth-child(2) th")
	if !strings.Contains(rows, "globex") || !strings.Contains(rows, "shop-07") || first.IsZero() || second.After(first) || third != "never" {
		t.Errorf("by last seen: %q seen %v, %v, then %q", rows, first, second, third)
	}
	view("3b-consumers-by-last-seen")

	do("consumers", chromedp.Navigate(base+"/console/consumers"), chromedp.WaitVisible(chromedp.CSS("#consumers")))
	if got := text("#count"); !strings.HasPrefix(got, "1–50 of 61 consumers") {
		t.Errorf("first page: %q", got)
	}
	shot("3-consumers")
	do("search", chromedp.SendKeys(chromedp.CSS("#q"), "globex corp"))
	submit("search", "#apply", 200)
	if got := text("#consumers tbody"); !strings.Contains(got, "globex") || strings.Contains(got, "shop-") {
		t.Errorf("search for globex: %q", got)
	}
	do("filter", chromedp.Navigate(base+"/console/consumers"), chromedp.WaitVisible(chromedp.CSS("#plan")),
		chromedp.SetValue(chromedp.CSS("#plan"), "free"), chromedp.SetValue(chromedp.CSS("#sort"), "id"))
	submit("filter by plan", "#apply", 200)
	if got := text("#count"); !strings.HasPrefix(got, "1–50 of 60 consumers") {
		t.Errorf("free consumers: %q", got)
	}
	submit("next page", "#next", 200)
	if got := text("#count"); !strings.HasPrefix(got, "51–60 of 60 consumers") || !strings.Contains(text(".pager"), "Page 2 of 2") {
		t.Errorf("second page: %q", got)
	}
	if got := text("#consumers tbody tr:first-child th"); !strings.HasPrefix(got, "shop-50") {
		t.Errorf("second page starts with %q", got)
	}
	shot("4-filtered-page-2")
	do("bad filter", chromedp.Navigate(base+"/console/consumers?status=gone"), chromedp.WaitVisible(chromedp.CSS(".problem")))

	do("open globex", chromedp.Navigate(base+"/console/consumers?q=globex"), chromedp.WaitVisible(chromedp.CSS("#consumers")))
	submit("open globex", `#consumers a[href="/console/consumers/globex"]`, 200)
	if used := text("#used"); used != "3" {
		t.Errorf("globex's usage: %q, want the 3 admitted checks", used)
	}
	// The key's hint, never more of it.
	if got := text("#key-globex-main .hint code"); got != key.Key[:len("levy_")+4]+"…" || strings.Contains(text("#key-table"), key.Key[:len("levy_")+5]) {
		t.Errorf("globex-main's hint %q, key %s", got, key.Key)
	}
	shot("5-consumer")
	do("choose free", chromedp.SetValue(chromedp.CSS("#new-plan"), "free"))
	submit("change plan", "#change-plan", 200)
	if got := text("#plan-name"); got != "free" || !strings.Contains(text(".notice"), "Plan changed to free") {
		t.Errorf("after the plan change: plan %q, notice %q", got, text(".notice"))
	}
	submit("revoke", chromedp.CSS(`form[action="/console/consumers/globex/keys/globex-main/revoke"] button`), 200)
	if !strings.Contains(text(".notice"), "revoked") || !strings.Contains(text("#key-globex-main"), "revoked") {
		t.Errorf("after revoking: %q", text("#key-globex-main"))
	}
	if allowed(t, authz, key.Key) {
		t.Fatal("ext_authz admits the key revoked in the console")
	}
	submit("mint a portal link", "#mint-link", 200)
	link, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#link")))
	if err != nil || !strings.HasPrefix(link, "http://portal.example.com/portal/link/") {
		t.Fatalf("portal link %q: %v", link, err)
	}
	shot("6-consumer-after-actions")

	do("chargeback", chromedp.Navigate(base+"/console/chargeback?by=team"), chromedp.WaitVisible(chromedp.CSS("#chargeback")))
	if got := text("#chargeback"); !strings.Contains(got, "ops") || !strings.Contains(got, "globex") {
		t.Errorf("chargeback: %q", got)
	}
	shot("7-chargeback")
	do("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.Navigate(base+"/console/consumers"),
		chromedp.WaitVisible(chromedp.CSS("#consumers")))
	shot("8-consumers-phone")
	do("desktop", chromedp.EmulateViewport(1280, 900), chromedp.Navigate(base+"/console/"), chromedp.WaitVisible(chromedp.CSS(".signout")))
	submit("sign out", ".signout button", 200)
	resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(base+"/console/consumers"))
	if err != nil || !strings.HasSuffix(resp.URL, "/console/sign-in") {
		t.Fatalf("after signing out, the consumers page: %v %v", resp, err)
	}

	mu.Lock()
	defer mu.Unlock()
	for u, v := range csp {
		if v != console.CSP {
			t.Errorf("%s: Content-Security-Policy %q", u, v)
		}
	}
	for _, line := range consoleLines {
		if strings.Contains(line, "Content Security Policy") || strings.Contains(line, "exception") {
			t.Errorf("browser console: %s", line)
		}
	}
}
