package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/stripetest"
)

// billConfig: payg bills every unit, payg5 the units beyond 5 a month,
// pro (tiered) and free bill nothing per unit; free is the fallback. Every
// plan has a Stripe price, so that webhooks can move consumers between any
// two.
const billConfig = `
dev_mode: true
billing:
  window: 1s
  settle_delay: 1s
  export_every: 100ms
  fallback_plan: free
  stripe: {api_base: %s}
plans:
  free: {model: freemium, rate: {requests: 10000, per: 1s}, quota: {requests: 1000000, period: month}, billing: {stripe_prices: [price_free]}}
  payg:
    model: payg
    rate: {requests: 10000, per: 1s}
    billing: {meter: api_calls, stripe_prices: [price_payg]}
  payg5:
    model: payg
    rate: {requests: 10000, per: 1s}
    quota: {requests: 5, period: month, enforcement: soft}
    billing: {meter: api_calls, stripe_prices: [price_payg5]}
  pro:
    model: tiered
    rate: {requests: 10000, per: 1s}
    quota: {requests: 1000000, period: month}
    billing: {meter: api_calls, stripe_prices: [price_pro]}
consumers:
%s`

// billRig is levy, one replica or more, on one store, with a recording
// Stripe in front of stripe-mock; its consumers are on payg.
type billRig struct {
	stripe *stripetest.Stripe
	rdb    *redistest.Server // nil: the local store
	data   string
	cfg    string
	keys   map[string]string // consumer -> key
}

func newBillRig(t *testing.T, redis bool, consumers ...string) *billRig {
	t.Helper()
	b := &billRig{stripe: stripetest.Start(t), data: t.TempDir(), keys: map[string]string{}}
	if redis {
		b.rdb = redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	}
	var list strings.Builder
	for _, c := range consumers {
		b.keys[c], _ = apikey.Generate("levy")
		fmt.Fprintf(&list, "  - {id: %s, plan: payg, stripe_customer_id: cus_%s, keys: [{key: %s}]}\n", c, c, b.keys[c])
	}
	b.cfg = writeConfig(t, t.TempDir(), fmt.Sprintf(billConfig, b.stripe.URL, list.String()))
	t.Setenv("STRIPE_API_KEY", "sk_test_levy")
	t.Setenv("STRIPE_WEBHOOK_SECRET", "whsec_levy")
	t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
	return b
}

func (b *billRig) serve(t *testing.T) *proc {
	t.Helper()
	if b.rdb != nil {
		return serve(t, "--config", b.cfg, "--store", "redis", "--redis-addr", b.rdb.Addr)
	}
	return serve(t, "--config", b.cfg, "--data-dir", b.data)
}

// billed sums the meter events Stripe holds (accepted, not cancelled) per
// customer.
func billed(t *testing.T, s *stripetest.Stripe) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, e := range s.Events() {
		if !e.Cancelled {
			out[strings.TrimPrefix(e.Customer, "cus_")] += e.Value
		}
	}
	return out
}

// waitBilled waits until Stripe holds want for every consumer, and for a
// few more export passes, so that a surplus would show.
func waitBilled(t *testing.T, s *stripetest.Stripe, p *proc, want map[string]int64) {
	t.Helper()
	await.NoError(t, 20*time.Second, func() error {
		if got := billed(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("Stripe holds %v, want %v\nlevy's log:\n%s", got, want, tail(p.stderr.String(), 3000))
		}
		return nil
	}, "Stripe to hold the bill")
	calls := len(s.Calls("/v1/billing/meter_events"))
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(p.metrics(t), "levy_usage_export_lag_seconds 0") })
	if got := billed(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after more passes Stripe holds %v, want %v (%d calls before)", got, want, calls)
	}
}

// request is one request as a test drives it: admitted through ext_authz,
// then answered by the upstream with status and, optionally, reported
// units.
type request struct {
	consumer string
	status   int
	units    int // x-levy-units; 0 sends none
}

