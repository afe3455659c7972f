package e2e

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/stripetest"
)

// included is what each plan's units cost before they are billed; a plan
// not listed bills nothing.
var included = map[string]int64{"payg": 0, "payg5": 5}

// soakParams are the randomized test's seed and length: fixed in CI,
// from LEVY_SOAK_SEED ("random" for a new one) and LEVY_SOAK_STEPS for
// make soak.
func soakParams(t *testing.T) (seed int64, steps int) {
	seed, steps = 20261130, 40
	if v := os.Getenv("LEVY_SOAK_SEED"); v == "random" {
		seed = time.Now().UnixNano()
	} else if v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("LEVY_SOAK_SEED=%q: want a number or random", v)
		}
		seed = n
	}
	if v := os.Getenv("LEVY_SOAK_STEPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("LEVY_SOAK_STEPS=%q: want a positive number", v)
		}
		steps = n
	}
	return seed, steps
}

// Random admissions, refunds, reported units, plan changes, duplicate and
// lost and late access logs, on replicas sharing one store, with Stripe
// failing 30% of calls (half of them after doing the work): at the end
// Stripe holds exactly each consumer's bill.
func TestRandomTrafficIsBilledExactly(t *testing.T) {
	seed, steps := soakParams(t)
	t.Logf("seed %d, %d steps (LEVY_SOAK_SEED and LEVY_SOAK_STEPS repeat or lengthen it)", seed, steps)
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) { runRandomBill(t, store, seed, steps) })
	}
}

// sim is the randomized test's model of what the bill must be.
type sim struct {
	t         *testing.T
	rng       *rand.Rand
	stripe    *stripetest.Stripe
	replicas  []*proc
	clients   []*envoyclient.AuthzClient
	loggers   []*envoyclient.AccessLogger
	consumers []string
	keys      map[string]string
	// units by consumer and the plan each request was admitted under.
	units map[string]map[string]int64
	late  []envoyclient.LogInput // logs held back until their window was exported
	event int64                  // webhook events sent
	plans map[string]string
}

func runRandomBill(t *testing.T, store string, seed int64, steps int) {
	s := &sim{t: t, rng: rand.New(rand.NewSource(seed)), stripe: stripetest.Start(t), keys: map[string]string{},
		units: map[string]map[string]int64{}, plans: map[string]string{}}
	var list strings.Builder
	for i := range 4 {
		c := fmt.Sprintf("c%d", i)
		s.consumers = append(s.consumers, c)
		s.keys[c], _ = apikey.Generate("levy")
		s.plans[c] = "payg"
		s.units[c] = map[string]int64{}
		fmt.Fprintf(&list, "  - {id: %s, plan: payg, stripe_customer_id: cus_%s, keys: [{key: %s}]}\n", c, c, s.keys[c])
	}
	cfg := writeConfig(t, t.TempDir(), fmt.Sprintf(billConfig, s.stripe.URL, list.String()))
	t.Setenv("STRIPE_API_KEY", "sk_test_levy")
	t.Setenv("STRIPE_WEBHOOK_SECRET", "whsec_levy")
	t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
	if store == "redis" {
		rdb := redistest.Start(t)
		for range 2 {
			s.replicas = append(s.replicas, serve(t, "--config", cfg, "--store", "redis", "--redis-addr", rdb.Addr))
		}
	} else {
		s.replicas = append(s.replicas, serve(t, "--config", cfg, "--data-dir", t.TempDir()))
	}
	for i, p := range s.replicas {
		s.clients = append(s.clients, p.client(t))
		// Two streams per replica, as two Envoy workers (or a gateway and
		// a sidecar) open.
		for w := range 2 {
			l := envoyclient.NewAccessLogger(dial(t, p.grpcAddr), envoyclient.AccessLogConfig{LogName: "levy", NodeID: fmt.Sprintf("proxy-%d-%d", i, w), Cluster: "mesh"})
			t.Cleanup(func() { l.Close() })
			s.loggers = append(s.loggers, l)
		}
	}
	s.stripe.FailRandomly(0.3, seed)

	for step := range steps {
		switch x := s.rng.Intn(10); {
		case x < 6:
			s.traffic()
		case x < 8:
			s.changePlan(step)
		default:
			s.deliverLate()
		}
	}
	s.deliverLate()
	s.stripe.Recover()
	waitBilled(t, s.stripe, s.replicas[0], s.want())
	s.reconcile()
}

