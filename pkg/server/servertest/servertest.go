// Package servertest runs a whole levy server inside a test, as levy serve
// runs it (the config file, then the environment, then what flags would
// set; then server.New and Run), on loopback ports that the kernel picks.
// It is for tests that talk to levy over gRPC and HTTP and need no process
// of their own: gubernator's cluster.StartWith, for levy. A test about the
// process itself (signals, SIGKILL, exit codes, the CLI) builds the binary.
// For a test of the ext_authz server alone, Snapshot builds what levy
// serve would serve it from a config text, and WithKeys puts fresh API
// keys in that text.
package servertest

import (
	"bufio"
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/server"
)

// Options configure Start. The zero value serves the file as levy serve
// --config would, on 127.0.0.1:0 and a data directory of the test's own.
type Options struct {
	// Flags sets what levy serve's flags would: after the file and the
	// environment, before validation, and again on every reload.
	Flags func(*config.Config)
	// Log receives levy's JSON log lines (levy serve's stderr); nil keeps
	// them for Levy.Log only.
	Log io.Writer
	// Server is passed to server.New; Log, Out and Reload are Start's.
	Server server.Options
}

// Levy is a levy server running inside the test.
type Levy struct {
	GRPCAddr, HTTPAddr string
	// PublicAddr is listen.public's bound address ("" without it).
	PublicAddr string

	out, log await.Buffer
	stop     func() error
	stopped  sync.Once
	runErr   error
}

// Start serves the config file at path until the test ends (or Stop).
func Start(t testing.TB, path string, opts Options) *Levy {
	t.Helper()
	data := filepath.Join(t.TempDir(), "data")
	flags := func(c *config.Config) {
		c.Listen.GRPC, c.Listen.HTTP = "127.0.0.1:0", "127.0.0.1:0"
		c.Store.DataDir = data
		if opts.Flags != nil {
			opts.Flags(c)
		}
	}
	load := func() (*config.Config, error) {
		c, err := config.ParseFile(path)
		if err != nil {
			return nil, err
		}
		c.ApplyEnv(nil)
		flags(c)
		return c, c.Validate()
	}
	cfg, err := load()
	if err != nil {
		t.Fatalf("levy config %s: %v", path, err)
	}
	l := &Levy{}
	logTo := io.Writer(&l.log)
	if opts.Log != nil {
		logTo = io.MultiWriter(&l.log, opts.Log)
	}
	level, err := zapcore.ParseLevel(cfg.Log.Level)
	if err != nil {
		t.Fatal(err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "ts"
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(logTo), level))
	so := opts.Server
	so.Log, so.Out, so.Reload = log, &l.out, load
	srv, err := server.New(cfg, so)
	if err != nil {
		t.Fatalf("levy did not start: %v", err)
	}
	l.GRPCAddr, l.HTTPAddr, l.PublicAddr = srv.GRPCAddr(), srv.HTTPAddr(), srv.PublicAddr()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	l.stop = func() error {
		l.stopped.Do(func() { cancel(); l.runErr = <-done })
		return l.runErr
	}
	t.Cleanup(func() {
		if err := l.Stop(); err != nil {
			t.Errorf("levy stopped with %v", err)
		}
	})
	return l
}

// Stop ends Run, as SIGTERM ends levy serve, and returns its error; later
// calls return the same.
func (l *Levy) Stop() error { return l.stop() }

// Log is what levy has logged so far, a JSON object a line.
func (l *Levy) Log() string { return l.log.String() }

// DemoKey is the printed demo key of plan ("" when there is none).
func (l *Levy) DemoKey(plan string) string {
	sc := bufio.NewScanner(strings.NewReader(l.out.String()))
	for sc.Scan() {
		if key, ok := strings.CutPrefix(sc.Text(), "demo key for plan "+plan+": "); ok {
			return key
		}
	}
	return ""
}