// admitAll checks every request through ext_authz and returns the access-
// log entries Envoy would write for them.
func admitAll(t *testing.T, c *envoyclient.AuthzClient, b *billRig, reqs []request) []envoyclient.LogInput {
	t.Helper()
	var logs []envoyclient.LogInput
	for i, r := range reqs {
		req := &envoyclient.Request{Path: "/v1/items", Headers: []envoyclient.Header{{Name: "x-api-key", Value: b.keys[r.consumer]}},
			StartTime: time.Now()}
		o, err := c.Check(context.Background(), req)
		if err != nil || !o.Allowed {
			t.Fatalf("request %d: %v %+v", i, err, o)
		}
		in := envoyclient.LogInput{Request: req, Authz: o, UpstreamStatus: r.status, AdditionalResponseHeaders: []string{"x-levy-units"}}
		if r.units > 0 {
			in.ResponseHeaders = []envoyclient.Header{{Name: "x-levy-units", Value: strconv.Itoa(r.units)}}
		}
		logs = append(logs, in)
	}
	return logs
}

// cost is what a request bills once settled.
func (r request) cost() int64 {
	switch {
	case r.status == 429 || r.status >= 500:
		return 0
	case r.units > 0:
		return int64(r.units)
	}
	return 1
}

// mixed is n requests each for consumers, interleaved: some refunded
// (5xx, 429), some reporting their units.
func mixed(n int, consumers ...string) []request {
	var out []request
	for i := range n {
		for j, c := range consumers {
			r := request{consumer: c, status: 200}
			switch (i + j) % 10 {
			case 3:
				r.status = 500
			case 7:
				r.status = 429
			case 1, 5:
				r.units = 3 + j
			}
			out = append(out, r)
		}
	}
	return out
}

func want(reqs []request) map[string]int64 {
	out := map[string]int64{}
	for _, r := range reqs {
		out[r.consumer] += r.cost()
	}
	return out
}

// Several access-log messages per flush interval on one stream, for
// several consumers: every refund and reported unit lands on its own
// consumer's bill (issue 10, defect 1).
func TestRefundsAndReportedUnitsStayWithTheirConsumer(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			b := newBillRig(t, store == "redis", "acme", "bolt", "cyan")
			p := b.serve(t)
			reqs := mixed(60, "acme", "bolt", "cyan")
			logs := admitAll(t, p.client(t), b, reqs)
			als := envoyclient.NewAccessLogger(dial(t, p.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: "envoy-1", Cluster: "front"})
			defer als.Close()
			for i, in := range logs {
				als.Log(envoyclient.HTTPLogEntry(in))
				if i%7 == 6 { // a message every 7 entries: many per flush interval
					if err := als.Flush(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := als.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitBilled(t, b.stripe, p, want(reqs))
		})
	}
}

// A webhook moves a consumer to another plan while Stripe is down: the
// usage metered on payg is still billed, under payg (defect 2).
func TestPlanChangeBeforeExportKeepsTheUsage(t *testing.T) {
	b := newBillRig(t, true, "acme")
	p := b.serve(t)
	b.stripe.Fail(503, -1)
	reqs := mixed(8, "acme")
	admitAll(t, p.client(t), b, reqs)
	waitFor(t, 10*time.Second, func() bool { return len(b.stripe.Calls("/v1/billing/meter_events")) >= 1 })
	now := time.Now()
	payload, sig := signedEvent(t, "whsec_levy", subscriptionEventFor("evt_pro", "cus_acme", "customer.subscription.updated", "price_pro", now.Unix()), now)
	if code := postWebhook(t, p, payload, sig); code != 200 {
		t.Fatalf("webhook: %d", code)
	}
	c := p.client(t)
	waitFor(t, 3*time.Second, func() bool { return check(t, c, b.keys["acme"], "/").UpstreamHeaders.Get("x-consumer-plan") == "pro" })
	admitAll(t, c, b, mixed(5, "acme")) // on pro: nothing per unit
	b.stripe.Recover()
	waitBilled(t, b.stripe, p, map[string]int64{"acme": 8})
}

func subscriptionEventFor(id, customer, typ, price string, created int64) string {
	return strings.Replace(subscriptionEvent(id, typ, price, created), `"customer": "cus_acme"`, `"customer": "`+customer+`"`, 1)
}

