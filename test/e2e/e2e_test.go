// Package e2e drives the real levy binary: built once, started as a
// process on loopback ports, spoken to through the Envoy-faithful client
// and through its own `levy check` command.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/server/servertest"
	"github.com/levyhq/levy/test/compat"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "levy-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "levy")
	args := []string{"build", "-o", binary}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../../cmd/levy")...)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build levy:", err)
		os.Exit(1)
	}
	code := compat.Wrap(m).Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running levy.
type proc struct {
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string
	// publicAddr is listen.public's bound address ("" without it).
	publicAddr string
	mu         sync.Mutex
	demoKeys   map[string]string
	done       chan error
	stderr     *await.Buffer
	// inProcess is the levy serveInProcess started (nil for a process).
	inProcess *servertest.Levy
}

var demoLine = regexp.MustCompile(`^demo key for plan (\S+): (\S+)$`)

// serve starts `levy serve args...` on free ports and waits until it is
// serving (its "levy serving" log line names the bound addresses).
func serve(t *testing.T, args ...string) *proc {
	t.Helper()
	return serveEnv(t, nil, args...)
}

// serveEnv is serve with env (NAME=value) added to the environment.
func serveEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	args = append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)
	if slices.Contains(args, "redis") && !slices.Contains(args, "--store-timeout") {
		// A Redis call gets a second, not the 50 ms default: on a loaded
		// machine (a cold build beside the tests) a call can take longer,
		// and these tests check answers, not Redis's speed. Tests of a slow
		// store say their own timeout.
		args = append(args, "--store-timeout", "1s")
	}
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderrR, stderrW := io.Pipe()
	cmd.Stderr = stderrW
	p := &proc{cmd: cmd, demoKeys: map[string]string{}, done: make(chan error, 1), stderr: &await.Buffer{}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	var outDone sync.WaitGroup
	outDone.Add(2)
	go func() {
		defer outDone.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := demoLine.FindStringSubmatch(sc.Text()); m != nil {
				p.mu.Lock()
				p.demoKeys[m[1]] = m[2]
				p.mu.Unlock()
			}
		}
	}()
	go func() {
		defer outDone.Done()
		sc := bufio.NewScanner(stderrR)
		signalled := false
		for sc.Scan() {
			p.stderr.Write([]byte(sc.Text() + "\n"))
			var rec struct{ Msg, GRPC, HTTP, Public string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "levy serving" && !signalled {
				p.grpcAddr, p.httpAddr, p.publicAddr, signalled = rec.GRPC, rec.HTTP, rec.Public, true
				close(ready)
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		stderrW.Close()
		outDone.Wait()
		p.done <- err
	}()
	select {
	case <-ready:
	case err := <-p.done:
		t.Fatalf("levy exited before serving: %v\n%s", err, p.stderr.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("levy did not start serving:\n%s", p.stderr.String())
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
		}
		// A race-built levy reports a race on stderr and goes on.
		if log := p.stderr.String(); strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("levy had a data race:\n%s", log)
		}
	})
	return p
}

// serveInProcess runs levy inside the test binary (pkg/server/servertest)
// on the config file cfg, with flags set as levy serve's flags would be,
// and returns it as a proc whose stderr is levy's log.
//
// Which tests keep the binary: those whose subject is the process or its
// command line. SIGKILL and SIGTERM (sigkill_test.go, money_test.go's
// kill mid-export, stop and exit status everywhere), restarts of the
// binary on its data file (TestQuotaSurvivesRestartOfTheBinary,
// TestDemoKeysSurviveRestart, corrupt data files), flags, LEVY_CONFIG,
// GOGC and the exit codes of levy serve, check, usage and billing
// reconcile, reloads of files a running levy watches, replicas sharing a
// Redis (separate processes, as deployed), the open-file and connection
// limits of one process (slowhttp_test.go), and the storm of isolation_test.go
// (a client in the same process would share levy's scheduler). Tests
// that only talk gRPC and HTTP to a server run it in process:
// debit_test.go and ratelimit_test.go's example rule files.
func serveInProcess(t *testing.T, cfg string, flags func(*config.Config)) *proc {
	t.Helper()
	p := &proc{demoKeys: map[string]string{}, stderr: &await.Buffer{}}
	l := servertest.Start(t, cfg, servertest.Options{Flags: flags, Log: p.stderr})
	p.grpcAddr, p.httpAddr, p.publicAddr, p.inProcess = l.GRPCAddr, l.HTTPAddr, l.PublicAddr, l
	return p
}

