// Package stripetest runs the real stripe-mock (pinned as a go tool in
// go.mod) on a free loopback port, behind a recording proxy that counts
// what levy sends and can make Stripe fail for a while.
package stripetest

import (
	"bytes"
	"context"
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

	mu      sync.Mutex
	calls   []Call
	failing int    // answer this status instead of forwarding, while > 0
	body    string // with this body
	remain  int    // how many more requests fail (-1: until Recover)
	seen    map[string]bool
	// chaos, when set, fails requests at random: each with probability
	// chaosRate.
	chaos     *rand.Rand
	chaosRate float64
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

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start runs stripe-mock and the proxy, stopped with the test.
func Start(t testing.TB) *Stripe {
	t.Helper()
	addr := freeAddr(t)
	// stripe-mock serves HTTPS too, by default on a fixed port: give it
	// a free one, so that several can run at once.
	cmd := exec.Command(stripeMock(t), "-http-addr", addr, "-https-addr", freeAddr(t))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			t.Fatalf("stripe-mock exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stripe-mock not listening on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}

	s := &Stripe{seen: map[string]bool{}}
	target, _ := url.Parse("http://" + addr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		call := Call{Method: r.Method, Path: r.URL.Path, Form: form}
		s.mu.Lock()
		fail, failBody := s.failing, s.body
		lose := false // Stripe did it, and its answer is lost on the way
		if fail == 0 && s.chaos != nil && s.chaos.Float64() < s.chaosRate {
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
		// stripe-mock keeps no state; Stripe refuses a meter event whose
		// identifier it already has (within 24h). The proxy does the same.
		ident := ""
		if r.URL.Path == "/v1/billing/meter_events" {
			ident = form.Get("identifier")
		}
		s.mu.Lock()
		dup := ident != "" && fail == 0 && s.seen[ident]
		s.mu.Unlock()
		if dup {
			rec.Header().Set("Content-Type", "application/json")
			rec.WriteHeader(http.StatusBadRequest)
			io.WriteString(rec, `{"error":{"type":"invalid_request_error","param":"identifier","message":"An event with this identifier already exists."}}`)
		} else if fail > 0 {
			rec.Header().Set("Content-Type", "application/json")
			rec.WriteHeader(fail)
			io.WriteString(rec, failBody)
		} else if lose {
			done := &statusRecorder{ResponseWriter: discard{}, status: 200}
			proxy.ServeHTTP(done, r)
			rec.status = done.status // what Stripe did; the caller sees a 503
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":{"type":"api_error","message":"answer lost by stripetest"}}`)
		} else {
			proxy.ServeHTTP(rec, r)
		}
		call.Status, call.Lost = rec.status, lose
		s.mu.Lock()
		if ident != "" && rec.status == 200 {
			s.seen[ident] = true
		}
		s.calls = append(s.calls, call)
		s.mu.Unlock()
	})}
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
