package bench

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/levyhq/levy/pkg/await"
)

// BenchmarkCheckOutside measures Check as a load test from outside would:
// levy serve, built from ./cmd/levy and run on a config of 200 consumers,
// and a no-op ext_authz server as one is usually written (grpc-go's
// defaults, protobuf decoding each request: noop-plain), each in a process
// of its own, called from this one by 32 callers on 2 connections, in
// alternating slices (see versus).
// levy runs on its local store and on Redis (the Redis of
// BenchmarkCheckRedis, or LEVY_BENCH_REDIS_ADDR). Each process collects
// its own garbage at its own pace (levy serve at GOGC=400), which the
// in-process benchmarks, sharing one runtime with their callers, cannot
// show. It reports what versus reports, x-noop-plain being levy's
// checks/s over the no-op's, and each server's own CPU per call.
func BenchmarkCheckOutside(b *testing.B) {
	bin := levyBinary(b)
	for _, name := range []string{"local", "redis"} {
		b.Run(name, func(b *testing.B) {
			var st *store
			if name == "redis" {
				st = redisStore(b)
			}
			cfg, reqs := outsideConfig(b)
			levy := startOutside(b, "levy", bin, levyArgs(b, cfg, st)...)
			levy.redis = st.serversOrNil()
			noop := startOutside(b, "noop-plain", os.Args[0], "-test.run=^$")
			for _, t := range []*target{levy, noop} {
				t.method, t.check, t.nconns = checkMethod, (*wireResponse).allowed, 2
				dial(b, t, []request{{msgs: reqs}})
			}
			versus(b, levy, noop, reqs)
		})
	}
}

// envServeNoop makes this test binary a no-op ext_authz server on the
// address it names, and nothing else (see TestMain).
const envServeNoop = "LEVY_BENCH_SERVE_NOOP"

func TestMain(m *testing.M) {
	if addr := os.Getenv(envServeNoop); addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		g := grpc.NewServer()
		authv3.RegisterAuthorizationServer(g, NewNoop())
		fmt.Fprintln(os.Stderr, g.Serve(l))
		os.Exit(1)
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

var (
	buildOnce  sync.Once
	buildDir   string // levy's, removed by TestMain
	builtLevy  string
	buildError error
)

// levyBinary builds levy once per run.
func levyBinary(b *testing.B) string {
	buildOnce.Do(func() {
		buildDir, buildError = os.MkdirTemp("", "levy-bench")
		if buildError != nil {
			return
		}
		builtLevy = filepath.Join(buildDir, "levy")
		out, err := exec.Command("go", "build", "-o", builtLevy, "../../cmd/levy").CombinedOutput()
		if err != nil {
			buildError = fmt.Errorf("go build ./cmd/levy: %v\n%s", err, out)
		}
	})
	if buildError != nil {
		b.Fatal(buildError)
	}
	return builtLevy
}

// outsideConfig writes benchConfig's plan and consumers (without its
// store, which levy serve is told in flags) and returns its path and a
// CheckRequest for each consumer's key.
func outsideConfig(b *testing.B) (string, []proto.Message) {
	consumers, reqs := benchCheckConsumers(b)
	text := strings.Replace(benchConfig, "store:\n  type: local\n  data_dir: %s\n", "", 1) + consumers
	if strings.Contains(text, "%s") {
		b.Fatal("benchConfig's store section changed: outsideConfig must cut it out")
	}
	path := filepath.Join(b.TempDir(), "levy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		b.Fatal(err)
	}
	return path, reqs
}

// levyArgs are levy serve's arguments for the config at cfg on st (nil:
// the local store, in a temporary directory).
func levyArgs(b *testing.B, cfg string, st *store) []string {
	args := []string{"serve", "--config", cfg}
	if st == nil {
		return append(args, "--store", "local", "--data-dir", b.TempDir())
	}
	return append(args, "--store", "redis", "--redis-addr", st.redis.(*redis.Client).Options().Addr,
		"--store-timeout", redisTimeout.String())
}

// serversOrNil is the Redis servers of st, nil for the local store.
func (st *store) serversOrNil() redisServers {
	if st == nil {
		return nil
	}
	return st.servers
}

// startOutside starts bin with args as a server in a process of its own,
// on free ports, and returns it as a target once its gRPC port takes
// calls; the process is stopped when b ends (or this process dies).
// levy serve gets --grpc-addr and --http-addr; the no-op (this binary)
// its address in envServeNoop.
func startOutside(b *testing.B, name, bin string, args ...string) *target {
	b.Helper()
	grpcAddr := freeAddr(b)
	cmd := exec.Command(bin, args...)
	dieWithParent(cmd)
	cmd.Env = childEnv()
	var ready func() error
	if name != "levy" {
		cmd.Env = append(cmd.Env, envServeNoop+"="+grpcAddr)
		ready = func() error {
			c, err := net.Dial("tcp", grpcAddr)
			if err == nil {
				c.Close()
			}
			return err
		}
	} else {
		httpAddr := freeAddr(b)
		cmd.Args = append(cmd.Args, "--grpc-addr", grpcAddr, "--http-addr", httpAddr)
		ready = func() error {
			resp, err := http.Get("http://" + httpAddr + "/readyz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("readyz: %s", resp.Status)
			}
			return nil
		}
	}
	var stderr await.Buffer // what the server says, for when it fails
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	err := await.Poll(time.Minute, func() error {
		select {
		case <-exited:
			return await.Halt(fmt.Errorf("%s exited: %s", name, stderr.String()))
		default:
		}
		return ready()
	})
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	pid := cmd.Process.Pid
	return &target{name: name, addr: grpcAddr, serverCPU: func() (time.Duration, error) { return processCPUOf(pid) }}
}

// childEnv is this process's environment without levy's and Stripe's
// variables: levy serve reads LEVY_* and STRIPE_* (a log level, a Redis
// password or TLS, Stripe keys), which would change what is measured or
// stop it; the benchmark says what it runs with in flags.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LEVY_") && !strings.HasPrefix(kv, "STRIPE_") {
			env = append(env, kv)
		}
	}
	return env
}

// freeAddr is a loopback address whose port was free a moment ago.
func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
