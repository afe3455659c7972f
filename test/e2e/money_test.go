package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/stripetest"
)

const moneyConfig = `
dev_mode: true
billing:
  window: 1s
  settle_delay: 1s
  export_every: 100ms
  fallback_plan: free
  stripe: {api_base: %s}
plans:
  free: {model: freemium, rate: {requests: 100, per: 1s}, quota: {requests: 1000, period: month}, billing: {stripe_prices: [price_free]}}
  payg:
    model: payg
    rate: {requests: 1000, per: 1s}
    quota: {requests: 5, period: month, enforcement: soft}
    billing: {meter: api_calls, stripe_prices: [price_payg]}
consumers:
  - {id: acme, plan: payg, stripe_customer_id: cus_acme, keys: [{key: %s}]}
`

type moneyRig struct {
	rdb    *redistest.Server
	stripe *stripetest.Stripe
	cfg    string
	key    string
}

func newMoneyRig(t *testing.T) *moneyRig {
	t.Helper()
	m := &moneyRig{rdb: redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always"), stripe: stripetest.Start(t)}
	m.key, _ = apikey.Generate("levy")
	m.cfg = writeConfig(t, t.TempDir(), fmt.Sprintf(moneyConfig, m.stripe.URL, m.key))
	t.Setenv("STRIPE_API_KEY", "sk_test_levy")
	t.Setenv("STRIPE_WEBHOOK_SECRET", "whsec_levy")
	t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
	return m
}

func (m *moneyRig) serve(t *testing.T) *proc {
	return serve(t, "--config", m.cfg, "--store", "redis", "--redis-addr", m.rdb.Addr)
}

// exported sums the meter events Stripe accepted and fails on a repeated
// identifier.
func exported(t *testing.T, s *stripetest.Stripe) (total int64, events int) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range s.Calls("/v1/billing/meter_events") {
		if c.Status != 200 {
			continue
		}
		id := c.Form.Get("identifier")
		if seen[id] {
			t.Fatalf("identifier %s accepted twice", id)
		}
		seen[id] = true
		v, _ := strconv.ParseInt(c.Form.Get("payload[value]"), 10, 64)
		total += v
		if c.Form.Get("payload[stripe_customer_id]") != "cus_acme" || c.Form.Get("event_name") != "api_calls" {
			t.Fatalf("event %v", c.Form)
		}
	}
	return total, len(seen)
}

// Admitted usage reaches Stripe exactly once, even when Stripe fails for a
// while and levy is killed mid-export and restarted.
func TestUsageReachesStripeOnceThroughFailuresAndSIGKILL(t *testing.T) {
	m := newMoneyRig(t)
	p := m.serve(t)
	c := p.client(t)
	for i := 0; i < 25; i++ { // 5 included, 20 billable
		if o := check(t, c, m.key, "/v1/items"); !o.Allowed {
			t.Fatalf("request %d: %d", i, o.Status)
		}
	}
	m.stripe.Fail(503, -1) // Stripe is down while levy tries to export
	waitFor(t, 10*time.Second, func() bool { return len(m.stripe.Calls("/v1/billing/meter_events")) >= 2 })
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	m.stripe.Recover()
	p = m.serve(t)
	waitFor(t, 20*time.Second, func() bool { total, _ := exported(t, m.stripe); return total == 20 })

	// levy usage reports the period.
	out, err := runLevy("usage", "acme", "--admin-url", "http://"+p.httpAddr)
	if err != nil {
		t.Fatalf("levy usage: %v\n%s", err, out)
	}
	for _, want := range []string{"used:     25 units", "included: 5", "overage:  20", "exported to Stripe 20, pending 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("levy usage lacks %q:\n%s", want, out)
		}
	}
	if total, _ := exported(t, m.stripe); total != 20 {
		t.Fatalf("exported %d", total)
	}
}

func signedEvent(t *testing.T, secret, body string, at time.Time) (payload []byte, sig string) {
	t.Helper()
	sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: []byte(body), Secret: secret, Timestamp: at})
	return sp.Payload, sp.Header
}

func subscriptionEvent(id, typ, price string, created int64) string {
	return fmt.Sprintf(`{"id": %q, "object": "event", "api_version": "2023-10-16", "created": %d, "type": %q,
  "data": {"object": {"id": "sub_1", "object": "subscription", "customer": "cus_acme", "status": "active",
    "current_period_start": %d,
    "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item", "price": {"id": %q, "object": "price"}}]}}}}`,
		id, created, typ, created, price)
}