// A sender that ends its side of the stream (any gRPC client, unlike
// Envoy) gets levy's answer, not "cardinality violation" (defect 3).
func TestHalfClosedAccessLogStreamIsAnswered(t *testing.T) {
	b := newBillRig(t, false, "acme")
	p := b.serve(t)
	logs := admitAll(t, p.client(t), b, []request{{consumer: "acme", status: 503}, {consumer: "acme", status: 200}})
	stream, err := accesslogv3.NewAccessLogServiceClient(dial(t, p.grpcAddr)).StreamAccessLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	msg := &accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{LogName: "levy"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{}},
	}
	for _, in := range logs {
		msg.GetHttpLogs().LogEntry = append(msg.GetHttpLogs().LogEntry, envoyclient.HTTPLogEntry(in))
	}
	if err := stream.Send(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatalf("CloseAndRecv: %v", err)
	}
	waitBilled(t, b.stripe, p, map[string]int64{"acme": 1})
}

// An Istio gateway and a sidecar both log a request, and their streams
// reach different replicas on one Redis: it is settled once (defect 4).
func TestOneRequestLoggedToTwoReplicasIsSettledOnce(t *testing.T) {
	b := newBillRig(t, true, "acme")
	p1, p2 := b.serve(t), b.serve(t)
	// Billed once: 8 admitted - 3 refunded + 2 reported = 7; twice, 6.
	reqs := []request{{"acme", 200, 0}, {"acme", 500, 0}, {"acme", 200, 3}, {"acme", 503, 0}, {"acme", 200, 0},
		{"acme", 200, 0}, {"acme", 429, 0}, {"acme", 200, 0}}
	logs := admitAll(t, p1.client(t), b, reqs)
	for i, p := range []*proc{p1, p2} {
		als := envoyclient.NewAccessLogger(dial(t, p.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: fmt.Sprint("proxy-", i), Cluster: "mesh"})
		for _, in := range logs {
			als.Log(envoyclient.HTTPLogEntry(in))
		}
		if err := als.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer als.Close()
	}
	waitBilled(t, b.stripe, p1, want(reqs))
}

// Access logs that arrive after their window was exported correct the bill
// in the same period: more units by a later event, a refund off the next
// one (defect 6).
func TestLateAccessLogsCorrectTheBill(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			b := newBillRig(t, store == "redis", "acme")
			p := b.serve(t)
			c := p.client(t)
			first := []request{{"acme", 200, 0}, {"acme", 200, 0}, {"acme", 200, 0}, {"acme", 200, 0}, {"acme", 200, 0}}
			logs := admitAll(t, c, b, first)
			waitBilled(t, b.stripe, p, map[string]int64{"acme": 5})

			als := envoyclient.NewAccessLogger(dial(t, p.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: "envoy-1", Cluster: "front"})
			defer als.Close()
			logs[0].ResponseHeaders = []envoyclient.Header{{Name: "x-levy-units", Value: "4"}} // costs 4, reported late
			als.Log(envoyclient.HTTPLogEntry(logs[0]))
			if err := als.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitBilled(t, b.stripe, p, map[string]int64{"acme": 8})

			logs[1].UpstreamStatus, logs[2].UpstreamStatus = 502, 500 // refunded late
			als.Log(envoyclient.HTTPLogEntry(logs[1]))
			als.Log(envoyclient.HTTPLogEntry(logs[2]))
			if err := als.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			// Stripe cancels the event of 8 and takes one of 6 instead.
			waitBilled(t, b.stripe, p, map[string]int64{"acme": 8 - 2})
			admitAll(t, c, b, first) // the period's next usage: 5 units
			waitBilled(t, b.stripe, p, map[string]int64{"acme": 8 - 2 + 5})

			// levy usage --windows shows each window's life.
			out, err := runLevy("usage", "acme", "--windows", "--admin-url", "http://"+p.httpAddr)
			if err != nil || !strings.Contains(out, "REFUNDED") || !strings.Contains(out, "exported") {
				t.Fatalf("levy usage --windows: %v\n%s", err, out)
			}
			var rep billing.UsageReport
			getJSON(t, p, "/v1/consumers/acme/usage?windows=true", &rep)
			var admitted, refunded, reported, bill, ids int64
			for _, w := range rep.Windows {
				admitted, refunded, reported, bill = admitted+w.Admitted, refunded+w.Refunded, reported+w.Reported, bill+w.Billed
				ids += int64(len(w.Identifiers))
			}
			if admitted != 10 || refunded != 2 || reported != 3 || bill != 11 || ids != int64(len(b.stripe.Calls("/v1/billing/meter_events"))) {
				t.Fatalf("windows: admitted %d refunded %d reported %d billed %d, %d identifiers: %+v", admitted, refunded, reported, bill, ids, rep.Windows)
			}
		})
	}
}

