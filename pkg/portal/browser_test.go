package portal_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
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
	"github.com/stripe/stripe-go/v76/webhook"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/browsertest"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/portal"
	"github.com/levyhq/levy/pkg/server"
)

// browserLevy is a running levy whose public listener sits behind a
// proxy, as behind an ingress: the proxy's URL is portal.public_url.
type browserLevy struct {
	srv       *server.Server
	adminURL  string
	publicURL string
	token     string
}

func startBrowserLevy(t *testing.T) *browserLevy {
	t.Helper()
	proxy := httptest.NewUnstartedServer(nil)
	publicURL := "http://" + proxy.Listener.Addr().String()
	text := `plans:
  pro: {model: tiered, rate: {requests: 100, per: 1s, burst: 200}, quota: {requests: 100000, period: month}, pricing: {currency: USD, fixed: 49.00}}
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 1000, period: month}}
  starter: {model: tiered, quota: {requests: 10, period: month}, alerts: [50%, 80%, 100%]}
  metered: {model: payg, quota: {requests: 20, period: month, cap: 100}, pricing: {currency: USD, fixed: 5, per_1k: 250}}
usage:
  history: {every: 1s}
portal:
  public_url: ` + publicURL + `
  contact: billing@example.com
  plans:
    - {plan: free, description: "For trying the API.", price: Free, self_serve: true}
    - {plan: pro, description: "For production traffic.", price: "$49 / month"}
`
	cfg, err := config.Parse([]byte(text), "browser.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Source = ""
	cfg.Listen = config.Listen{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0", Public: "127.0.0.1:0"}
	cfg.Store.DataDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	const token = "browser-test-admin-token"
	t.Setenv("LEVY_ADMIN_TOKEN", token)
	t.Setenv("STRIPE_WEBHOOK_SECRET", webhookSecret)
	cfg.ApplyEnv(nil) // the environment reaches levy through its config, as in levy serve
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
	proxy.Config.Handler = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: srv.PublicAddr()})
	proxy.Start()
	t.Cleanup(proxy.Close)
	return &browserLevy{srv: srv, adminURL: "http://" + srv.HTTPAddr(), publicURL: publicURL, token: token}
}

// webhookSecret signs the Stripe webhooks the browser test sends.
const webhookSecret = "whsec_browser_test"

// paymentFailed tells levy, as Stripe would, that an invoice of the
// Stripe customer failed to be paid.
func (l *browserLevy) paymentFailed(t *testing.T, customer string) {
	t.Helper()
	now := time.Now()
	body := fmt.Sprintf(`{"id": "evt_failed_%s", "object": "event", "api_version": "2023-10-16", "created": %d, "type": "invoice.payment_failed",
  "data": {"object": {"id": "in_%s", "object": "invoice", "customer": %q}}}`, customer, now.Unix(), customer, customer)
	sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: []byte(body), Secret: webhookSecret, Timestamp: now})
	req, err := http.NewRequest("POST", l.publicURL+"/stripe/webhook", bytes.NewReader(sp.Payload))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Stripe-Signature", sp.Header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		data, _ := io.ReadAll(resp.Body)
		t.Fatalf("webhook invoice.payment_failed: %d %s", resp.StatusCode, data)
	}
}

// admin calls the admin API and decodes its JSON answer into out.
func (l *browserLevy) admin(t *testing.T, method, path string, body, out any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, l.adminURL+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+l.token)
	req.Header.Set("Content-Type", "application/json")
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

// allowed asks ext_authz, as Envoy would, whether key is let through.
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

