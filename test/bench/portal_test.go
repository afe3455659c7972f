package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/server/servertest"
)

// BenchmarkCheckPortal measures Check on one whole levy (local store,
// its history keeper flushing every second) idle and in use, while
// signed-in portal sessions load its pages, in alternating slices of one
// run, so that the machine's other load meets both alike. Read x-idle,
// in-use's checks/s over idle's; see the package doc.
func BenchmarkCheckPortal(b *testing.B) { benchCheckPortal(b, "local") }

// BenchmarkCheckPortalRedis is BenchmarkCheckPortal with levy on a
// redis-server of its own.
func BenchmarkCheckPortalRedis(b *testing.B) { benchCheckPortal(b, "redis") }

// portalRounds is how many slices of calls idle and in-use each get,
// alternately.
const portalRounds = 10

func benchCheckPortal(b *testing.B, store string) {
	p := startPortalLevy(b, store, nil)
	n := max(b.N/(2*portalRounds), callers)
	var sum [2]result // idle, in-use
	var pages portalStats
	b.ReportAllocs()
	b.ResetTimer()
	for round := range portalRounds {
		// Whichever runs first in a round takes turns, as in versus.
		for k := range 2 {
			inUse := (round+k)%2 == 1
			var load *portalLoad
			if inUse {
				load = p.load()
			}
			res, err := run(p.levy, p.req, callers, n)
			if err != nil {
				b.Fatal(err)
			}
			if inUse {
				// The sessions finish the pages they are loading before
				// the next idle slice starts.
				st, err := load.stop()
				if err != nil {
					b.Fatal(err)
				}
				pages.add(st)
				sum[1].add(res)
			} else {
				sum[0].add(res)
			}
		}
	}
	b.StopTimer()
	rate := func(r result) float64 { return float64(r.calls) / r.elapsed.Seconds() }
	for i, name := range []string{"idle", "in-use"} {
		b.ReportMetric(rate(sum[i]), name+"-checks/s")
		b.ReportMetric(sum[i].hist.quantile(0.50).Seconds()*1e6, name+"-p50-us")
		b.ReportMetric(sum[i].hist.quantile(0.99).Seconds()*1e6, name+"-p99-us")
		if sum[i].cpu >= 0 {
			b.ReportMetric(sum[i].cpu.Seconds()*1e6/float64(sum[i].calls), name+"-cpu-us/check")
		}
	}
	pages.report(b)
	b.ReportMetric(rate(sum[1])/rate(sum[0]), "x-idle")
}

// TestPortalHarnessAllows runs the harness briefly with the portal in
// use, levy on each store: every Check is allowed and counted, every
// page the sessions load answers 200, and the history keeper flushes the
// checks' counts, which the portal's series then shows.
func TestPortalHarnessAllows(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) { testPortalHarnessAllows(t, store) })
	}
}

func testPortalHarnessAllows(t *testing.T, store string) {
	// Under -race on a loaded machine the pages (the 30-day chart took
	// about 60ms before it was written into a buffer) can hold the CPUs
	// long enough for a 500ms health ping of Redis to miss, and levy then
	// denies with a 503, as it should: with on_store_error: allow it
	// decides those checks locally instead, which is what this test
	// needs (every check allowed and counted).
	p := startPortalLevy(t, store, func(c *config.Config) { c.Store.OnStoreError = "allow" })
	load := p.load()
	const n = 2000
	res, err := run(p.levy, p.req, callers, n)
	if err != nil {
		t.Fatal(err)
	}
	if res.calls != n || res.hist.count() != n {
		t.Fatalf("%d calls, %d latencies recorded, want %d", res.calls, res.hist.count(), n)
	}
	await.Until(t, 20*time.Second, func() bool { return load.rounds() >= 1 }, "every session to load every page")
	st, err := load.stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pages loaded beside %d checks", st.pages, n)
	// The keeper flushed this run's checks: the series counts them for
	// the key, beside the seeded hours.
	s := p.sessions[0]
	await.NoError(t, 10*time.Second, func() error {
		body, err := s.get(context.Background(), "/portal/usage/series?step=hour&key=bench-key&from="+
			url.QueryEscape(history.Hour.Floor(time.Now()).Format(time.RFC3339)))
		if err != nil {
			return err
		}
		var sr history.Series
		if err := json.Unmarshal(body, &sr); err != nil {
			return err
		}
		for _, k := range sr.Keys {
			if k.Key == "bench-key" && k.Allowed >= n {
				return nil
			}
		}
		return fmt.Errorf("this hour's keys: %+v, want bench-key with at least %d allowed", sr.Keys, n)
	}, "the keeper to flush the checks' counts")
}

// portalConfig is levy's config for the portal benchmark: benchConfig's
// consumer and plan, the portal on, and the history keeper flushing every
// second (its shortest; the default is every 15s).
const portalConfig = `
dev_mode: true
keys:
  headers: [x-api-key]
  prefix: levy
plans:
  bench:
    model: tiered
    rate: {requests: 1000000000000, per: 1s}
    quota: {requests: 1000000000000, period: month}
consumers:
  - id: bench
    plan: bench
    keys:
      - id: bench-key
        key: %s
portal:
  public_url: http://127.0.0.1
  plans:
    - {plan: bench, price: "$0"}
usage:
  history: {every: 1s}
`