func postWebhook(t *testing.T, p *proc, payload []byte, sig string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+p.httpAddr+"/stripe/webhook", bytes.NewReader(payload))
	if sig != "" {
		req.Header.Set("Stripe-Signature", sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Signed webhooks change the plan for the next request; tampered or
// unsigned ones change nothing.
func TestStripeWebhooksChangePlans(t *testing.T) {
	m := newMoneyRig(t)
	p := m.serve(t)
	c := p.client(t)
	plan := func() string { return check(t, c, m.key, "/").UpstreamHeaders.Get("x-consumer-plan") }
	if got := plan(); got != "payg" {
		t.Fatalf("plan %q", got)
	}
	now := time.Now()
	body := subscriptionEvent("evt_1", "customer.subscription.updated", "price_free", now.Unix())

	payload, sig := signedEvent(t, "whsec_wrong", body, now)
	if code := postWebhook(t, p, payload, sig); code != 400 {
		t.Fatalf("wrong secret: %d", code)
	}
	payload, sig = signedEvent(t, "whsec_levy", body, now)
	tampered := bytes.Replace(payload, []byte("price_free"), []byte("price_payg"), 1)
	if code := postWebhook(t, p, tampered, sig); code != 400 {
		t.Fatalf("tampered: %d", code)
	}
	if code := postWebhook(t, p, payload, ""); code != 400 {
		t.Fatalf("unsigned: %d", code)
	}
	old, oldSig := signedEvent(t, "whsec_levy", body, now.Add(-10*time.Minute))
	if code := postWebhook(t, p, old, oldSig); code != 400 {
		t.Fatalf("signed 10 minutes ago: %d", code)
	}
	if got := plan(); got != "payg" {
		t.Fatalf("a rejected webhook changed the plan to %q", got)
	}

	if code := postWebhook(t, p, payload, sig); code != 200 {
		t.Fatalf("signed: %d", code)
	}
	waitFor(t, 3*time.Second, func() bool { return plan() == "free" })

	// An older event arriving late changes nothing.
	late := subscriptionEvent("evt_0", "customer.subscription.updated", "price_payg", now.Add(-time.Hour).Unix())
	payload, sig = signedEvent(t, "whsec_levy", late, now)
	if code := postWebhook(t, p, payload, sig); code != 200 {
		t.Fatalf("late event: %d", code)
	}
	for i := 0; i < 3; i++ {
		if got := plan(); got != "free" {
			t.Fatalf("an older event changed the plan to %q", got)
		}
	}
	var rep map[string]any
	req, _ := http.NewRequest("GET", "http://"+p.httpAddr+"/v1/consumers/acme/usage", nil)
	req.Header.Set("Authorization", "Bearer test-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
	if rep["plan"] != "free" {
		t.Fatalf("usage report plan %v", rep["plan"])
	}
}

// Access logs settle what admission counted: a 5xx is refunded, units an
// upstream reports are added, a repeated log changes nothing; and SIGTERM
// ends Envoy's open access-log streams at once and keeps the settlement.
func TestAccessLogsSettleUsage(t *testing.T) {
	m := newMoneyRig(t)
	p := m.serve(t)
	c := p.client(t)
	als := envoyclient.NewAccessLogger(dial(t, p.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: "envoy-1", Cluster: "front"})
	defer als.Close()
	status := []int{200, 200, 500, 503, 200, 200, 200, 200, 200, 200} // 10 requests, 5 included
	for i, code := range status {
		req := &envoyclient.Request{Path: "/v1/items", Headers: []envoyclient.Header{{Name: "x-api-key", Value: m.key}}}
		o, err := c.Check(context.Background(), req)
		if err != nil || !o.Allowed {
			t.Fatalf("request %d: %v %v", i, err, o.Status)
		}
		in := envoyclient.LogInput{Request: req, Authz: o, UpstreamStatus: code, AdditionalResponseHeaders: []string{"x-levy-units"}}
		if i == 9 {
			in.ResponseHeaders = []envoyclient.Header{{Name: "x-levy-units", Value: "4"}} // costs 4, not 1
		}
		entry := envoyclient.HTTPLogEntry(in)
		als.Log(entry)
		if i == 9 {
			als.Log(entry) // logged twice (two access loggers): counted once
		}
	}
	if err := als.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// 10 admitted, 2 refunded, +3 reported: 11 units, 6 beyond the 5 included.
	usage := func() string {
		out, _ := runLevy("usage", "acme", "--admin-url", "http://"+p.httpAddr)
		return out
	}
	await.NoError(t, 10*time.Second, func() error {
		if total, _ := exported(t, m.stripe); total != 6 {
			return fmt.Errorf("exported %d billable units, want 6 (10 admitted - 2 refunded + 3 reported - 5 included)\n%s\nlevy's log:\n%s",
				total, usage(), tail(p.stderr.String(), 2000))
		}
		return nil
	}, "the export")

	// The quota counter moves with the ledger: 11 in both.
	if out := usage(); !strings.Contains(out, "used:     11 units (11 after access-log settlement)") || !strings.Contains(out, "billable: 6 (exported to Stripe 6, pending 0)") {
		t.Fatalf("levy usage:\n%s", out)
	}

	// SIGTERM with the access-log stream still open: levy exits promptly.
	start := time.Now()
	if err := p.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("SIGTERM took %s with an access-log stream open", took)
	}
}

// exitCode is a levy command's exit status.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// levy billing reconcile proves the bill: after the export, levy and
// Stripe agree (exit 0); an event Stripe loses shows as a difference of
// its value (exit 3).
func TestBillingReconcileAgreesAfterExportAndShowsALostEvent(t *testing.T) {
	m := newMoneyRig(t)
	p := m.serve(t)
	c := p.client(t)
	// Two exports: 5 included and 8 billable, then 12 more.
	for i, want := range []int64{8, 20} {
		for n := 0; n < map[int]int{0: 13, 1: 12}[i]; n++ {
			if o := check(t, c, m.key, "/v1/items"); !o.Allowed {
				t.Fatalf("request %d: %d", n, o.Status)
			}
		}
		waitFor(t, 10*time.Second, func() bool { total, _ := exported(t, m.stripe); return total == want })
	}
	reconcile := func(args ...string) (string, int) {
		out, err := runLevy(append([]string{"billing", "reconcile", "--admin-url", "http://" + p.httpAddr}, args...)...)
		return out, exitCode(err)
	}
	// The exporter records Stripe's answer just after it: wait for that.
	var out string
	var code int
	await.NoError(t, 10*time.Second, func() error {
		if out, code = reconcile(); code != 0 {
			return fmt.Errorf("levy billing reconcile: exit %d\n%s", code, out)
		}
		return nil
	}, "levy and Stripe to agree")
	row := regexp.MustCompile(`(?m)^acme +api_calls +\S+ +20 +20 +0 +20 +0 +ok`)
	if !row.MatchString(out) || !strings.Contains(out, "levy and Stripe agree") {
		t.Fatalf("levy billing reconcile:\n%s", out)
	}

	t.Logf("levy billing reconcile:\n%s", out)
	// Each export sends what was not billed yet: two here, or more when
	// a batch of requests straddled an export tick on a loaded machine.
	events := m.stripe.Events()
	var sum int64
	for _, e := range events {
		sum += e.Value
	}
	if len(events) < 2 || sum != 20 {
		t.Fatalf("events %+v: want at least 2 with 20 units in all", events)
	}
	lost := events[len(events)-1]
	if !m.stripe.Drop(lost.Identifier) {
		t.Fatal("drop")
	}
	out, code = reconcile("--consumer", "acme", "--period", time.Now().UTC().Format("2006-01"))
	want := fmt.Sprintf(`(?m)^acme +api_calls +\S+ +20 +%d +-%d +20 +0 +missing`, 20-lost.Value, lost.Value)
	if code != 3 || !regexp.MustCompile(want).MatchString(out) || !strings.Contains(out, "levy and Stripe differ on 1 of 1 account") {
		t.Fatalf("after dropping an event of %d: exit %d\n%s", lost.Value, code, out)
	}
	var rep struct {
		Differences int
		Rows        []struct {
			Difference int64
			Status     string
		}
	}
	t.Logf("after the drop:\n%s", out)
	out, code = reconcile("--json")
	if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &rep); err != nil || code != 3 ||
		rep.Differences != 1 || rep.Rows[0].Difference != -lost.Value || rep.Rows[0].Status != "missing" {
		t.Fatalf("--json: exit %d %v\n%s", code, err, out)
	}
}
