package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
)

// settleQuotaConfig: capped is a hard quota of 5 units a month; payg
// includes 5 units a month and counts the rest as overage, without a cap.
// The consumers are listed after them, or put through the admin API.
const settleQuotaConfig = `
dev_mode: true
billing: {window: 1s}
plans:
  capped:
    model: tiered
    rate: {requests: 10000, per: 1s}
    quota: {requests: 5, period: month}
  payg:
    model: payg
    rate: {requests: 10000, per: 1s}
    quota: {requests: 5, period: month, enforcement: soft}
    billing: {meter: api_calls}
consumers:
%s`

// quotaRig is levy, one replica or more, on one store, with consumer acme
// on capped (or a plan given).
type quotaRig struct {
	rdb  *redistest.Server // nil: the local store
	data string
	cfg  string
	key  string
}

func newQuotaRig(t *testing.T, redis, static bool) *quotaRig {
	t.Helper()
	return newQuotaRigOn(t, redis, static, "capped")
}

func newQuotaRigOn(t *testing.T, redis, static bool, plan string) *quotaRig {
	t.Helper()
	r := &quotaRig{data: t.TempDir()}
	if redis {
		r.rdb = redistest.Start(t)
	}
	consumers := "  []\n"
	if static {
		r.key, _ = apikey.Generate("levy")
		consumers = fmt.Sprintf("  - {id: acme, plan: %s, keys: [{key: %s}]}\n", plan, r.key)
	}
	r.cfg = writeConfig(t, t.TempDir(), fmt.Sprintf(settleQuotaConfig, consumers))
	t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
	return r
}

func (r *quotaRig) serve(t *testing.T) *proc {
	t.Helper()
	if r.rdb != nil {
		return serve(t, "--config", r.cfg, "--store", "redis", "--redis-addr", r.rdb.Addr)
	}
	return serve(t, "--config", r.cfg, "--data-dir", r.data)
}

// admit checks one request of acme's through ext_authz, failing unless
// it is allowed, and returns the access-log entry Envoy would write for
// it once the upstream answered status, reporting units (0: none).
func (r *quotaRig) admit(t *testing.T, c *envoyclient.AuthzClient) *envoyclient.LogInput {
	t.Helper()
	req := &envoyclient.Request{Path: "/v1/items", Headers: []envoyclient.Header{{Name: "x-api-key", Value: r.key}}, StartTime: time.Now()}
	o, err := c.Check(context.Background(), req)
	if err != nil || !o.Allowed {
		t.Fatalf("not admitted: %v status %d %s", err, o.Status, o.Body)
	}
	return &envoyclient.LogInput{Request: req, Authz: o, UpstreamStatus: 200, AdditionalResponseHeaders: []string{"x-levy-units"}}
}

func answered(in *envoyclient.LogInput, status, units int) envoyclient.LogInput {
	out := *in
	out.UpstreamStatus = status
	if units > 0 {
		out.ResponseHeaders = []envoyclient.Header{{Name: "x-levy-units", Value: strconv.Itoa(units)}}
	}
	return out
}