// demoKey waits for the printed demo key of plan (stdout and the log on
// stderr arrive on separate pipes, in no fixed order).
func (p *proc) demoKey(t *testing.T, plan string) string {
	t.Helper()
	var key string
	waitFor(t, 10*time.Second, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		key = p.demoKeys[plan]
		return key != ""
	})
	return key
}

// stop sends SIGTERM and returns the exit error (nil for exit 0).
func (p *proc) stop(t *testing.T) error {
	t.Helper()
	if p.inProcess != nil {
		return p.inProcess.Stop()
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		return err
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		t.Fatal("levy did not stop within 30s of SIGTERM")
		return nil
	}
}

func (p *proc) client(t *testing.T) *envoyclient.AuthzClient {
	t.Helper()
	conn, err := grpc.NewClient(p.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: 5 * time.Second})
}

func check(t *testing.T, c *envoyclient.AuthzClient, key, path string) *envoyclient.Outcome {
	t.Helper()
	o, err := c.Check(context.Background(), &envoyclient.Request{Path: path, Headers: []envoyclient.Header{{Name: "x-api-key", Value: key}}})
	if err != nil {
		t.Fatal(err)
	}
	if o.RPCError != nil {
		t.Fatalf("RPC error: %v", o.RPCError)
	}
	return o
}

func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	path := filepath.Join(dir, "levy.yaml")
	if err := os.WriteFile(path+".tmp", []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil { // atomic, as a ConfigMap update is
		t.Fatal(err)
	}
	return path
}

