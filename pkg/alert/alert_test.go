package alert_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

const secret = "alert-secret"

// receiver is the operator's endpoint: it verifies each delivery's
// signature and answers fail's status while fail is set.
type receiver struct {
	t     testing.TB
	srv   *httptest.Server
	clock func() time.Time
	fail  atomic.Int32
	mu    sync.Mutex
	got   []alert.Event // accepted (2xx) deliveries
	tries int           // every delivery, failed ones too
}

func newReceiver(t testing.TB, clock func() time.Time) *receiver {
	r := &receiver{t: t, clock: clock}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if err := alert.Verify(body, req.Header.Get(alert.SignatureHeader), []byte(secret), r.clock(), 0); err != nil {
			r.t.Errorf("delivery does not verify: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var ev alert.Event
		if err := json.Unmarshal(body, &ev); err != nil || ev.ID != req.Header.Get(alert.EventIDHeader) {
			r.t.Errorf("delivery body %s (%v), event id header %q", body, err, req.Header.Get(alert.EventIDHeader))
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		r.tries++
		if s := r.fail.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		r.got = append(r.got, ev)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) events() []alert.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]alert.Event(nil), r.got...)
}

// usage is a limiter that reports a settable count of used units.
type usage struct {
	mu   sync.Mutex
	used map[string]int64 // by quota key
	now  func() time.Time
}

func (u *usage) set(c string, n int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.used[c] = n
}

func (u *usage) Peek(_ context.Context, limits []limiter.Limit) (limiter.Reading, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := limiter.Reading{Now: u.now()}
	for _, l := range limits {
		r.Statuses = append(r.Statuses, limiter.Status{Used: u.used[l.Key]})
	}
	return r, nil
}

// fixture is a catalog with a plan of 1000 requests a month alerting at
// 80% and 100%, one consumer, a settable clock and usage.
type fixture struct {
	now      atomic.Int64
	cat      *plan.Catalog
	consumer *apikey.Consumer
	usage    *usage
	recv     *receiver
}

func newFixture(t testing.TB) *fixture {
	f := &fixture{consumer: &apikey.Consumer{ID: "acme", Plan: "pro"}}
	f.now.Store(time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC).UnixNano())
	cat, err := plan.NewCatalog(&plan.Plan{Name: "pro", Model: plan.Tiered, Alerts: []int{80, 100},
		Quota: &plan.Quota{Requests: 1000, Period: plan.Month, Enforcement: plan.Hard}})
	if err != nil {
		t.Fatal(err)
	}
	f.cat = cat
	f.usage = &usage{used: map[string]int64{}, now: f.clock}
	f.recv = newReceiver(t, f.clock)
	return f
}

func (f *fixture) clock() time.Time        { return time.Unix(0, f.now.Load()).UTC() }
func (f *fixture) advance(d time.Duration) { f.now.Add(int64(d)) }
func (f *fixture) use(n int64)             { f.usage.set("levy:1:{c:acme}:units", n) }
func (f *fixture) alerter(t *testing.T, store alert.Store) (*alert.Alerter, *prometheus.Registry) {
	return f.alerterWith(t, store, nil)
}

// alerterWith is alerter with its config changed by change.
func (f *fixture) alerterWith(t testing.TB, store alert.Store, change func(*alert.Config)) (*alert.Alerter, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	cfg := alert.Config{
		Store: store,
		Consumers: func(ctx context.Context, fn func(*apikey.Consumer) error) error {
			return fn(f.consumer)
		},
		Catalog: func() *plan.Catalog { return f.cat },
		Usage:   f.usage, URL: f.recv.srv.URL, Secret: []byte(secret),
		Retry:      alert.Retry{Initial: time.Minute, Max: 10 * time.Minute, MaxAge: 24 * time.Hour},
		Registerer: reg, Log: zaptest.NewLogger(t), Clock: f.clock,
	}
	if change != nil {
		change(&cfg)
	}
	a, err := alert.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a, reg
}