// deliver sends the entries to p on one access-log stream, as one Envoy
// would.
func deliver(t *testing.T, p *proc, node string, entries ...envoyclient.LogInput) {
	t.Helper()
	als := envoyclient.NewAccessLogger(dial(t, p.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: node, Cluster: "front"})
	defer als.Close()
	for _, in := range entries {
		als.Log(envoyclient.HTTPLogEntry(in))
	}
	if err := als.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// used is acme's quota counter in its current period, as the admin API
// reports it. A report the store could not answer in time (a loaded test
// machine) is asked for again.
func used(t *testing.T, p *proc) int64 {
	t.Helper()
	var rep billing.UsageReport
	err := await.Poll(5*time.Second, func() error {
		req, _ := http.NewRequest("GET", "http://"+p.httpAddr+"/v1/consumers/acme/usage", nil)
		req.Header.Set("Authorization", "Bearer test-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return await.Halt(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 && json.Unmarshal(body, &rep) == nil {
			return nil
		}
		err = fmt.Errorf("usage report: %d %s", resp.StatusCode, body)
		if resp.StatusCode != 503 {
			return await.Halt(err)
		}
		return err
	})
	if err != nil {
		t.Fatalf("%v\nlevy's log:\n%s", err, tail(p.stderr.String(), 3000))
	}
	return rep.Used
}

// settlesTo waits until acme's counter is want, then for several more
// settlement flushes, so that a second application would show.
func settlesTo(t *testing.T, p *proc, want int64) {
	t.Helper()
	await.NoError(t, 10*time.Second, func() error {
		if got := used(t, p); got != want {
			return fmt.Errorf("acme's quota counter is %d, want %d\nlevy's log:\n%s", got, want, tail(p.stderr.String(), 3000))
		}
		return nil
	}, "the settlement")
	// That nothing more happens only a span of time can show: ten
	// flushes of the access-log receiver, each of which would apply a
	// settlement kept for a retry.
	await.Holds(t, time.Second, func() bool { return used(t, p) == want }, fmt.Sprintf("acme's quota counter at %d", want))
}

// An upstream reports 10 units for a request admitted at 1 on a hard
// quota of 5: the access log debits the quota past its limit, and the
// next request is a 429 whose headers and explanation say the quota is
// used up (nothing left, not less than nothing); levy usage shows the
// count.
func TestUnitsReportedPastTheQuotaDenyTheNextRequest(t *testing.T) {
	r := newQuotaRig(t, false, true)
	p := r.serve(t)
	c := p.client(t)
	first := r.admit(t, c)
	if got := first.Authz.ResponseHeaders.Get("x-ratelimit-remaining"); got != "4" {
		t.Fatalf("remaining %q after the first request, want 4", got)
	}
	deliver(t, p, "envoy-1", answered(first, 200, 5+5))
	settlesTo(t, p, 10)

	o := check(t, c, r.key, "/v1/items")
	if o.Status != 429 {
		t.Fatalf("the request after a debit past the quota: %d, want 429", o.Status)
	}
	h := o.ResponseHeaders
	retry, err := strconv.Atoi(h.Get("retry-after"))
	if err != nil || retry < 1 || retry > 31*24*3600 {
		t.Errorf("retry-after %q: want the seconds until the month ends", h.Get("retry-after"))
	}
	if h.Get("x-ratelimit-limit") != "5" || h.Get("x-ratelimit-remaining") != "0" || h.Get("x-ratelimit-reset") != h.Get("retry-after") {
		t.Errorf("x-ratelimit-limit %q remaining %q reset %q, want 5, 0 and the retry-after %q",
			h.Get("x-ratelimit-limit"), h.Get("x-ratelimit-remaining"), h.Get("x-ratelimit-reset"), h.Get("retry-after"))
	}
	if got := h.Get("ratelimit"); !strings.HasPrefix(got, `"quota";r=0;t=`) {
		t.Errorf("ratelimit %q, want the quota with nothing remaining", got)
	}
	if !strings.Contains(o.Body, `quota \"quota\" of 5 units this month used up`) || !strings.Contains(o.Body, "quota_exceeded") {
		t.Errorf("body %s", o.Body)
	}
	for _, hv := range h {
		if strings.Contains(hv.Name, "ratelimit") && strings.Contains(hv.Value, "=-") || strings.HasPrefix(hv.Value, "-") {
			t.Errorf("%s: %q shows a negative number", hv.Name, hv.Value)
		}
	}

	out, err := runLevy("usage", "acme", "--admin-url", "http://"+p.httpAddr)
	if err != nil || !strings.Contains(out, "used:     10 units") {
		t.Fatalf("levy usage: %v\n%s", err, out)
	}
}

// Pay as you go only counts: units an upstream reports past the included
// units are counted (levy usage shows them, and the overage) and never
// deny.
func TestUnitsReportedOnPayAsYouGoAreCountedAndNeverDeny(t *testing.T) {
	r := newQuotaRigOn(t, false, true, "payg")
	p := r.serve(t)
	c := p.client(t)
	deliver(t, p, "envoy-1", answered(r.admit(t, c), 200, 20))
	settlesTo(t, p, 20)
	r.admit(t, c)
	out, err := runLevy("usage", "acme", "--admin-url", "http://"+p.httpAddr)
	if err != nil || !strings.Contains(out, "used:     21 units") || !strings.Contains(out, "overage:  16") {
		t.Fatalf("levy usage: %v\n%s", err, out)
	}
}

// The same access log reaches two replicas on one Redis (an Istio gateway
// and a sidecar both log the request): the quota is debited once, and
// both replicas deny the next request.
func TestUnitsReportedToTwoReplicasAreDebitedOnce(t *testing.T) {
	r := newQuotaRig(t, true, true)
	p1, p2 := r.serve(t), r.serve(t)
	first := r.admit(t, p1.client(t))
	logged := answered(first, 200, 8)
	deliver(t, p1, "gateway", logged)
	deliver(t, p2, "sidecar", logged)
	settlesTo(t, p1, 8) // twice would be 15
	for i, p := range []*proc{p1, p2} {
		if o := check(t, p.client(t), r.key, "/v1/items"); o.Status != 429 || o.ResponseHeaders.Get("x-ratelimit-remaining") != "0" {
			t.Fatalf("replica %d: %d remaining %q, want 429 with 0", i+1, o.Status, o.ResponseHeaders.Get("x-ratelimit-remaining"))
		}
	}
}

// A request the upstream failed (a status the plan does not bill) gives
// its unit back to the quota, once, however many times its access log
// arrives: on one process, or on two replicas of one Redis.
func TestRefundOfAnUnbilledStatusCreditsTheQuotaOnce(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			r := newQuotaRig(t, store == "redis", true)
			procs := []*proc{r.serve(t)}
			if store == "redis" {
				procs = append(procs, r.serve(t))
			}
			c := procs[0].client(t)
			var failed *envoyclient.LogInput
			for i := range 5 {
				in := r.admit(t, c)
				if i == 2 {
					failed = in
				}
			}
			logged := answered(failed, 503, 0)
			deliver(t, procs[0], "gateway", logged)
			deliver(t, procs[len(procs)-1], "sidecar", logged)
			settlesTo(t, procs[0], 4) // twice would be 3
			r.admit(t, c)             // the unit given back
			if o := check(t, c, r.key, "/v1/items"); o.Status != 429 {
				t.Fatalf("a 7th request on a quota of 5 with one refund: %d", o.Status)
			}
		})
	}
}