// portalSessions is how many people are signed in to the portal.
const portalSessions = 4

// envPortalPause is how long each session waits between two pages (a
// Go duration); 0 loads them back to back.
const envPortalPause = "LEVY_BENCH_PORTAL_PAUSE"

// defaultPortalPause is the sessions' pause without LEVY_BENCH_PORTAL_PAUSE:
// up to 10 pages a second each, far more than a person clicking.
const defaultPortalPause = 100 * time.Millisecond

// portalPages are what each session loads in turn: the overview, the
// usage page (this period by day, and the last 30 days by hour: its
// largest chart), the usage series the page's CSV link offers, as JSON,
// and the keys page with its per-key counts.
var portalPages = []string{
	"/portal/",
	"/portal/usage",
	"/portal/usage?range=30d&step=hour",
	"/portal/usage/series?step=hour",
	"/portal/keys",
}

// portalLevy is a whole levy serving in this process, the Check callers'
// target, and portal sessions signed in to it.
type portalLevy struct {
	levy     *target
	req      []proto.Message
	sessions []*portalSession
	// pause is how long a session waits between two pages.
	pause time.Duration
	// next is the page of portalPages each session loads next, counting
	// on (only its session's goroutine touches it, one load at a time).
	next []int
}

// startPortalLevy starts levy as levy serve does (servertest), on store
// (local or redis), with 30 days of seeded usage history for its
// consumer, dials the Check callers' connections and signs the sessions
// in through admin-minted links. more, when not nil, sets what else the
// caller needs of the config, last.
func startPortalLevy(tb testing.TB, store string, more func(*config.Config)) *portalLevy {
	tb.Helper()
	key, err := apikey.Generate("levy")
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	path := filepath.Join(dir, "levy.yaml")
	if err := os.WriteFile(path, fmt.Appendf(nil, portalConfig, key), 0o600); err != nil {
		tb.Fatal(err)
	}
	const token = "bench-admin-token"
	tb.Setenv("LEVY_ADMIN_TOKEN", token)
	data := filepath.Join(dir, "data")
	flags := func(c *config.Config) { c.Store.DataDir = data }
	now := time.Now()
	switch store {
	case "local":
		db, err := localstore.Open(data)
		if err != nil {
			tb.Fatal(err)
		}
		seedHistory(tb, db.History(history.DefaultRetention), now)
		if err := db.Close(); err != nil {
			tb.Fatal(err)
		}
	case "redis":
		srv := redistest.Start(tb)
		seedHistory(tb, redisstore.NewHistory(srv.Client(), history.DefaultRetention), now)
		local := flags
		flags = func(c *config.Config) {
			local(c)
			c.Store.Type, c.Store.Redis.Addr = "redis", srv.Addr
			c.Store.Timeout = config.Duration(redisTimeout)
		}
	}
	if more != nil {
		set := flags
		flags = func(c *config.Config) { set(c); more(c) }
	}
	l := servertest.Start(tb, path, servertest.Options{Flags: flags})
	base := "http://" + l.HTTPAddr
	await.Until(tb, 10*time.Second, func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "levy's /readyz to answer 200")
	reqs := []request{{msgs: []proto.Message{checkRequest(tb, key)}}}
	t := &target{name: "levy", addr: l.GRPCAddr, method: checkMethod, check: (*wireResponse).allowed,
		// levy runs in this process: the process's CPU time is its and
		// the callers', as for a target served here.
		serverCPU: func() (time.Duration, error) { return 0, nil }}
	dial(tb, t, reqs)
	if os.Getenv(envCaller) == "h2" {
		t = viaH2(tb, t, reqs)
	}
	p := &portalLevy{levy: t, req: reqs[0].msgs, pause: defaultPortalPause}
	if v := os.Getenv(envPortalPause); v != "" {
		if p.pause, err = time.ParseDuration(v); err != nil || p.pause < 0 {
			tb.Fatalf("%s=%q: want a duration such as 100ms, or 0", envPortalPause, v)
		}
	}
	for i := range portalSessions {
		p.sessions = append(p.sessions, signIn(tb, base, token, "bench"))
		p.next = append(p.next, i) // each starts on a different page
	}
	return p
}

// seedHistory gives consumer bench and its key 30 days of hours and
// days up to now, as a month of traffic rolled up leaves them, so that
// the usage pages draw and read a month, not an empty chart.
func seedHistory(tb testing.TB, st history.Store, now time.Time) {
	tb.Helper()
	var us []history.Usage
	var cs []history.Counts
	end := history.Hour.Floor(now)
	days := map[time.Time]int64{}
	for h := end.Add(-30 * 24 * time.Hour); h.Before(end); h = h.Add(time.Hour) {
		billed := 1000 + h.Unix()/3600%500
		us = append(us, history.Usage{Consumer: "bench", Step: history.Hour, Start: h, Billed: billed, Refunded: billed / 50})
		days[history.Day.Floor(h)] += billed
		cs = append(cs, history.Counts{Consumer: "bench", Key: "bench-key", Hour: h, Allowed: billed, Denied: history.Denied{Rate: billed / 100}})
	}
	for d, billed := range days {
		us = append(us, history.Usage{Consumer: "bench", Step: history.Day, Start: d, Billed: billed, Refunded: billed / 50})
	}
	ctx := context.Background()
	if err := st.SetUsage(ctx, us); err != nil {
		tb.Fatal(err)
	}
	if err := st.AddCounts(ctx, cs); err != nil {
		tb.Fatal(err)
	}
}