func scan(t *testing.T, a *alert.Alerter) {
	t.Helper()
	if err := a.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func thresholds(evs []alert.Event) []int {
	var out []int
	for _, e := range evs {
		out = append(out, e.Threshold)
	}
	return out
}

func openLocal(t *testing.T, path string) *localstore.DB {
	db, err := localstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// Usage crossing 80% sends one alert, crossing 100% one more; scans that
// find nothing new send nothing; next month starts over with new ids.
func TestAlertFiresOncePerThresholdAndPeriod(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	f := newFixture(t)
	db := openLocal(t, t.TempDir())
	defer db.Close()
	a, reg := f.alerter(t, db.Alerts(f.clock))
	ctx := context.Background()

	f.use(799)
	scan(t, a)
	a.Deliver(ctx)
	if got := f.recv.events(); len(got) != 0 {
		t.Fatalf("at 79.9%%: alerts %v", thresholds(got))
	}
	f.use(800)
	scan(t, a)
	scan(t, a)
	a.Deliver(ctx)
	a.Deliver(ctx)
	got := f.recv.events()
	if len(got) != 1 || got[0].Threshold != 80 || got[0].Used != 800 || got[0].Limit != 1000 || got[0].LimitName != "quota" {
		t.Fatalf("at 80%%: %+v", got)
	}
	if want := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC); !got[0].PeriodStart.Equal(want) {
		t.Errorf("period start %v, want %v", got[0].PeriodStart, want)
	}
	f.use(1200)
	scan(t, a)
	a.Deliver(ctx)
	if th := thresholds(f.recv.events()); len(th) != 2 || th[1] != 100 {
		t.Fatalf("at 120%%: thresholds %v, want [80 100]", th)
	}
	first := f.recv.events()

	f.advance(30 * 24 * time.Hour) // April
	f.use(900)
	scan(t, a)
	a.Deliver(ctx)
	got = f.recv.events()
	if len(got) != 3 || got[2].Threshold != 80 || got[2].ID == first[0].ID {
		t.Fatalf("in a new period: %+v", got)
	}
	if v := counter(t, reg, "80", alert.OutcomeDelivered); v != 2 {
		t.Errorf("levy_usage_alerts_total{threshold=80,outcome=delivered} = %v, want 2", v)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, threshold, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "levy_usage_alerts_total" {
			continue
		}
		for _, m := range mf.Metric {
			l := map[string]string{}
			for _, p := range m.Label {
				l[p.GetName()] = p.GetValue()
			}
			if l["threshold"] == threshold && l["outcome"] == outcome {
				return m.Counter.GetValue()
			}
		}
	}
	t.Fatalf("no levy_usage_alerts_total{threshold=%q,outcome=%q}", threshold, outcome)
	return 0
}

// A 500 keeps the alert queued and retried after the backoff; a levy that
// stops meanwhile leaves it in the data file, and the next one delivers
// it, once.
func TestAlertIsRetriedAfterA500AndAfterARestart(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	db := openLocal(t, dir)
	a, reg := f.alerter(t, db.Alerts(f.clock))
	ctx := context.Background()

	f.recv.fail.Store(500)
	f.use(850)
	scan(t, a)
	a.Deliver(ctx)
	a.Deliver(ctx) // not due again before the backoff
	if f.recv.tries != 1 || len(f.recv.events()) != 0 {
		t.Fatalf("after a 500: %d tries, %d accepted", f.recv.tries, len(f.recv.events()))
	}
	if v := counter(t, reg, "80", alert.OutcomeFailed); v != 1 {
		t.Errorf("failed = %v, want 1", v)
	}
	f.advance(time.Minute)
	a.Deliver(ctx)
	if f.recv.tries != 2 {
		t.Fatalf("after the backoff: %d tries, want 2", f.recv.tries)
	}
	db.Close() // levy stops with the alert undelivered

	f.recv.fail.Store(0)
	db = openLocal(t, dir)
	defer db.Close()
	b, _ := f.alerter(t, db.Alerts(f.clock))
	scan(t, b) // finds 80% again: already claimed
	b.Deliver(ctx)
	if len(f.recv.events()) != 0 {
		t.Fatal("delivered before the second backoff (2m) was due")
	}
	f.advance(2 * time.Minute)
	b.Deliver(ctx)
	b.Deliver(ctx)
	if got := f.recv.events(); len(got) != 1 || got[0].Threshold != 80 {
		t.Fatalf("after the restart: %+v", got)
	}
}

// Two replicas sharing one Redis scan and deliver at once: each threshold
// reaches the receiver once; a 500 is retried by whichever takes it.
func TestAlertFiresOnceAcrossReplicasOnRedis(t *testing.T) {
	f := newFixture(t)
	rdb := redistest.Start(t)
	client := rdb.Client()
	defer client.Close()
	store := redisstore.Alerts{Client: client}
	a, _ := f.alerter(t, store)
	b, _ := f.alerter(t, store)
	ctx := context.Background()

	f.recv.fail.Store(500)
	f.use(1000)
	var wg sync.WaitGroup
	for _, x := range []*alert.Alerter{a, b, a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); scan(t, x); x.Deliver(ctx) }()
	}
	wg.Wait()
	if f.recv.tries != 2 {
		t.Fatalf("%d delivery attempts, want 2 (80%% and 100%%, once each)", f.recv.tries)
	}
	if n, err := store.Queued(ctx); err != nil || n != 2 {
		t.Fatalf("queued %d (%v), want 2", n, err)
	}
	f.recv.fail.Store(0)
	f.advance(time.Minute)
	for _, x := range []*alert.Alerter{a, b, a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); x.Deliver(ctx) }()
	}
	wg.Wait()
	got := f.recv.events()
	if th := thresholds(got); len(th) != 2 || th[0]+th[1] != 180 || got[0].ID == got[1].ID {
		t.Fatalf("accepted %+v, want 80%% and 100%% once each", got)
	}
	if n, err := store.Queued(ctx); err != nil || n != 0 {
		t.Fatalf("queued %d (%v) after delivery, want 0", n, err)
	}
}

// The event id is the same for the same consumer, threshold and period
// and differs when any of them does.
func TestEventIDIsStable(t *testing.T) {
	march := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	id := alert.EventID("acme", 80, march)
	for _, other := range []string{alert.EventID("acme", 100, march), alert.EventID("acm", 80, march), alert.EventID("acme", 80, march.AddDate(0, 1, 0))} {
		if other == id {
			t.Errorf("%s shared by two alerts", id)
		}
	}
	if alert.EventID("acme", 80, march) != id {
		t.Error("id not stable")
	}
}

// A receiver verifies as documented: HMAC-SHA256 over "<t>.<body>".
func TestSignatureVerifiesAndRefusesTampering(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"id":"ua_1"}`)
	h := alert.Sign([]byte(secret), body, now)
	tests := []struct {
		name   string
		body   []byte
		header string
		secret string
		at     time.Time
		ok     bool
	}{
		{"as signed", body, h, secret, now, true},
		{"body changed", []byte(`{"id":"ua_2"}`), h, secret, now, false},
		{"other secret", body, h, "nope", now, false},
		{"replayed later", body, h, secret, now.Add(10 * time.Minute), false},
		{"no header", body, "", secret, now, false},
		{"garbage", body, "t=x,v1=y", secret, now, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := alert.Verify(tt.body, tt.header, []byte(tt.secret), tt.at, 0)
			if (err == nil) != tt.ok {
				t.Errorf("Verify = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