// getJSON GETs an admin API path and decodes its answer into v.
func getJSON(t *testing.T, p *proc, path string, v any) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+p.httpAddr+path, nil)
	req.Header.Set("Authorization", "Bearer test-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", path, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// Envoy's start time and levy's store clock disagree at window edges: a
// refund lands in the window admission counted the request in, the one
// ext_authz names in its metadata, not the one Envoy's start time falls
// in (defect 7).
func TestSettlementUsesTheWindowAdmissionCounted(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			b := newBillRig(t, store == "redis", "acme")
			p := b.serve(t)
			reqs := []request{{"acme", 500, 0}, {"acme", 503, 0}, {"acme", 200, 0}, {"acme", 200, 0}}
			logs := admitAll(t, p.client(t), b, reqs)
			als := envoyclient.NewAccessLogger(dial(t, p.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: "envoy-1", Cluster: "front"})
			defer als.Close()
			for _, in := range logs {
				// Envoy's clock is 1.5 windows ahead of the store's.
				in.Authz.StartTime = in.Authz.StartTime.Add(1500 * time.Millisecond)
				als.Log(envoyclient.HTTPLogEntry(in))
			}
			if err := als.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitBilled(t, b.stripe, p, want(reqs))
		})
	}
}

// Stripe took an event but its answer was lost; the retry is refused with
// Stripe's documented answer, a 400 whose message says the event exists
// (no param): levy counts it as accepted, once (defect 5).
func TestDuplicateAnswerInItsDocumentedFormIsAccepted(t *testing.T) {
	b := newBillRig(t, true, "acme")
	p := b.serve(t)
	b.stripe.LoseAnswers(1)
	admitAll(t, p.client(t), b, mixed(6, "acme")) // no access logs: 6 units as admitted
	waitFor(t, 10*time.Second, func() bool { return len(b.stripe.Calls("/v1/billing/meter_events")) >= 1 })
	b.stripe.FailWith(400, `{"error":{"type":"invalid_request_error","message":"An event with identifier already exists."}}`, 1)
	waitBilled(t, b.stripe, p, map[string]int64{"acme": 6})
	if n := len(b.stripe.Calls("/v1/billing/meter_events")); n != 2 {
		t.Fatalf("%d meter event calls, want the lost one and its refused retry", n)
	}
	if m := p.metrics(t); !strings.Contains(m, `levy_usage_export_windows_total{result="accepted"} 1`) {
		t.Fatalf("metrics:\n%s", grepLines(m, "levy_usage_export"))
	}
}

// A refusal that a retry cannot fix is reported (metric, levy usage) and
// not retried; later usage is still billed (defect 5).
func TestPermanentRefusalIsReportedAndNotRetried(t *testing.T) {
	b := newBillRig(t, false, "acme")
	p := b.serve(t)
	b.stripe.FailWith(400, `{"error":{"type":"invalid_request_error","param":"payload[stripe_customer_id]","message":"No such customer: 'cus_acme'"}}`, -1)
	admitAll(t, p.client(t), b, mixed(4, "acme"))
	waitFor(t, 10*time.Second, func() bool {
		return strings.Contains(p.metrics(t), `levy_usage_export_windows_total{result="rejected"}`) &&
			!strings.Contains(p.metrics(t), `levy_usage_export_windows_total{result="rejected"} 0`)
	})
	out, err := runLevy("usage", "acme", "--windows", "--admin-url", "http://"+p.httpAddr)
	if err != nil || !strings.Contains(out, "rejected: No such customer") {
		t.Fatalf("levy usage --windows: %v\n%s", err, out)
	}
	calls := len(b.stripe.Calls("/v1/billing/meter_events"))
	// Many export passes later: no retry of the refused event.
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(p.metrics(t), "levy_usage_export_lag_seconds 0") })
	b.stripe.Recover()
	more := []request{{"acme", 200, 0}, {"acme", 200, 0}}
	admitAll(t, p.client(t), b, more)
	waitBilled(t, b.stripe, p, want(more))
	if n := len(b.stripe.Calls("/v1/billing/meter_events")); n != calls+1 {
		t.Fatalf("%d meter event calls, want %d: the refused event was retried", n, calls+1)
	}
}