// screenshots is the directory the browser test writes its PNGs to.
func screenshots(t *testing.T) string {
	dir := os.Getenv("LEVY_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// The portal in a real browser: a link minted by the admin API signs in;
// a key created in the portal is admitted by ext_authz, refused once
// revoked there, and a rolled key works beside its successor; no page
// breaks its Content-Security-Policy.
func TestPortalInHeadlessChromium(t *testing.T) {
	chromium := browsertest.Chromium(t)
	l := startBrowserLevy(t)
	shots := screenshots(t)
	conn, err := grpc.NewClient(l.srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	authz := authv3.NewAuthorizationClient(conn)

	l.admin(t, "PUT", "/v1/consumers/acme", map[string]any{"plan": "pro"}, nil)
	var link struct {
		URL       string `json:"url"`
		ExpiresAt string `json:"expires_at"`
	}
	l.admin(t, "POST", "/v1/consumers/acme/portal-links", map[string]any{"ttl": "10m"}, &link)
	if !strings.HasPrefix(link.URL, l.publicURL+"/portal/link/") {
		t.Fatalf("link %q is not under %s", link.URL, l.publicURL)
	}

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium), chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	defer cancelAlloc()
	browserCtx, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()

	var mu sync.Mutex
	var console []string
	csp := map[string]string{} // document URL -> its CSP header
	// The browser starts on this first call, and lives as long as
	// browserCtx.
	err = chromedp.Listen(browserCtx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *cdplog.EventEntryAdded:
			console = append(console, fmt.Sprintf("%s %s: %s", ev.Entry.Source, ev.Entry.Level, ev.Entry.Text))
		case *cdpruntime.EventConsoleAPICalled:
			for _, a := range ev.Args {
				console = append(console, fmt.Sprintf("console.%s: %s", ev.Type, a.Value))
			}
		case *cdpruntime.EventExceptionThrown:
			console = append(console, "exception: "+ev.ExceptionDetails.Text)
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
	// submit clicks a form's button and waits for the page it leads to.
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
	value := func(sel chromedp.CSS) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Value(sel))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}
	attr := func(sel chromedp.CSS, name string) string {
		t.Helper()
		a, err := chromedp.Run(ctx, chromedp.AttributeValue(sel, name))
		if err != nil || !a.Exists {
			t.Fatalf("read %s[%s]: %v", sel, name, err)
		}
		return a.Value
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644)
		}
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
	}

	do("open the link", chromedp.Navigate(link.URL), chromedp.WaitVisible(chromedp.CSS("#confirm")))
	shot("1-link")
	submit("confirm", "#confirm", 200)
	overview := text("main")
	for _, want := range []string{"acme", "pro", "100 requests per second, bursts of 200", "100,000 units per month"} {
		if !strings.Contains(overview, want) {
			t.Errorf("overview lacks %q:\n%s", want, overview)
		}
	}

	do("keys page", chromedp.Navigate(l.publicURL+"/portal/keys"), chromedp.WaitVisible(chromedp.CSS("#create-key")))
	submit("create a key", "#create-key", 201)
	secret, keyID := value("#secret"), attr("#secret", "data-key-id")
	do("copy", chromedp.Click(chromedp.CSS("button[data-copy]")))
	shot("3-key-created")
	if !allowed(t, authz, secret) {
		t.Fatal("ext_authz refuses the key the portal created")
	}
	submit("revoke it", chromedp.CSS(`form[action="/portal/keys/`+keyID+`/revoke"] button`), 200)
	if got := text(".notice"); !strings.Contains(got, "revoked") {
		t.Errorf("after revoking: %q", got)
	}
	if allowed(t, authz, secret) {
		t.Fatal("ext_authz admits the key revoked in the portal")
	}

	submit("create a key to roll", "#create-key", 201)
	old, oldID := value("#secret"), attr("#secret", "data-key-id")
	do("keys page again", chromedp.Navigate(l.publicURL+"/portal/keys"), chromedp.WaitVisible(chromedp.CSS("#create-key")))
	submit("roll it", chromedp.CSS(`form[action="/portal/keys/`+oldID+`/roll"] button`), 201)
	rolled := value("#secret")
	shot("4-key-rolled")
	if rolled == old || !allowed(t, authz, old) || !allowed(t, authz, rolled) {
		t.Fatal("after a roll with a 24h deadline, the old key and its successor must both work")
	}
	do("keys page", chromedp.Navigate(l.publicURL+"/portal/keys"), chromedp.WaitVisible(chromedp.CSS("table")))
	// Each key shows its hint, the prefix and 4 random characters.
	for id, key := range map[string]string{keyID: secret, oldID: old} {
		if got := text(chromedp.CSS("#key-" + id + " .hint code")); got != key[:len("levy_")+4]+"…" {
			t.Errorf("key %s: hint %q, want the first %d characters of %s", id, got, len("levy_")+4, key)
		}
	}
	if page := text("main"); strings.Contains(page, secret[:len("levy_")+5]) || strings.Contains(page, old[:len("levy_")+5]) {
		t.Error("the keys page shows more of a key than its hint")
	}
	shot("5-keys")
	do("plan page", chromedp.Navigate(l.publicURL+"/portal/plan"), chromedp.WaitVisible(chromedp.CSS(".plans")))
	shot("6-plan")
	usagePage(t, ctx, l, authz, rolled, shot)
	do("overview with usage", chromedp.Navigate(l.publicURL+"/portal/"), chromedp.WaitVisible(chromedp.CSS("#used")))
	shot("2-overview")
	if used := text("#used"); used == "0" {
		t.Error("the overview shows no usage after admitted checks")
	}
	// pro's fixed price, so far and at the period's end at this rate,
	// whatever the day of the month the test runs on.
	if got, end, proj := text("#cost-so-far"), text("#cost-at-end"), text("#projection"); got != "$49.00" || end != "$49.00" ||
		!strings.HasPrefix(proj, "If usage goes on at the rate so far, this period comes to ") || !strings.HasSuffix(proj, " units and $49.00.") {
		t.Errorf("cost: so far %q, at the end %q, projection %q", got, end, proj)
	}
	do("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#used")))
	shot("7-overview-phone")
	do("phone keys", chromedp.Navigate(l.publicURL+"/portal/keys"), chromedp.WaitVisible(chromedp.CSS("#create-key")))
	shot("8-keys-phone")
	do("phone usage", chromedp.Navigate(l.publicURL+"/portal/usage"), chromedp.WaitVisible(chromedp.CSS("#usage-chart")))
	shot("12-usage-phone")
	do("phone usage table", chromedp.Click(chromedp.CSS(".figures summary")), chromedp.WaitVisible(chromedp.CSS("#usage-table")))
	shot("13-usage-phone-table")
	do("desktop", chromedp.EmulateViewport(1280, 900))
	submit("sign out", ".signout button", 200)
	shot("9-signed-out")
	resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(link.URL))
	if err != nil || resp.Status != 410 {
		t.Fatalf("the used link: %v %v", resp, err)
	}
	shot("10-link-used")

	// A consumer past an alert threshold (80%) sees its share used on its
	// overview.
	l.admin(t, "PUT", "/v1/consumers/beta", map[string]any{"plan": "starter"}, nil)
	var made struct {
		Key string `json:"key"`
	}
	l.admin(t, "POST", "/v1/consumers/beta/keys", map[string]any{}, &made)
	for range 9 {
		if !allowed(t, authz, made.Key) {
			t.Fatal("ext_authz refuses beta's key within its quota")
		}
	}
	l.admin(t, "POST", "/v1/consumers/beta/portal-links", map[string]any{"ttl": "10m"}, &link)
	do("beta's link", chromedp.Navigate(link.URL), chromedp.WaitVisible(chromedp.CSS("#confirm")))
	submit("confirm beta's link", "#confirm", 200)
	if got := text("#usage-alert"); got != "You have used 90% of your monthly quota." {
		t.Errorf("usage alert banner %q", got)
	}
	shot("11-overview-alert")

	// A pay-as-you-go consumer past its included units sees the overage
	// priced; the projection, when the month is old enough for one (its
	// first day is not), stops at the spend cap.
	l.admin(t, "PUT", "/v1/consumers/gamma", map[string]any{"plan": "metered"}, nil)
	l.admin(t, "POST", "/v1/consumers/gamma/keys", map[string]any{}, &made)
	for range 30 {
		if !allowed(t, authz, made.Key) {
			t.Fatal("ext_authz refuses gamma's key under its spend cap")
		}
	}
	l.admin(t, "POST", "/v1/consumers/gamma/portal-links", map[string]any{"ttl": "10m"}, &link)
	do("gamma's link", chromedp.Navigate(link.URL), chromedp.WaitVisible(chromedp.CSS("#confirm")))
	submit("confirm gamma's link", "#confirm", 200)
	cost := text("#cost")
	for _, want := range []string{"So far", "$7.50", "Price: $5.00 per month, plus $250.00 per 1,000 units beyond the 20 included."} {
		if !strings.Contains(cost, want) {
			t.Errorf("gamma's cost lacks %q:\n%s", want, cost)
		}
	}
	if !strings.Contains(cost, "At period end, at this rate") && !strings.Contains(cost, "It is early in the period") {
		t.Errorf("gamma's cost has neither a projection nor why not:\n%s", cost)
	}
	shot("11d-overview-payg")

	// Stripe says delta's invoice went unpaid: its overview says until
	// when its keys work and, without a Stripe key for levy to open the
	// customer portal with, whom to contact.
	l.admin(t, "PUT", "/v1/consumers/delta", map[string]any{"plan": "pro", "stripe_customer_id": "cus_delta"}, nil)
	l.paymentFailed(t, "cus_delta")
	l.admin(t, "POST", "/v1/consumers/delta/portal-links", map[string]any{"ttl": "10m"}, &link)
	do("delta's link", chromedp.Navigate(link.URL), chromedp.WaitVisible(chromedp.CSS("#confirm")))
	submit("confirm delta's link", "#confirm", 200)
	if got := text("#status-title"); got != "Payment failed" {
		t.Errorf("delta's status %q", got)
	}
	if got := text("#status-todo"); !strings.HasPrefix(got, "Contact billing@example.com to update your payment method by ") {
		t.Errorf("delta is told %q", got)
	}
	if href := attr("#status-todo a", "href"); href != "mailto:billing@example.com" {
		t.Errorf("contact link %q", href)
	}
	shot("11e-overview-payment-failed")

	mu.Lock()
	defer mu.Unlock()
	if len(csp) < 5 {
		t.Errorf("saw %d documents' headers: %v", len(csp), csp)
	}
	for u, v := range csp {
		if v != portal.CSP {
			t.Errorf("%s: Content-Security-Policy %q", u, v)
		}
	}
	for _, line := range console {
		if strings.Contains(line, "Content Security Policy") || strings.Contains(line, "exception") {
			t.Errorf("browser console: %s", line)
		}
	}
	t.Logf("browser console: %d lines: %v", len(console), console)
}
