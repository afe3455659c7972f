package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/server/servertest"
)

const alertsConfig = `dev_mode: true
log: {level: warn}
alerts:
  url: %s
  scan_every: 1s
  timeout: 2s
  retry: {initial: 200ms, max: 1s, max_age: 1h}
plans:
  pro:
    model: tiered
    quota: {requests: 10, period: month}
    alerts: [80%%, 100%%]
consumers:
  - id: acme
    plan: pro
    keys: [{id: acme-1, key: %s}]
`

// opsReceiver is the operator's endpoint: it checks each delivery's
// signature, keeps the accepted ones, and answers 500 while failing.
type opsReceiver struct {
	mu       sync.Mutex
	failing  bool
	tries    map[int]int // attempts by threshold
	accepted []alert.Event
	bad      []string
}

func (o *opsReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := alert.Verify(body, r.Header.Get(alert.SignatureHeader), []byte("ops-secret"), time.Now(), 0); err != nil {
		o.bad = append(o.bad, err.Error())
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var ev alert.Event
	json.Unmarshal(body, &ev)
	o.tries[ev.Threshold]++
	if o.failing {
		http.Error(w, "down", http.StatusInternalServerError)
		return
	}
	o.accepted = append(o.accepted, ev)
}

func (o *opsReceiver) state() (tries map[int]int, accepted []alert.Event, bad []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	tries = map[int]int{}
	for k, v := range o.tries {
		tries[k] = v
	}
	return tries, append([]alert.Event(nil), o.accepted...), append([]string(nil), o.bad...)
}

func (o *opsReceiver) fail(on bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failing = on
}

// Two replicas on one Redis: crossing 80% of the quota sends one signed
// alert, retried after a 500 (one replica scans at a time, under a lease;
// both deliver). One replica stops and the other, taking the lease over
// if it was not the one scanning, finds 100% crossed while the receiver is
// down; it stops too, and the alert is delivered, once, by the next
// replica to start.
func TestUsageAlertsFireOnceAcrossReplicasAndSurviveARestart(t *testing.T) {
	rdb := redistest.Start(t)
	ops := &opsReceiver{tries: map[int]int{}}
	recv := httptest.NewServer(ops)
	defer recv.Close()
	t.Setenv("LEVY_ALERTS_SECRET", "ops-secret")
	key, err := apikey.Generate("levy")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "levy.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(alertsConfig, recv.URL, key)), 0o600); err != nil {
		t.Fatal(err)
	}
	onRedis := servertest.Options{Flags: func(c *config.Config) { c.Store.Type, c.Store.Redis.Addr = "redis", rdb.Addr }}
	a := servertest.Start(t, path, onRedis)
	b := servertest.Start(t, path, onRedis)
	check := func(l *servertest.Levy, n int) {
		t.Helper()
		await.Until(t, 10*time.Second, func() bool {
			resp, err := http.Get("http://" + l.HTTPAddr + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		}, "/readyz to answer 200")
		conn, err := grpc.NewClient(l.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: 5 * time.Second})
		for range n {
			o, err := c.Check(context.Background(), &envoyclient.Request{Path: "/v1/items", Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
			if err != nil || !o.Allowed {
				t.Fatalf("Check: %+v, %v", o, err)
			}
		}
	}

	ops.fail(true)
	check(a, 4)
	check(b, 4) // 8 of 10: 80%
	await.Until(t, 15*time.Second, func() bool { tries, _, _ := ops.state(); return tries[80] >= 1 }, "a first delivery at 80%")
	ops.fail(false)
	await.Until(t, 15*time.Second, func() bool { _, acc, _ := ops.state(); return len(acc) == 1 }, "the 80% alert delivered after a 500")
	await.Holds(t, 2500*time.Millisecond, func() bool { _, acc, _ := ops.state(); return len(acc) == 1 },
		"one delivery at 80% while both replicas scan")
	_, acc, bad := ops.state()
	if ev := acc[0]; ev.Threshold != 80 || ev.Consumer != "acme" || ev.Used != 8 || ev.Limit != 10 || ev.ID == "" {
		t.Errorf("alert %+v", ev)
	}
	if len(bad) > 0 {
		t.Errorf("deliveries that do not verify: %v", bad)
	}
	if fired := alertMetric(t, a, "80", "fired") + alertMetric(t, b, "80", "fired"); fired != 1 {
		t.Errorf("levy_usage_alerts_total{threshold=80,outcome=fired} over both replicas = %v, want 1", fired)
	}

	ops.fail(true)
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	check(b, 2) // 10 of 10: 100%
	await.Until(t, 15*time.Second, func() bool { tries, _, _ := ops.state(); return tries[100] >= 1 }, "a first delivery at 100%, from b")
	if fired := alertMetric(t, b, "100", "fired"); fired != 1 {
		t.Errorf("levy_usage_alerts_total{threshold=100,outcome=fired} on b = %v, want 1", fired)
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	ops.fail(false)
	servertest.Start(t, path, onRedis)
	await.Until(t, 15*time.Second, func() bool { _, acc, _ := ops.state(); return len(acc) == 2 }, "the 100% alert delivered after the restart")
	await.Holds(t, 2500*time.Millisecond, func() bool { _, acc, _ := ops.state(); return len(acc) == 2 }, "nothing delivered twice")
	_, acc, _ = ops.state()
	if acc[1].Threshold != 100 || acc[1].ID == acc[0].ID {
		t.Errorf("after the restart: %+v", acc[1])
	}
}

// alertMetric reads levy_usage_alerts_total{threshold,outcome} on l.
func alertMetric(t *testing.T, l *servertest.Levy, threshold, outcome string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + l.HTTPAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`levy_usage_alerts_total\{outcome="` + outcome + `",threshold="` + threshold + `"\} (\S+)`)
	m := re.FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no levy_usage_alerts_total{threshold=%q,outcome=%q}", threshold, outcome)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}