// reconcile: levy billing reconcile finds levy and Stripe agreeing, and
// finds the difference when Stripe loses an event.
func (s *sim) reconcile() {
	t := s.t
	run := func() (string, int) {
		out, err := runLevy("billing", "reconcile", "--admin-url", "http://"+s.replicas[0].httpAddr)
		return out, exitCode(err)
	}
	// The exporter records Stripe's last answers just after them.
	var out string
	var code int
	waitFor(t, 10*time.Second, func() bool { out, code = run(); return code == 0 })
	if !strings.Contains(out, "levy and Stripe agree") {
		t.Fatalf("levy billing reconcile:\n%s", out)
	}
	var lost *stripetest.Event
	for _, e := range s.stripe.Events() {
		if !e.Cancelled && e.Value > 0 {
			lost = &e
			break
		}
	}
	if lost == nil {
		return // nothing was billed
	}
	s.stripe.Drop(lost.Identifier)
	out, code = run()
	consumer := strings.TrimPrefix(lost.Customer, "cus_")
	row := regexp.MustCompile(fmt.Sprintf(`(?m)^%s +api_calls +\S+ +(\d+) +(\d+) +-%d `, consumer, lost.Value))
	if code != 3 || !row.MatchString(out) {
		t.Fatalf("after Stripe lost %s's event of %d: exit %d\n%s", consumer, lost.Value, code, out)
	}
}

// traffic admits a burst of requests and logs them: refunded, reporting
// units, delivered twice, lost, or held back until after the export.
func (s *sim) traffic() {
	c := s.consumers[s.rng.Intn(len(s.consumers))]
	client := s.clients[s.rng.Intn(len(s.clients))]
	for range 1 + s.rng.Intn(12) {
		req := &envoyclient.Request{Path: "/v1/items", Headers: []envoyclient.Header{{Name: "x-api-key", Value: s.keys[c]}}, StartTime: time.Now()}
		o, err := client.Check(context.Background(), req)
		if err != nil || !o.Allowed {
			s.t.Fatalf("check: %v %+v", err, o)
		}
		plan := o.UpstreamHeaders.Get("x-consumer-plan")
		in := envoyclient.LogInput{Request: req, Authz: o, UpstreamStatus: 200, AdditionalResponseHeaders: []string{"x-levy-units"}}
		var cost int64 = 1
		switch s.rng.Intn(6) {
		case 0:
			in.UpstreamStatus, cost = []int{500, 502, 503, 429}[s.rng.Intn(4)], 0
		case 1:
			n := s.rng.Intn(9)
			in.ResponseHeaders, cost = []envoyclient.Header{{Name: "x-levy-units", Value: strconv.Itoa(n)}}, int64(n)
		}
		switch s.rng.Intn(10) {
		case 0: // lost with its stream: admission's count stands
			cost = 1
		case 1:
			s.late = append(s.late, in)
		case 2: // logged by two proxies, maybe on two replicas
			s.log(in)
			s.log(in)
		default:
			s.log(in)
		}
		s.units[c][plan] += cost
	}
	for _, l := range s.loggers {
		if err := l.Flush(context.Background()); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *sim) log(in envoyclient.LogInput) {
	s.loggers[s.rng.Intn(len(s.loggers))].Log(envoyclient.HTTPLogEntry(in))
}

// changePlan moves a consumer to another plan by a signed webhook, and
// waits until levy answers with it (those checks are usage too).
func (s *sim) changePlan(step int) {
	c := s.consumers[s.rng.Intn(len(s.consumers))]
	plans := []string{"payg", "payg5", "pro", "free"}
	to := plans[s.rng.Intn(len(plans))]
	s.event++
	now := time.Now()
	body := fmt.Sprintf(`{"id": "evt_%d", "object": "event", "api_version": "2023-10-16", "created": %d, "type": "customer.subscription.updated",
  "data": {"object": {"id": "sub_%s", "object": "subscription", "customer": "cus_%s", "status": "active",
    "current_period_start": %d,
    "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item", "price": {"id": "price_%s", "object": "price"}}]}}}}`,
		s.event, now.Unix()+int64(step), c, c, monthStart(now).Unix(), to)
	payload, sig := signedEvent(s.t, "whsec_levy", body, now)
	p := s.replicas[s.rng.Intn(len(s.replicas))]
	if code := postWebhook(s.t, p, payload, sig); code != 200 {
		s.t.Fatalf("webhook: %d", code)
	}
	s.plans[c] = to
	for _, client := range s.clients {
		waitFor(s.t, 5*time.Second, func() bool {
			o := check(s.t, client, s.keys[c], "/v1/items")
			plan := o.UpstreamHeaders.Get("x-consumer-plan")
			s.units[c][plan]++ // admitted, never logged
			return plan == to
		})
	}
}

// deliverLate waits until every window was exported, then delivers the
// logs held back: their settlement corrects windows already billed.
func (s *sim) deliverLate() {
	if len(s.late) == 0 {
		return
	}
	for _, p := range s.replicas {
		waitFor(s.t, 30*time.Second, func() bool { return strings.Contains(p.metrics(s.t), "levy_usage_export_lag_seconds 0") })
	}
	for _, in := range s.late {
		s.log(in)
	}
	s.late = nil
	for _, l := range s.loggers {
		if err := l.Flush(context.Background()); err != nil {
			s.t.Fatal(err)
		}
	}
}

// want is each consumer's bill: per plan its requests were admitted
// under, the units beyond the plan's included ones.
func (s *sim) want() map[string]int64 {
	out := map[string]int64{}
	for c, byPlan := range s.units {
		for plan, units := range byPlan {
			if inc, billed := included[plan]; billed && units > inc {
				out[c] += units - inc
			}
		}
	}
	return out
}

func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}
