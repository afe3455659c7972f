package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
)

const redisConfig = `
plans:
  small: {model: tiered, rate: {requests: 10, per: 1h}, quota: {requests: 1000, period: month}}
  big: {model: tiered, rate: {requests: 1000, per: 1s}}
`

// serveRedis starts levy on Redis with the admin API on.
func serveRedis(t *testing.T, redisAddr string, extra ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, redisConfig)
	t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
	args := append([]string{"--config", cfg, "--store", "redis", "--redis-addr", redisAddr}, extra...)
	return serve(t, args...)
}

func adminCall(t *testing.T, p *proc, method, path, body string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+p.httpAddr+path, bytes.NewBufferString(body))
	req.Header.Set("Authorization", "Bearer test-token")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d\nlevy's log:\n%s", method, path, resp.StatusCode, tail(p.stderr.String(), 3000))
	}
	out := map[string]any{}
	json.NewDecoder(resp.Body).Decode(&out)
	return out
}

func ready(p *proc) int {
	resp, err := http.Get("http://" + p.httpAddr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Two replicas on one Redis share one bucket, and a revocation or plan
// change made through one reaches the other within a second.
func TestTwoReplicasShareStateThroughRedis(t *testing.T) {
	rdb := redistest.Start(t)
	a := serveRedis(t, rdb.Addr)
	b := serveRedis(t, rdb.Addr)
	adminCall(t, a, "PUT", "/v1/consumers/acme", `{"plan": "small"}`)
	created := adminCall(t, a, "POST", "/v1/consumers/acme/keys", `{}`)
	key, keyID := created["key"].(string), created["id"].(string)

	ca, cb := a.client(t), b.client(t)
	allowed := 0
	for i := 0; i < 20; i++ {
		c := ca
		if i%2 == 1 {
			c = cb
		}
		if check(t, c, key, "/").Allowed {
			allowed++
		}
	}
	if allowed != 10 {
		t.Fatalf("%d of 20 allowed across two replicas on a shared bucket of 10", allowed)
	}

	// Upgrade through replica a; replica b applies it within a second.
	adminCall(t, a, "PATCH", "/v1/consumers/acme", `{"plan": "big"}`)
	start := time.Now()
	waitFor(t, 3*time.Second, func() bool { return check(t, cb, key, "/").Allowed })
	if took := time.Since(start); took > time.Second {
		t.Errorf("replica b saw the upgrade after %s, want within 1s", took)
	}
	adminCall(t, a, "POST", "/v1/keys/"+keyID+"/revoke", "")
	start = time.Now()
	waitFor(t, 3*time.Second, func() bool { return check(t, cb, key, "/").Status == 403 })
	if took := time.Since(start); took > time.Second {
		t.Errorf("replica b saw the revocation after %s, want within 1s", took)
	}
}

// Redis down at start: levy serves, is not ready, and becomes ready when
// Redis comes up; a Redis restart under load brings no crash and, once
// it is back, no burst of errors.
func TestRedisOutagesAreSurvived(t *testing.T) {
	rdb := redistest.Start(t)
	rdb.Kill()
	p := serveRedis(t, rdb.Addr)
	if code := ready(p); code != 503 {
		t.Fatalf("readyz with Redis down: %d, want 503", code)
	}
	c := p.client(t)
	o := check(t, c, "levy_"+strings.Repeat("A", 32)+"AAAAAA", "/")
	if o.Status != 401 && o.Status != 503 {
		t.Fatalf("with Redis down: %d", o.Status)
	}
	rdb.Restart()
	waitFor(t, 5*time.Second, func() bool { return ready(p) == 200 })
	adminCall(t, p, "PUT", "/v1/consumers/acme", `{"plan": "big"}`)
	key := adminCall(t, p, "POST", "/v1/consumers/acme/keys", `{}`)["key"].(string)

	// Load from 8 callers while Redis is killed and restarted.
	var stop atomic.Bool
	var statuses sync.Map
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000 && !stop.Load(); i++ {
				o, err := c.Check(context.Background(), &envoyclient.Request{Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
				if err != nil {
					return
				}
				n, _ := statuses.LoadOrStore(o.Status, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		}()
	}
	waitFor(t, 5*time.Second, func() bool { n, ok := statuses.Load(200); return ok && n.(*atomic.Int64).Load() > 50 })
	rdb.Kill()
	waitFor(t, 5*time.Second, func() bool { n, ok := statuses.Load(503); return ok && n.(*atomic.Int64).Load() > 10 })
	if code := ready(p); code != 503 {
		t.Fatalf("readyz with Redis killed: %d", code)
	}
	rdb.Restart()
	waitFor(t, 5*time.Second, func() bool { return ready(p) == 200 })
	adminCall(t, p, "PUT", "/v1/consumers/acme", `{"plan": "big"}`) // Redis lost its data
	if err := func() error { _, err := http.Post("http://"+p.httpAddr+"/v1/consumers/acme/keys", "", nil); return err }(); err != nil {
		t.Fatal(err)
	}
	stop.Store(true)
	wg.Wait()
	statuses.Range(func(k, v any) bool {
		if s := k.(int); s != 200 && s != 503 && s != 401 {
			t.Errorf("status %d seen %d times under a Redis restart", s, v.(*atomic.Int64).Load())
		}
		return true
	})

	// Back to normal: a fresh key works on the first try, every time.
	key = adminCall(t, p, "POST", "/v1/consumers/acme/keys", `{}`)["key"].(string)
	for i := 0; i < 50; i++ {
		if o := check(t, c, key, "/"); !o.Allowed {
			t.Fatalf("request %d after the restart: %d %s", i, o.Status, o.Body)
		}
	}
	// Outages and restarts leave no connections behind: one pool's worth
	// at most, plus the test's own.
	clients, err := rdb.Client().Info(context.Background(), "clients").Result()
	if err != nil {
		t.Fatal(err)
	}
	var connected int
	fmt.Sscanf(clients[strings.Index(clients, "connected_clients:"):], "connected_clients:%d", &connected)
	if connected > 66 {
		t.Errorf("%d clients connected to Redis after the outages", connected)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// A Redis that accepts connections but answers nothing never makes a Check
// outlive Envoy's 200ms default.
func TestSlowRedisNeverOutlivesEnvoysTimeout(t *testing.T) {
	rdb := redistest.Start(t)
	p := serveRedis(t, rdb.Addr, "--store-timeout", "50ms") // the default, well under Envoy's 200ms
	adminCall(t, p, "PUT", "/v1/consumers/acme", `{"plan": "big"}`)
	key := adminCall(t, p, "POST", "/v1/consumers/acme/keys", `{}`)["key"].(string)
	c := p.client(t)
	check(t, c, key, "/") // cached now
	rdb.Pause()
	defer rdb.Resume()
	strict := envoyclient.NewAuthzClient(connTo(t, p), envoyclient.AuthzConfig{}) // Envoy's 200ms
	for i := 0; i < 5; i++ {
		o, err := strict.Check(context.Background(), &envoyclient.Request{Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
		if err != nil {
			t.Fatal(err)
		}
		if o.RPCError != nil || o.Status != 503 {
			t.Fatalf("check %d with Redis paused: status %d, rpc error %v; want levy's own 503 within 200ms", i, o.Status, o.RPCError)
		}
	}
	rdb.Resume()
	waitFor(t, 5*time.Second, func() bool { return check(t, c, key, "/").Allowed })
}

// on_store_error: allow keeps serving within each replica's share.
func TestFailOpenKeepsProtectingWithAShare(t *testing.T) {
	rdb := redistest.Start(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "store: {on_store_error: allow}\n"+redisConfig)
	t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
	p := serve(t, "--config", cfg, "--store", "redis", "--redis-addr", rdb.Addr)
	adminCall(t, p, "PUT", "/v1/consumers/acme", `{"plan": "small"}`)
	key := adminCall(t, p, "POST", "/v1/consumers/acme/keys", `{}`)["key"].(string)
	c := p.client(t)
	check(t, c, key, "/") // cache the key
	rdb.Kill()
	allowed := 0
	for i := 0; i < 30; i++ {
		o := check(t, c, key, "/")
		if o.Allowed {
			allowed++
		} else if o.Status != 429 {
			t.Fatalf("fail-open check %d: %d %s", i, o.Status, o.Body)
		}
	}
	if allowed != 10 {
		t.Fatalf("%d allowed with Redis down, want this replica's share of 10 (one replica)", allowed)
	}
	// Ready all the while (Kubernetes must not take away a replica that
	// answers as configured); the degraded state shows on its own.
	waitFor(t, 5*time.Second, func() bool { return strings.Contains(p.metrics(t), "levy_degraded 1") })
	if code := ready(p); code != 200 {
		t.Fatalf("readyz with Redis down and on_store_error allow: %d, want 200", code)
	}
	m := p.metrics(t)
	if !strings.Contains(m, "levy_store_up 0") {
		t.Fatalf("metrics:\n%s", grepLines(m, "levy_store"))
	}
	hc := healthpb.NewHealthClient(dial(t, p.grpcAddr))
	waitFor(t, 5*time.Second, func() bool {
		levy, err1 := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
		store, err2 := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "levy.store"})
		return err1 == nil && err2 == nil && levy.Status == healthpb.HealthCheckResponse_SERVING &&
			store.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})
	rdb.Restart()
	waitFor(t, 5*time.Second, func() bool {
		m := p.metrics(t)
		return strings.Contains(m, "levy_degraded 0") && strings.Contains(m, "levy_store_up 1")
	})
}

func connTo(t *testing.T, p *proc) *grpcConn {
	t.Helper()
	return dial(t, p.grpcAddr)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