// portalSession is a browser signed in to the portal: its cookie jar
// holds the session cookie.
type portalSession struct {
	c    *http.Client
	base string
}

// signIn signs a browser in to the portal at base as the operator's
// customer does: the admin API mints a link for consumer, the browser
// opens it and confirms (POST), and levy answers with the session cookie
// and a redirect to the overview.
func signIn(tb testing.TB, base, adminToken, consumer string) *portalSession {
	tb.Helper()
	req, err := http.NewRequest("POST", base+"/v1/consumers/"+consumer+"/portal-links", strings.NewReader("{}"))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	var link struct{ URL string }
	err = json.NewDecoder(resp.Body).Decode(&link)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || err != nil {
		tb.Fatalf("mint a portal link: %d %v", resp.StatusCode, err)
	}
	u, err := url.Parse(link.URL)
	if err != nil {
		tb.Fatal(err)
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		tb.Fatal(err)
	}
	// A browser of its own: its cookies and its connections.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tb.Cleanup(tr.CloseIdleConnections)
	s := &portalSession{base: base, c: &http.Client{Transport: tr, Jar: jar, Timeout: time.Minute,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if _, err := s.get(context.Background(), u.Path); err != nil {
		tb.Fatalf("open the link: %v", err)
	}
	resp, err = s.c.PostForm(base+u.Path, url.Values{})
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/portal/" {
		tb.Fatalf("follow the link: %d to %q, want 303 to /portal/", resp.StatusCode, resp.Header.Get("Location"))
	}
	if _, err := s.get(context.Background(), "/portal/"); err != nil {
		tb.Fatalf("signed in: %v", err)
	}
	return s
}

// get loads path and returns its body; an answer other than 200 is an
// error.
func (s *portalSession) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", s.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %.300s", path, resp.StatusCode, body)
	}
	return body, nil
}

// portalLoad is the sessions loading pages until stop.
type portalLoad struct {
	start time.Time
	pages atomic.Int64
	// each is the pages each session has loaded.
	each []atomic.Int64
	// took is the pages' wall time, summed, in nanoseconds.
	took   atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

// load starts every session loading portalPages in turn, p.pause apart,
// until stop. Each session starts on a different page, and a later load
// goes on where the last one stopped.
func (p *portalLevy) load() *portalLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &portalLoad{start: time.Now(), cancel: cancel, each: make([]atomic.Int64, len(p.sessions))}
	for i, s := range p.sessions {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			// Sessions start apart and on different pages, not in step.
			pause := time.NewTimer(p.pause * time.Duration(i) / time.Duration(len(p.sessions)))
			defer pause.Stop()
			for ; ; p.next[i]++ {
				select {
				case <-ctx.Done():
					return
				case <-pause.C:
				}
				// stop waits for this page rather than cancel it, so
				// that its CPU is spent before stop returns.
				t0 := time.Now()
				if _, err := s.get(context.Background(), portalPages[p.next[i]%len(portalPages)]); err != nil {
					l.fail(err)
					return
				}
				l.took.Add(int64(time.Since(t0)))
				l.pages.Add(1)
				l.each[i].Add(1)
				pause.Reset(p.pause)
			}
		}()
	}
	return l
}

// rounds is how many times the session that has loaded fewest pages has
// loaded all of portalPages.
func (l *portalLoad) rounds() int64 {
	least := l.each[0].Load()
	for i := range l.each {
		least = min(least, l.each[i].Load())
	}
	return least / int64(len(portalPages))
}

func (l *portalLoad) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = errors.Join(l.err, err)
}

// stop ends the load, once the pages being loaded have come, and
// returns what it did, and the sessions' errors.
func (l *portalLoad) stop() (portalStats, error) {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return portalStats{pages: l.pages.Load(), took: time.Duration(l.took.Load()), elapsed: time.Since(l.start)}, l.err
}

// portalStats is what the sessions did: pages loaded, their wall time
// summed, and how long they loaded them for.
type portalStats struct {
	pages         int64
	took, elapsed time.Duration
}

// add sums o into s.
func (s *portalStats) add(o portalStats) {
	s.pages += o.pages
	s.took += o.took
	s.elapsed += o.elapsed
}

// report adds the sessions' figures to in-use's: pages/s, the pages the
// sessions loaded a second, and page-ms, a page's mean wall time.
func (s portalStats) report(b *testing.B) {
	b.ReportMetric(float64(s.pages)/s.elapsed.Seconds(), "pages/s")
	if s.pages > 0 {
		b.ReportMetric(s.took.Seconds()*1e3/float64(s.pages), "page-ms")
	}
}
