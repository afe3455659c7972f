// Package stripetest runs the real stripe-mock (pinned as a go tool in
// go.mod) on a free loopback port, behind a recording proxy that counts
// what levy sends and can make Stripe fail for a while.
//
// stripe-mock keeps no state, so the proxy keeps Stripe's metering itself:
// the meter events it accepted (refusing an identifier it already has, as
// Stripe does), the meters (GET /v1/billing/meters), their event summaries
// (GET /v1/billing/meters/{id}/event_summaries) and event cancellations
// (POST /v1/billing/meter_event_adjustments). Everything else is
// stripe-mock's answer.
package stripetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/await"
)

// Call is one request the proxy saw.
type Call struct {
	Method, Path string
	Form         url.Values
	// Status is Stripe's answer; Lost, that the caller got a 503 instead
	// (FailRandomly).
	Status int
	Lost   bool
}

// Stripe is stripe-mock behind a recording proxy. Point levy at URL.
type Stripe struct {
	URL string

	mock *httputil.ReverseProxy
	own  *http.ServeMux // what the proxy answers itself, the rest to mock

	mu      sync.Mutex
	calls   []Call
	failing int    // answer this status instead of forwarding, while > 0
	body    string // with this body
	remain  int    // how many more requests fail (-1: until Recover)
	clock   func() time.Time
	// events are the meter events accepted, by identifier; order is the
	// order they were accepted in.
	events    map[string]*Event
	order     []string
	generated int // identifiers made up for events sent without one
	// meters are the event names of the billing meters Stripe has: those
	// registered and those events were sent for.
	meters map[string]bool
	// chaos, when set, fails requests at random: each with probability
	// chaosRate.
	chaos     *rand.Rand
	chaosRate float64
	lose      int // answers still to lose (LoseAnswers)
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// stripeMock builds stripe-mock once per test binary.
func stripeMock(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "stripe-mock")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "stripe-mock")
		cmd := exec.Command("go", "build", "-o", binary, "github.com/stripe/stripe-mock")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = &buildError{err, out}
		}
	})
	if buildErr != nil {
		t.Fatalf("build stripe-mock: %v", buildErr)
	}
	return binary
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + ": " + string(e.out) }

// Start runs stripe-mock and the proxy, stopped with the test.
func Start(t testing.TB) *Stripe {
	t.Helper()
	// stripe-mock listens on a Unix socket of its own: no TCP port to
	// pick free and lose to another test before it binds it, and no
	// HTTPS listener on its fixed default port. The socket's path must be
	// short (108 bytes), so not under t.TempDir.
	dir, err := os.MkdirTemp("", "stripe-mock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "http.sock")
	cmd := exec.Command(stripeMock(t), "-http-unix", sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var logs await.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	err = await.Poll(30*time.Second, func() error {
		select {
		case <-done:
			return await.Halt(errors.New("stripe-mock exited"))
		default:
		}
		c, err := dial(context.Background(), "", "")
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Fatalf("stripe-mock not listening on %s: %v\n%s", sock, err, logs.String())
	}

	s := &Stripe{clock: time.Now, events: map[string]*Event{}, meters: map[string]bool{}}
	s.mock = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: "stripe-mock"})
	tr := &http.Transport{DialContext: dial}
	t.Cleanup(tr.CloseIdleConnections)
	s.mock.Transport = tr
	s.own = http.NewServeMux()
	s.own.HandleFunc("POST /v1/billing/meter_events", s.meterEvent)
	s.own.HandleFunc("GET /v1/billing/meters", s.listMeters)
	s.own.HandleFunc("GET /v1/billing/meters/{id}", s.getMeter)
	s.own.HandleFunc("GET /v1/billing/meters/{id}/event_summaries", s.eventSummaries)
	s.own.HandleFunc("POST /v1/billing/meter_event_adjustments", s.adjustment)
	s.own.Handle("/", s.mock)
	srv := &http.Server{Handler: http.HandlerFunc(s.serve)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	s.URL = "http://" + lis.Addr().String()
	return s
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}

// serve records the call, answers an injected failure when there is one,
// and otherwise answers what Stripe's metering keeps itself and forwards
// the rest to stripe-mock.
func (s *Stripe) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	form, _ := url.ParseQuery(string(body))
	if len(form) == 0 && r.URL.RawQuery != "" {
		form = r.URL.Query() // a GET's parameters
	}
	r.Form = form
	call := Call{Method: r.Method, Path: r.URL.Path, Form: form}
	s.mu.Lock()
	fail, failBody := s.failing, s.body
	lose := false // Stripe does it, and its answer is lost on the way
	if fail == 0 && s.lose > 0 {
		s.lose--
		lose = true
	} else if fail == 0 && s.chaos != nil && s.chaos.Float64() < s.chaosRate {
		if s.chaos.Intn(2) == 0 {
			fail, failBody = http.StatusServiceUnavailable, `{"error":{"type":"api_error","message":"injected at random by stripetest"}}`
		} else {
			lose = true
		}
	}
	if fail > 0 && s.remain > 0 {
		s.remain--
	}
	if s.remain == 0 {
		s.failing = 0
	}
	s.mu.Unlock()
	rec := &statusRecorder{ResponseWriter: w, status: 200}
	switch {
	case fail > 0:
		rec.Header().Set("Content-Type", "application/json")
		rec.WriteHeader(fail)
		io.WriteString(rec, failBody)
	case lose:
		did := &statusRecorder{ResponseWriter: discard{}, status: 200}
		s.own.ServeHTTP(did, r)
		rec.status = did.status // what Stripe did; the caller sees a 503
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"error":{"type":"api_error","message":"answer lost by stripetest"}}`)
	default:
		s.own.ServeHTTP(rec, r)
	}
	call.Status, call.Lost = rec.status, lose
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Fail makes the next n requests (-1: all until Recover) answer status.
func (s *Stripe) Fail(status, n int) {
	s.FailWith(status, `{"error":{"type":"api_error","message":"injected by stripetest"}}`, n)
}

// FailWith makes the next n requests (-1: all until Recover) answer status
// with body, a Stripe error object.
func (s *Stripe) FailWith(status int, body string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing, s.body, s.remain = status, body, n
}

// FailRandomly makes each request fail (503) with probability rate, drawn
// from seed, until Recover.
func (s *Stripe) FailRandomly(rate float64, seed int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chaos, s.chaosRate = rand.New(rand.NewSource(seed)), rate
}

// LoseAnswers makes Stripe do the next n requests and their answers get
// lost: the caller sees a 503 for work Stripe did.
func (s *Stripe) LoseAnswers(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lose = n
}

// Recover ends Fail and FailRandomly.
func (s *Stripe) Recover() {
	s.Fail(0, 0)
	s.mu.Lock()
	s.chaos = nil
	s.mu.Unlock()
}

// Calls returns the requests seen so far, optionally only those to path.
func (s *Stripe) Calls(path string) []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Call
	for _, c := range s.calls {
		if path == "" || c.Path == path {
			out = append(out, c)
		}
	}
	return out
}
