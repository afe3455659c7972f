package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/envoyclient"
)

// sigkillConfig is a metered plan that never denies in a test: every
// admission adds one unit to the quota counter and one to the ledger.
const sigkillConfig = `
dev_mode: true
plans:
  payg:
    model: payg
    rate: {requests: 1000000, per: 1s}
    quota: {requests: 1000000000, period: month, enforcement: soft}
    billing: {meter: api_calls}
consumers:
  - {id: acme, plan: payg, keys: [{key: %s}]}
`

const adminToken = "test-token"

// sigkillRig is a levy serve on a local store in one data directory,
// which a test kills and starts again.
type sigkillRig struct {
	cfg, data, key string
}

func newSigkillRig(t *testing.T) *sigkillRig {
	t.Helper()
	dir := t.TempDir()
	key, err := apikey.Generate("levy")
	if err != nil {
		t.Fatal(err)
	}
	return &sigkillRig{cfg: writeConfig(t, dir, fmt.Sprintf(sigkillConfig, key)), data: filepath.Join(dir, "data"), key: key}
}

func (r *sigkillRig) serve(t *testing.T) *proc {
	t.Helper()
	return serveEnv(t, []string{"LEVY_ADMIN_TOKEN=" + adminToken}, "--config", r.cfg, "--data-dir", r.data)
}

// kill sends SIGKILL and waits for the process to end.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// usage is acme's current period from the admin API: Used is the quota
// counter, Settled the ledger's units.
func (p *proc) usage(t *testing.T) billing.UsageReport {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+p.httpAddr+"/v1/consumers/acme/usage", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r billing.UsageReport
	if resp.StatusCode != 200 {
		t.Fatalf("usage: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	return r
}

// sample is the value of the unlabelled sample name on a /metrics page.
func sample(t *testing.T, page, name string) float64 {
	t.Helper()
	for line := range strings.Lines(page) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// lossWindows is the count and mean of levy_local_loss_window_seconds.
func lossWindows(t *testing.T, page string) (n float64, mean time.Duration) {
	t.Helper()
	n = sample(t, page, "levy_local_loss_window_seconds_count")
	if n == 0 {
		return 0, 0
	}
	return n, time.Duration(sample(t, page, "levy_local_loss_window_seconds_sum") / n * float64(time.Second))
}

func admit(t *testing.T, c *envoyclient.AuthzClient, key string) bool {
	o, err := c.Check(context.Background(), &envoyclient.Request{Path: "/v1/items", Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
	if err != nil || o.RPCError != nil {
		return false
	}
	if !o.Allowed {
		t.Errorf("denied: %d", o.Status)
	}
	return o.Allowed
}

// A burst of admissions is durable as soon as the commit that holds it is,
// which levy_local_unsaved_seconds shows: killed with SIGKILL then, levy
// restarts with every admitted unit in the quota counter and the ledger.
func TestSIGKILLAfterTheCommitLosesNoAdmittedUnit(t *testing.T) {
	r := newSigkillRig(t)
	p := r.serve(t)
	c := p.client(t)
	const burst = 10
	var wg sync.WaitGroup
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !admit(t, c, r.key) {
				t.Error("a check of the burst failed")
			}
		}()
	}
	wg.Wait()
	admitted := time.Now()
	waitFor(t, 10*time.Second, func() bool { return sample(t, p.metrics(t), "levy_local_unsaved_seconds") == 0 })
	durable := time.Since(admitted)
	n, mean := lossWindows(t, p.metrics(t))
	p.kill(t)
	t.Logf("burst of %d durable within %v of its last admission (polling every 20ms); %v commits, mean loss window %v", burst, durable, n, mean)

	p = r.serve(t)
	if u := p.usage(t); u.Used != burst || u.Settled != burst {
		t.Fatalf("after SIGKILL and restart: quota counter %d, ledger %d; want %d admitted units in both", u.Used, u.Settled, burst)
	}
}

// Killed at a random moment of a steady stream of admissions, levy loses
// at most the units admitted within the loss window it reported: the age
// of its oldest unsaved change, read from /metrics just before the kill,
// plus the time from that read to the kill.
func TestSIGKILLDuringAStreamLosesAtMostTheMeasuredWindow(t *testing.T) {
	r := newSigkillRig(t)
	p := r.serve(t)
	c := p.client(t)
	const workers = 4
	killAfter := 300 + rand.N(2000) // admissions: a random moment of the stream

	var (
		mu    sync.Mutex
		times []time.Time // when each admission's answer arrived
		reach = make(chan struct{})
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !admit(t, c, r.key) {
					return // the process is gone
				}
				at := time.Now()
				mu.Lock()
				times = append(times, at)
				if len(times) == killAfter {
					close(reach)
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-reach:
	case <-time.After(30 * time.Second):
		t.Fatalf("fewer than %d admissions in 30s", killAfter)
	}
	read := time.Now()
	page := p.metrics(t)
	p.kill(t)
	killed := time.Now()
	close(stop)
	wg.Wait()
	unsaved := time.Duration(sample(t, page, "levy_local_unsaved_seconds") * float64(time.Second))
	window := unsaved + killed.Sub(read)
	n, mean := lossWindows(t, page)

	var admitted, inWindow int64
	for _, at := range times {
		admitted++
		if !at.Before(killed.Add(-window)) {
			inWindow++
		}
	}
	p = r.serve(t)
	u := p.usage(t)
	for _, got := range []struct {
		name   string
		stored int64
	}{{"quota counter", u.Used}, {"ledger", u.Settled}} {
		lost := admitted - got.stored
		t.Logf("%s: %d admitted, %d stored, %d lost; %d admitted within the window of %v before the kill", got.name, admitted, got.stored, lost, inWindow, window)
		if lost > inWindow {
			t.Errorf("%s lost %d units, more than the %d admitted within the measured window of %v", got.name, lost, inWindow, window)
		}
		// Calls in flight at the kill may have been admitted and saved
		// without their answer arriving.
		if got.stored > admitted+workers {
			t.Errorf("%s holds %d units, more than the %d admitted and %d in flight", got.name, got.stored, admitted, workers)
		}
	}
	t.Logf("loss window at the kill: %v (unsaved %v at the read of /metrics, then %v to the kill); %v commits before, mean loss window %v",
		window, unsaved, killed.Sub(read), n, mean)
}
