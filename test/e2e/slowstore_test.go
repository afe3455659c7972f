package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
)

const slowStoreConfig = `
store: {on_store_error: %s}
plans:
  metered: {model: tiered, rate: {requests: 100000, per: 1s}, quota: {requests: 1000000, period: month}}
`

// A request the caller saw fail (a 503, or the fallback's decision) is
// never charged on Redis: with Redis stalled again and again under load,
// scripts sent before a stall run after the callers gave up; what they
// took is given back. After the storm the consumer's quota counter equals
// exactly the requests the client saw allowed.
func TestRequestsDeniedWhileRedisIsSlowAreNotCharged(t *testing.T) {
	for _, mode := range []string{"deny", "allow"} {
		t.Run(mode, func(t *testing.T) {
			rdb := redistest.Start(t)
			dir := t.TempDir()
			cfg := writeConfig(t, dir, fmt.Sprintf(slowStoreConfig, mode))
			t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
			p := serve(t, "--config", cfg, "--store", "redis", "--redis-addr", rdb.Addr, "--store-timeout", "50ms")
			adminCall(t, p, "PUT", "/v1/consumers/acme", `{"plan": "metered"}`)
			key := adminCall(t, p, "POST", "/v1/consumers/acme/keys", `{}`)["key"].(string)
			c := p.client(t)
			if o := check(t, c, key, "/"); !o.Allowed {
				t.Fatalf("first request: %d", o.Status)
			}
			allowed := atomic.Int64{}
			allowed.Store(1)
			statuses := sync.Map{}

			// Redis stalls for 300ms out of every 500ms while 8 callers
			// keep asking.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						o, err := c.Check(context.Background(), &envoyclient.Request{Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
						if err != nil {
							t.Error(err)
							return
						}
						n, _ := statuses.LoadOrStore(o.Status, new(atomic.Int64))
						n.(*atomic.Int64).Add(1)
						if o.Allowed {
							allowed.Add(1)
						}
					}
				}()
			}
			for range 6 {
				// The subject: Redis stalls for 300 ms, then answers
				// for 200 ms, while the clients keep asking.
				rdb.Pause()
				time.Sleep(300 * time.Millisecond)
				rdb.Resume()
				time.Sleep(200 * time.Millisecond)
			}
			close(stop)
			wg.Wait()
			counts := map[int]int64{}
			statuses.Range(func(k, v any) bool { counts[k.(int)] = v.(*atomic.Int64).Load(); return true })
			t.Logf("statuses seen: %v", counts)
			if mode == "deny" && counts[503] == 0 {
				t.Fatal("no 503 while Redis stalled: the test did not exercise a slow store")
			}

			// Late replies are given back (and, under allow, the fallback's
			// count is added) within a few seconds.
			want := allowed.Load()
			var used int64
			await.Poll(15*time.Second, func() error { //nolint:errcheck // the check below reports the count
				u := adminCall(t, p, "GET", "/v1/consumers/acme/usage", "")
				if used = int64(u["used"].(float64)); used != want {
					return fmt.Errorf("used %d, want %d", used, want)
				}
				return nil
			})
			m := p.metrics(t)
			t.Logf("late decisions:\n%s", grepLines(m, "levy_store_late_decisions_total{"))
			if used != want {
				t.Fatalf("quota counter %d after the storm, want exactly the %d requests the client saw allowed", used, want)
			}
			if n := metricValue(m, `levy_store_late_decisions_total{outcome="unknown"}`); n != 0 {
				t.Errorf("%v decisions of unknown outcome with stalls shorter than the reply wait", n)
			}
		})
	}
}

// metricValue is the value of the sample named series on a /metrics page
// (0 when absent).
func metricValue(page, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(page)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
