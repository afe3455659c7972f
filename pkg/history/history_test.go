package history_test

import (
	"context"
	"sync"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/envoyclient/envoytest"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/server/servertest"
	"github.com/levyhq/levy/pkg/usage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testConfig = `
dev_mode: true
plans:
  free:
    model: freemium
    rate: {requests: 10, per: minute, burst: 3}
    quota: {requests: 5, period: month}
  pro:
    model: tiered
    rate: {requests: 100, per: 1s, burst: 100}
    quota: {requests: 100000, period: month}
    costs: {/v1/search: 5}
  payg:
    model: payg
    rate: {requests: 100, per: 1s, burst: 100}
    quota: {requests: 3, period: month, enforcement: soft, cap: 6}
consumers:
  - {id: free-co, plan: free, keys: [{id: free-key, key: KEY_FREE}]}
  - {id: pro-co, plan: pro, keys: [{id: pro-key, key: KEY_PRO}, {id: pro-key-2, key: KEY_PRO2}]}
  - {id: payg-co, plan: payg, keys: [{id: payg-key, key: KEY_PAYG}]}
`

// stores is one store levy runs on: its limiter and ledger, and a
// history store on it (a new one each call: a replica, or a restart).
type stores struct {
	lim       limiter.Store
	ledger    usage.Ledger
	consumers history.ConsumerLister
	history   func() history.Store
	// restart closes and opens the store again (the local file), or
	// nothing (Redis keeps it).
	restart func(t *testing.T)
}

var ret = history.DefaultRetention

func storeKinds(t *testing.T) map[string]func(t *testing.T, clock *limitertest.Clock) *stores {
	return map[string]func(t *testing.T, clock *limitertest.Clock) *stores{
		"local": func(t *testing.T, clock *limitertest.Clock) *stores {
			dir := t.TempDir()
			s := &stores{}
			var db *localstore.DB
			var lim *limiter.Local
			open := func(t *testing.T) {
				var err error
				if db, err = localstore.Open(dir); err != nil {
					t.Fatal(err)
				}
				if lim, err = limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now, Counters: db}); err != nil {
					t.Fatal(err)
				}
				s.lim, s.ledger, s.consumers = lim, lim, lim
			}
			open(t)
			t.Cleanup(func() { lim.Close(); db.Close() })
			s.history = func() history.Store { return db.History(ret) }
			s.restart = func(t *testing.T) {
				if err := lim.Close(); err != nil {
					t.Fatal(err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				open(t)
			}
			return s
		},
		"redis": func(t *testing.T, clock *limitertest.Clock) *stores {
			return onRedis(t, clock, redistest.Start(t).Client(), false)
		},
		"cluster": func(t *testing.T, clock *limitertest.Clock) *stores {
			return onRedis(t, clock, redistest.StartCluster(t).Client(t), true)
		},
	}
}

func onRedis(t *testing.T, clock *limitertest.Clock, client redis.UniversalClient, cluster bool) *stores {
	lim := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Cluster: cluster, Clock: clock.Now, Timeout: 5 * time.Second})
	ledger := limiter.NewRedisLedger(client, time.Minute)
	return &stores{lim: lim, ledger: ledger, consumers: ledger,
		history: func() history.Store {
			h := redisstore.NewHistory(client, ret)
			h.Clock = clock.Now
			return h
		},
		restart: func(*testing.T) {}}
}

// env is levy's decision and settlement path on one store: the ext_authz
// server with the history's recorder, and the access-log receiver whose
// ledger touches the history, both over gRPC as Envoy calls them.
type env struct {
	clock  *limitertest.Clock
	st     *stores
	keeper *history.Keeper
	snap   *authz.Snapshot
	authz  *envoyclient.AuthzClient
	als    *usage.Receiver
	alsCon *grpc.ClientConn
	keys   map[string]string
}

func newEnv(t *testing.T, kind func(*testing.T, *limitertest.Clock) *stores) *env {
	e := &env{clock: limitertest.NewClock(limitertest.Start)}
	e.st = kind(t, e.clock)
	var text string
	text, e.keys = servertest.WithKeys(t, testConfig)
	e.snap = servertest.Snapshot(t, text)
	e.keeper = e.newKeeper()
	srv := authz.New(authz.Config{Snapshot: e.snap, Limiter: e.st.lim, Log: zaptest.NewLogger(t), Clock: e.clock.Now,
		History: e.keeper.Recorder()})
	conn := envoytest.Loopback(t, func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, srv) })
	e.authz = envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: time.Minute})
	e.als = usage.NewReceiver(usage.ReceiverConfig{Ledger: history.TrackLedger(e.st.ledger, e.keeper),
		Catalog: func() *plan.Catalog { return e.snap.Catalog }, Clock: e.clock.Now, Log: zaptest.NewLogger(t)})
	t.Cleanup(func() { e.als.Close(context.Background()) })
	e.alsCon = envoytest.Loopback(t, func(g *grpc.Server) { accesslogv3.RegisterAccessLogServiceServer(g, e.als) })
	return e
}

func (e *env) newKeeper() *history.Keeper {
	return history.New(history.Config{Store: e.st.history(), Ledger: e.st.ledger, Consumers: e.st.consumers,
		Retention: ret, Clock: e.clock.Now})
}

func (e *env) reader() *history.Reader {
	return &history.Reader{Store: e.st.history(), Retention: ret, Clock: e.clock.Now}
}

// call sends one Check with key to path; status is the upstream's answer
// for the access log (0: not logged).
type call struct {
	key, path string
	status    int
}

func (e *env) traffic(t *testing.T, calls []call) (allowed, denied int) {
	t.Helper()
	logger := envoyclient.NewAccessLogger(e.alsCon, envoyclient.AccessLogConfig{LogName: "levy-billing", NodeID: "gw", Cluster: "ingress"})
	for _, c := range calls {
		req := &envoyclient.Request{Path: c.path, StartTime: e.clock.Now(), Headers: []envoyclient.Header{{Name: "x-api-key", Value: e.keys[c.key]}}}
		o, err := e.authz.Check(context.Background(), req)
		if err != nil || o.RPCError != nil {
			t.Fatalf("Check: %v %v", err, o.RPCError)
		}
		if !o.Allowed {
			denied++
			continue
		}
		allowed++
		if c.status != 0 {
			logger.Log(envoyclient.HTTPLogEntry(envoyclient.LogInput{Request: req, Authz: o, UpstreamStatus: c.status}))
		}
	}
	if err := logger.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := logger.Close(); err != nil {
		t.Fatal(err)
	}
	return allowed, denied
}

// refunded is the ledger's refunded units of consumer this month.
func (e *env) ledgerRefunded(t *testing.T, consumer string) int64 {
	t.Helper()
	p := plan.PeriodAt(e.clock.Now(), plan.Month, time.Time{})
	ws, err := e.st.ledger.Windows(context.Background(), consumer, p.Start, p.End)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, w := range ws {
		n += w.Refunded
	}
	return n
}

// report is what levy usage shows for consumer's current period.
func (e *env) report(t *testing.T, consumer string) billing.UsageReport {
	t.Helper()
	c, ok := e.snap.Directory.Consumer(consumer)
	if !ok {
		t.Fatalf("no consumer %s", consumer)
	}
	p, _ := e.snap.Catalog.Get(c.Plan)
	r, err := billing.Report(context.Background(), e.st.lim, e.st.ledger, c, p, e.snap.Catalog)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (e *env) pass(t *testing.T, k *history.Keeper) history.RollUpStats {
	t.Helper()
	if err := k.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := k.RollUp(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// periodSeries is consumer's series over the report's period.
func (e *env) periodSeries(t *testing.T, consumer string, step history.Step, key string) *history.Series {
	t.Helper()
	r := e.report(t, consumer)
	s, err := e.reader().Series(context.Background(), consumer, history.Query{From: r.PeriodStart, To: r.PeriodEnd, Step: step, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Traffic through ext_authz and settlement through the access-log
// receiver, rolled up: over the billing period the series' billed units
// are what levy usage reports (hourly and daily alike), refunds are the
// ledger's, denials are counted by reason and each key's decisions per
// key; two replicas rolling up at once do not double anything, and the
// history outlives a restart.
func TestSeriesAgreesWithTheUsageReport(t *testing.T) {
	for name, kind := range storeKinds(t) {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, kind)
			var calls []call
			for i := range 12 {
				status := 200
				if i%4 == 0 {
					status = 503 // refunded
				}
				key := "KEY_PRO"
				if i%3 == 0 {
					key = "KEY_PRO2"
				}
				calls = append(calls, call{key, "/v1/search", status}, call{key, "/v1/items", 200})
			}
			// free: a burst of 3, then a rate denial.
			calls = append(calls, call{"KEY_FREE", "/", 200}, call{"KEY_FREE", "/", 200}, call{"KEY_FREE", "/", 200}, call{"KEY_FREE", "/", 0})
			// payg: a cap of 6, then a spend-cap denial.
			for range 7 {
				calls = append(calls, call{"KEY_PAYG", "/", 200})
			}
			allowed, denied := e.traffic(t, calls)
			if allowed != 24+3+6 || denied != 2 {
				t.Fatalf("%d allowed, %d denied", allowed, denied)
			}
			// A minute on, free has its tokens back and 2 of its quota of 5
			// left; the third is a quota denial. An hour on, more pro.
			e.clock.Advance(time.Minute)
			if a, d := e.traffic(t, []call{{"KEY_FREE", "/", 200}, {"KEY_FREE", "/", 200}, {"KEY_FREE", "/", 0}}); a != 2 || d != 1 {
				t.Fatalf("free: %d allowed, %d denied", a, d)
			}
			e.pass(t, e.keeper) // the first hour, before the next starts
			e.clock.Advance(time.Hour)
			if a, _ := e.traffic(t, []call{{"KEY_PRO", "/v1/search", 500}, {"KEY_PRO", "/v1/items", 200}}); a != 2 {
				t.Fatalf("pro, an hour on: %d allowed", a)
			}
			// 3 of 12 searches and the later one answered 5xx: 4*5 units.
			await.Until(t, 10*time.Second, func() bool {
				e.als.Flush(context.Background())
				return e.ledgerRefunded(t, "pro-co") == 20
			}, "the access logs' refunds in the ledger")
			e.pass(t, e.keeper)

			for _, consumer := range []string{"pro-co", "free-co", "payg-co"} {
				rep := e.report(t, consumer)
				refunded := e.ledgerRefunded(t, consumer)
				for _, step := range []history.Step{history.Hour, history.Day} {
					s := e.periodSeries(t, consumer, step, "")
					if s.Total.Billed != rep.Settled || s.Total.Refunded != refunded {
						t.Errorf("%s by %s: billed %d refunded %d; levy usage says settled %d, the ledger refunded %d",
							consumer, step, s.Total.Billed, s.Total.Refunded, rep.Settled, refunded)
					}
				}
			}
			// pro: 13 searches (5) and 13 items (1), 4 searches refunded.
			if rep := e.report(t, "pro-co"); rep.Settled != 13*5+13-20 {
				t.Errorf("pro settled %d, want %d", rep.Settled, 13*5+13-20)
			}
			hours := e.periodSeries(t, "pro-co", history.Hour, "").Points
			var nonzero []history.Point
			for _, p := range hours {
				if p.Billed != 0 || p.Refunded != 0 {
					nonzero = append(nonzero, p)
				}
			}
			if len(nonzero) != 2 || nonzero[1].Billed != 1 || nonzero[1].Refunded != 5 || !nonzero[1].Start.Equal(nonzero[0].Start.Add(time.Hour)) {
				t.Errorf("pro's hours with usage: %+v", nonzero)
			}

			free := e.periodSeries(t, "free-co", history.Day, history.AllKeys)
			if want := (history.Denied{Rate: 1, Quota: 1}); free.Total.Denied != want {
				t.Errorf("free denied %+v, want %+v", free.Total.Denied, want)
			}
			if want := []history.KeyTotal{{Key: "free-key", KeyCounts: history.KeyCounts{Allowed: 5, Denied: 2}}}; !equalKeys(free.Keys, want) {
				t.Errorf("free keys %+v, want %+v", free.Keys, want)
			}
			if got := e.periodSeries(t, "payg-co", history.Hour, "").Total.Denied; got != (history.Denied{Cap: 1}) {
				t.Errorf("payg denied %+v, want one for the cap", got)
			}
			pro := e.periodSeries(t, "pro-co", history.Hour, history.AllKeys)
			wantPro := []history.KeyTotal{{Key: "pro-key", KeyCounts: history.KeyCounts{Allowed: 18}}, {Key: "pro-key-2", KeyCounts: history.KeyCounts{Allowed: 8}}}
			if !equalKeys(pro.Keys, wantPro) {
				t.Errorf("pro keys %+v, want %+v", pro.Keys, wantPro)
			}

			// Two replicas roll up the same hours at once: set, not added.
			before := e.periodSeries(t, "pro-co", history.Hour, "")
			k1, k2 := e.newKeeper(), e.newKeeper()
			for _, k := range []*history.Keeper{k1, k2} {
				for _, p := range before.Points {
					k.Touch("pro-co", p.Start)
				}
			}
			var wg sync.WaitGroup
			for _, k := range []*history.Keeper{k1, k2, e.keeper} {
				wg.Go(func() {
					if _, err := k.RollUp(context.Background()); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			if after := e.periodSeries(t, "pro-co", history.Hour, ""); after.Total != before.Total {
				t.Errorf("after concurrent roll-ups %+v, before %+v", after.Total, before.Total)
			}

			// A restart keeps the history.
			e.st.restart(t)
			if after := e.periodSeries(t, "pro-co", history.Day, history.AllKeys); after.Total != before.Total || !equalKeys(after.Keys, wantPro) {
				t.Errorf("after a restart %+v %+v, before %+v", after.Total, after.Keys, before.Total)
			}
		})
	}
}

func equalKeys(a, b []history.KeyTotal) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