func TestDemoKeysAreServedAndTheFreeOneGets429(t *testing.T) {
	p := serve(t, "--demo", "--data-dir", t.TempDir())
	for _, plan := range []string{"free", "pro", "payg"} {
		if k := p.demoKey(t, plan); apikey.Check(k) != nil {
			t.Fatalf("demo key for plan %s is not well formed: %q", plan, k)
		}
	}
	// levy check finds levy where LEVY_GRPC_ADDR says it listens, and
	// exits 1 when levy denied a request, as a script would want.
	cmd := exec.Command(binary, "check", "--key", p.demoKey(t, "free"), "--path", "/v1/items", "--count", "6")
	cmd.Env = append(os.Environ(), "LEVY_GRPC_ADDR="+p.grpcAddr)
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("levy check with a denial: %v, want exit status 1\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"decision: allow", "x-consumer-id: demo-free", "decision: deny", "status:   429", "retry-after:", "of 10 requests per 1m0s exceeded; retry in",
		"levy denied 1 of 6 requests"} {
		if !strings.Contains(text, want) {
			t.Errorf("levy check output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "x-api-key") {
		t.Errorf("the key header shows among the upstream headers:\n%s", text)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// levy check against an address where no levy listens reports what Envoy
// would do, the shipped configs' status_on_error (503), and exits 2: not
// a 403 that reads as a revoked key.
func TestCheckReportsAnUnreachableLevyAs503(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	key, _ := apikey.Generate("levy")
	cmd := exec.Command(binary, "check", "--addr", addr, "--key", key)
	out, _ := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 2 {
		t.Fatalf("exit status %d, want 2\n%s", code, out)
	}
	for _, want := range []string{"status:   503", "levy did not answer", "levy at " + addr + " did not answer 1 of 1 checks (Envoy answers 503)"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// 403 as a number of its own: the address's port may hold the digits
	// (a run failed on 127.0.0.1:40341).
	if regexp.MustCompile(`(^|[^0-9])403([^0-9]|$)`).Match(out) {
		t.Errorf("an unreachable levy reads as 403:\n%s", out)
	}
}

func TestDemoKeysSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, "--demo", "--data-dir", dir)
	first := p.demoKey(t, "pro")
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	p = serve(t, "--demo", "--data-dir", dir)
	if again := p.demoKey(t, "pro"); again != first {
		t.Fatalf("demo key changed across a restart: %s -> %s", first, again)
	}
}

// A bare levy serve, as a production manifest that lost its --config
// would run it, refuses to start and says how to give it a config: it
// never serves the example config, whose demo consumers have printed,
// working keys. LEVY_CONFIG names the file as --config does.
func TestServeWithoutConfigRefusesAndNamesTheOptions(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a levy that serves is killed
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "serve", "--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "LEVY_CONFIG=")
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("levy serve started without a config (%v):\n%s", err, out)
	}
	for _, want := range []string{"--config FILE", "LEVY_CONFIG", "--demo"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "demo key for plan") {
		t.Errorf("a bare serve printed demo keys:\n%s", out)
	}

	key, _ := apikey.Generate("levy")
	cfg := writeConfig(t, dir, fmt.Sprintf(quotaConfig, "daily", key))
	p := serveEnv(t, []string{"LEVY_CONFIG=" + cfg}, "--data-dir", filepath.Join(dir, "data"))
	if o := check(t, p.client(t), key, "/"); !o.Allowed || o.UpstreamHeaders.Get("x-consumer-id") != "acme" {
		t.Fatalf("with LEVY_CONFIG: %d consumer %q", o.Status, o.UpstreamHeaders.Get("x-consumer-id"))
	}
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}

	// --demo with a config adds a demo consumer to each of its plans.
	p = serve(t, "--config", cfg, "--demo", "--data-dir", filepath.Join(dir, "data"))
	if o := check(t, p.client(t), p.demoKey(t, "daily"), "/"); !o.Allowed || o.UpstreamHeaders.Get("x-consumer-id") != "demo-daily" {
		t.Fatalf("demo key of plan daily: %d consumer %q", o.Status, o.UpstreamHeaders.Get("x-consumer-id"))
	}
}

const quotaConfig = `
dev_mode: true
plans:
  daily:
    model: tiered
    rate: {requests: 1000, per: 1s}
    quota: {requests: 5, period: day}
consumers:
  - id: acme
    plan: %s
    keys: [{key: %s}]
`

func TestQuotaSurvivesRestartOfTheBinary(t *testing.T) {
	dir := t.TempDir()
	key, _ := apikey.Generate("levy")
	cfg := writeConfig(t, dir, fmt.Sprintf(quotaConfig, "daily", key))
	p := serve(t, "--config", cfg, "--data-dir", filepath.Join(dir, "data"))
	c := p.client(t)
	for i := 0; i < 3; i++ {
		if o := check(t, c, key, "/"); !o.Allowed {
			t.Fatalf("request %d: %d", i+1, o.Status)
		}
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	p = serve(t, "--config", cfg, "--data-dir", filepath.Join(dir, "data"))
	c = p.client(t)
	for i := 4; i <= 5; i++ {
		if o := check(t, c, key, "/"); !o.Allowed || o.ResponseHeaders.Get("x-ratelimit-remaining") != fmt.Sprint(5-i) {
			t.Fatalf("request %d after restart: %d remaining %s", i, o.Status, o.ResponseHeaders.Get("x-ratelimit-remaining"))
		}
	}
	if o := check(t, c, key, "/"); o.Status != 429 {
		t.Fatalf("6th request of a daily quota of 5 across a restart: %d", o.Status)
	}
}

func TestBadConfigRefusesToStartNamingFileLineAndKey(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "plans:\n  free:\n    model: tiered\n    rate: {requests: 1, pre: 1s}\n")
	out, err := exec.Command(binary, "serve", "--config", cfg, "--data-dir", dir).CombinedOutput()
	if err == nil {
		t.Fatal("levy started with a bad config")
	}
	if want := cfg + `:4: unknown key "plans.free.rate.pre"`; !strings.Contains(string(out), want) {
		t.Fatalf("output lacks %q:\n%s", want, out)
	}
	out, err = exec.Command(binary, "config", "validate", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), ":4:") {
		t.Fatalf("config validate: %v\n%s", err, out)
	}
}

