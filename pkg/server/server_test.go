package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/envoyclient"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// described is the base URL of a proxy to levy's HTTP listener at addr
// that checks every request and response against api/openapi.yaml.
func described(t *testing.T, addr string) string {
	t.Helper()
	proxy := httptest.NewServer(apitest.Handler(t, httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: addr})))
	t.Cleanup(proxy.Close)
	return proxy.URL
}

// testConfig is text as a config on loopback ports and a fresh data dir,
// with no file to watch, and the environment's secrets as levy serve reads
// them.
func testConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(text), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ApplyEnv(nil)
	cfg.Source = ""
	cfg.Listen = config.Listen{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0"}
	cfg.Store.DataDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runServer starts a server on cfg until the test ends.
func runServer(t *testing.T, cfg *config.Config, opts Options) *Server {
	t.Helper()
	srv, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv
}

const freePlan = "plans: {free: {model: freemium, rate: {requests: 1, per: 1h}, quota: {requests: 10, period: month}}}\n"

func TestHealthReadinessMetricsAndCleanShutdown(t *testing.T) {
	cfg := testConfig(t, "demo: true\n"+freePlan)
	var out strings.Builder
	srv, err := New(cfg, Options{Log: zaptest.NewLogger(t), Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	base := described(t, srv.HTTPAddr())
	await.Until(t, 10*time.Second, func() bool { code, _ := get(t, base+"/readyz"); return code == 200 }, "/readyz to answer 200")
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz %d %q", code, body)
	}

	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health: %v %v", hr, err)
	}
	key := strings.TrimSpace(strings.TrimPrefix(out.String(), "demo key for plan free:"))
	client := envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: 5 * time.Second})
	for i := 0; i < 2; i++ {
		if _, err := client.Check(ctx, &envoyclient.Request{Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}}); err != nil {
			t.Fatal(err)
		}
	}
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{
		`levy_decisions_total{api="authz",reason="ok",result="allow"} 1`,
		`levy_decisions_total{api="authz",reason="rate_limited",result="deny"} 1`,
		`levy_decision_duration_seconds_count{api="authz"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The local store's counters were flushed: a fresh server on the same
	// data dir reports the allowed request (and not the denied one).
	again, err := New(cfg, Options{Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	rep, err := again.usageReport(context.Background(), "demo-free", false)
	if err != nil || rep.(billing.UsageReport).Used != 1 {
		t.Fatalf("usage after a restart: %+v %v, want 1 used", rep, err)
	}
}

// Slow and idle HTTP clients are cut off: a request body that trickles in
// past the read timeout, and a keep-alive connection idle past the idle
// timeout, are closed, so that they cannot pile up and take the file
// descriptors every listener needs.
func TestSlowAndIdleHTTPClientsAreCutOff(t *testing.T) {
	cfg := testConfig(t, freePlan)
	limits := HTTPLimits{ReadHeader: 200 * time.Millisecond, Read: 300 * time.Millisecond, Idle: 300 * time.Millisecond}
	srv := runServer(t, cfg, Options{Log: zaptest.NewLogger(t), HTTP: limits})
	addr := srv.HTTPAddr()

	// closed waits for the server to end conn, failing after 5 seconds.
	closed := func(what string, conn net.Conn) {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, conn); err != nil {
			t.Fatalf("%s: the connection was still open after 5s: %v", what, err)
		}
	}
	dialHTTP := func() net.Conn {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}

	slow := dialHTTP()
	io.WriteString(slow, "POST /stripe/webhook HTTP/1.1\r\nHost: levy\r\nContent-Length: 1000\r\n\r\n{\"id\":")
	closed("a body that never comes", slow)

	idle := dialHTTP()
	io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: levy\r\n\r\n")
	closed("an idle keep-alive connection", idle)

	// And levy still answers.
	if code, _ := get(t, "http://"+addr+"/healthz"); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
}

// POST /json answers a RateLimitRequest in JSON as envoyproxy/ratelimit's
// endpoint does (200, then 429 over the limit), behind the admin token.
func TestRateLimitJSONEndpoint(t *testing.T) {
	t.Setenv("LEVY_ADMIN_TOKEN", "tok")
	cfg := testConfig(t, freePlan+`ratelimit:
  domains:
    - domain: api
      descriptors:
        - key: generic_key
          value: json
          rate_limit: {unit: minute, requests_per_unit: 2}
`)
	srv := runServer(t, cfg, Options{Log: zaptest.NewLogger(t)})
	base := described(t, srv.HTTPAddr())
	post := func(token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", base+"/json", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	body := `{"domain":"api","descriptors":[{"entries":[{"key":"generic_key","value":"json"}]}]}`
	for i, want := range []int{200, 200, 429} {
		code, out := post("tok", body)
		if code != want || !strings.Contains(out, `"overallCode"`) {
			t.Fatalf("request %d: %d %s, want %d", i+1, code, out, want)
		}
	}
	if code, out := post("tok", `{"domain":`); code != 400 {
		t.Fatalf("bad JSON: %d %s", code, out)
	}
	if code, out := post("tok", `{"domain":"","descriptors":[]}`); code != 400 || !strings.Contains(out, "domain") {
		t.Fatalf("empty domain: %d %s", code, out)
	}
	if code, _ := post("wrong", body); code != 401 {
		t.Fatalf("without the admin token: %d", code)
	}
}

// /openapi.json is api/openapi.yaml as JSON, a valid OpenAPI document.
func TestOpenAPIDescriptionIsServed(t *testing.T) {
	srv := runServer(t, testConfig(t, freePlan), Options{Log: zaptest.NewLogger(t)})
	code, body := get(t, described(t, srv.HTTPAddr())+"/openapi.json")
	if code != 200 {
		t.Fatalf("/openapi.json: %d %s", code, body)
	}
	doc, err := openapi3.NewLoader().LoadFromData([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil || doc.Paths.Find("/v1/consumers") == nil {
		t.Fatalf("served description: %v", err)
	}
}