// The consumer's billing period moves on (its Stripe subscription renewed:
// a new period anchor) between a request and its access log: the late
// refund belongs to the old period and does not credit the new one, while
// a refund of a request of the new period does.
func TestLateRefundAfterThePeriodRolledOverLeavesTheNewPeriodAlone(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			r := newQuotaRig(t, store == "redis", false)
			p := r.serve(t)
			start := time.Now().UTC().Truncate(time.Second)
			adminCall(t, p, "PUT", "/v1/consumers/acme", `{"plan": "capped", "period_anchor": "`+start.Add(-2*time.Hour).Format(time.RFC3339)+`"}`)
			r.key = adminCall(t, p, "POST", "/v1/consumers/acme/keys", `{}`)["key"].(string)
			c := p.client(t)
			old := r.admit(t, c)

			renewed := time.Now().UTC().Truncate(time.Second).Add(-time.Second)
			adminCall(t, p, "PATCH", "/v1/consumers/acme", `{"period_anchor": "`+renewed.Format(time.RFC3339)+`"}`)
			// A change reaches ext_authz within a second; until it does,
			// requests count in the old period. The first one in the new
			// period is the one that leaves 4 of 5 again. Every poll
			// admits a request, and the old period holds only 5: the
			// sleeps pace the polls over that documented second, they
			// do not guess when something is ready.
			time.Sleep(time.Second)
			var current *envoyclient.LogInput
			waitFor(t, 10*time.Second, func() bool {
				current = r.admit(t, c)
				if current.Authz.ResponseHeaders.Get("x-ratelimit-remaining") == "4" {
					return true
				}
				time.Sleep(250 * time.Millisecond)
				return false
			})
			r.admit(t, c)
			if got := used(t, p); got != 2 {
				t.Fatalf("the new period counts %d, want 2", got)
			}
			deliver(t, p, "envoy-1", answered(old, 500, 0), answered(current, 500, 0))
			settlesTo(t, p, 1) // the old refund too would be 0
		})
	}
}