func TestConfigReloadChangesPlanAndBadReloadKeepsTheOld(t *testing.T) {
	dir := t.TempDir()
	key, _ := apikey.Generate("levy")
	text := `
dev_mode: true
plans:
  small: {model: tiered, rate: {requests: 1, per: 1h}}
  big: {model: tiered, rate: {requests: 1000, per: 1s}}
consumers:
  - {id: acme, plan: PLAN, keys: [{key: KEY}]}
`
	cfgFor := func(plan string) string {
		return strings.NewReplacer("PLAN", plan, "KEY", key).Replace(text)
	}
	cfg := writeConfig(t, dir, cfgFor("small"))
	p := serve(t, "--config", cfg, "--data-dir", filepath.Join(dir, "data"))
	c := p.client(t)
	check(t, c, key, "/")
	if o := check(t, c, key, "/"); o.Status != 429 {
		t.Fatalf("small plan: %d", o.Status)
	}
	writeConfig(t, dir, cfgFor("big"))
	waitFor(t, 10*time.Second, func() bool { return check(t, c, key, "/").Allowed })
	if o := check(t, c, key, "/"); o.UpstreamHeaders.Get("x-consumer-plan") != "big" {
		t.Fatalf("after reload: plan %q", o.UpstreamHeaders.Get("x-consumer-plan"))
	}
	writeConfig(t, dir, cfgFor("big")+"bogus: true\n")
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(p.stderr.String(), "config reload failed") })
	if o := check(t, c, key, "/"); !o.Allowed || o.UpstreamHeaders.Get("x-consumer-plan") != "big" {
		t.Fatalf("after a bad reload: %d plan %q, want the old config kept", o.Status, o.UpstreamHeaders.Get("x-consumer-plan"))
	}
	if !strings.Contains(p.stderr.String(), `unknown key \"bogus\"`) {
		t.Errorf("the reload error does not name the key:\n%s", p.stderr.String())
	}
}

func TestLogsNeverContainTheKey(t *testing.T) {
	dir := t.TempDir()
	key, _ := apikey.Generate("levy")
	cfg := writeConfig(t, dir, "log: {level: debug}\n"+fmt.Sprintf(quotaConfig, "daily", key))
	p := serve(t, "--config", cfg, "--data-dir", filepath.Join(dir, "data"))
	c := p.client(t)
	for i := 0; i < 7; i++ {
		check(t, c, key, "/")
	}
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	logs := p.stderr.String()
	if !strings.Contains(logs, `"consumer":"acme"`) || !strings.Contains(logs, "request_id") {
		t.Fatalf("debug logs lack decisions:\n%s", logs)
	}
	if strings.Contains(logs, key) || strings.Contains(logs, key[5:20]) {
		t.Fatal("the API key appears in the logs")
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	await.Until(t, timeout, cond, "the condition")
}

func runLevy(args ...string) (string, error) {
	out, err := exec.Command(binary, args...).CombinedOutput()
	return string(out), err
}

type grpcConn = grpc.ClientConn

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// metrics is the process's /metrics page.
func (p *proc) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + p.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// TestServeCollectsGarbageLessOftenUnlessGOGCIsSet checks the GC target an
// operator sees in /metrics: levy serve's own (400) by default, GOGC's
// when it is set.
func TestServeCollectsGarbageLessOftenUnlessGOGCIsSet(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"GOGC="}, "go_gc_gogc_percent 400\n"}, // unset, whatever the tests run with
		{[]string{"GOGC=150"}, "go_gc_gogc_percent 150\n"},
	} {
		p := serveEnv(t, tc.env, "--demo", "--data-dir", t.TempDir())
		if m := p.metrics(t); !strings.Contains(m, tc.want) {
			t.Errorf("with %v, /metrics has no %q:\n%s", tc.env, tc.want, grepLines(m, "go_gc_gogc"))
		}
		if err := p.stop(t); err != nil {
			t.Fatal(err)
		}
	}
}

// grepLines is the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

// A data file that is empty or corrupt stops levy at start with a message
// that says so: no panic, no crash loop of stack traces, and no start as
// if the file were new (every quota reset).
func TestCorruptDataFileRefusesToStartWithAClearError(t *testing.T) {
	dir := t.TempDir()
	p := serve(t, "--demo", "--data-dir", dir)
	check(t, p.client(t), p.demoKey(t, "free"), "/") // some counters on disk
	if err := p.stop(t); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "levy.db")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, give := range map[string][]byte{
		"empty":     {},
		"truncated": good[:len(good)/3],
		"garbage":   append(append([]byte{}, good[:4096]...), bytes.Repeat([]byte{0xA5}, len(good)-4096)...),
	} {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, give, 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(binary, "serve", "--demo", "--data-dir", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
			done := make(chan struct{})
			var out []byte
			go func() { out, _ = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("levy started on a %s data file:\n%s", name, out)
			}
			if cmd.ProcessState.ExitCode() == 0 || bytes.Contains(out, []byte("panic")) || bytes.Contains(out, []byte("goroutine ")) ||
				!bytes.Contains(out, []byte("levy.db")) {
				t.Fatalf("exit %d, output:\n%s", cmd.ProcessState.ExitCode(), out)
			}
		})
	}
}
