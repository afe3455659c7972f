// Package redistest starts real redis-server processes for tests: a
// standalone server or a Redis Cluster (three masters, or as many as a
// test asks for), on free loopback ports, in the test's temp dir, stopped
// when the test ends. It never touches the machine's shared Redis on 6379.
package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/await"
)

// Server is one redis-server process.
type Server struct {
	t    testing.TB
	Addr string
	dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// freePort asks the kernel for a free loopback port.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// freeClusterPort is a free loopback port whose cluster bus port (10000
// higher, so at most 55535) is free too.
func freeClusterPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := freePort(t)
		if port > 55535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		bus.Close()
		return port
	}
	t.Fatal("no free port with a free cluster bus port")
	return 0
}

// Start runs a standalone redis-server with AOF off and no snapshots.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	return startFree(t, freePort, extra...)
}

// portTries bounds how many fresh ports a server is tried on.
const portTries = 20

// errPortTaken is a redis-server that could not bind its port.
var errPortTaken = errors.New("port taken")

// startFree starts a server on a port pick chose free. The port is not
// reserved between the pick and redis-server's bind (it closes the probe
// listener first), so a test in another package may take it meanwhile:
// redis-server then exits with "Address already in use" and the server is
// tried again on a fresh port.
func startFree(t testing.TB, pick func(testing.TB) int, extra ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed (apt-get install redis-server); .ci/run installs it")
	}
	for try := 1; ; try++ {
		port := pick(t)
		dir := t.TempDir()
		s := &Server{t: t, Addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir}
		s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", dir, "--protected-mode", "no", "--logfile", filepath.Join(dir, "redis.log")}, extra...)
		err := s.launch()
		if err == nil {
			t.Cleanup(s.Kill)
			return s
		}
		if !errors.Is(err, errPortTaken) || try == portTries {
			t.Fatal(err)
		}
	}
}

func (s *Server) start() {
	s.t.Helper()
	if err := s.launch(); err != nil {
		s.t.Fatal(err)
	}
}

// launch runs redis-server with s.args and waits until it answers on
// s.Addr. It is ready when the server there is this process (another
// test's redis-server may hold the port); errPortTaken when it could not
// bind.
func (s *Server) launch() error {
	s.cmd = exec.Command("redis-server", s.args...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	pid := "process_id:" + strconv.Itoa(s.cmd.Process.Pid) + "\r\n"
	err := await.Poll(10*time.Second, func() error {
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			if bytes.Contains(log, []byte("Address already in use")) {
				return await.Halt(fmt.Errorf("redis-server on %s: %w", s.Addr, errPortTaken))
			}
			return await.Halt(fmt.Errorf("redis-server exited at start:\n%s", log))
		default:
		}
		info, err := c.Info(context.Background(), "server").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, pid) {
			return errors.New("another process's redis-server answers")
		}
		return nil
	})
	if err != nil && !errors.Is(err, errPortTaken) {
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("redis-server on %s not ready: %w", s.Addr, err)
	}
	return err
}

// Kill stops the server at once (SIGKILL).
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

// Restart kills the server and starts it again on the same port, empty
// unless persistence flags were given.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.start()
}

// Pause stops the process (SIGSTOP) so that it accepts connections but
// answers nothing: a slow Redis. Resume undoes it.
func (s *Server) Pause() { s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { s.cmd.Process.Signal(syscall.SIGCONT) }

// Client returns a client of this server, closed with the test.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// Cluster is a Redis Cluster of masters without replicas.
type Cluster struct {
	Nodes []*Server
}

// Addrs lists the masters.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// Client returns a cluster client, closed with the test.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	t.Cleanup(func() { cc.Close() })
	return cc
}

// StartCluster runs three cluster-enabled servers, with extra arguments,
// and joins them with redis-cli --cluster create.
func StartCluster(t testing.TB, extra ...string) *Cluster {
	t.Helper()
	return StartClusterOf(t, 3, extra...)
}

// StartClusterOf runs a cluster of masters cluster-enabled servers, with
// extra arguments, each serving an equal share of the 16384 hash slots.
// Three or more are joined with redis-cli --cluster create; fewer, which
// it refuses, are given their slots with CLUSTER ADDSLOTS and joined with
// CLUSTER MEET: one master serving every slot is a cluster all the same,
// with MOVED, hash tags and cross-slot rules, on one redis-server.
func StartClusterOf(t testing.TB, masters int, extra ...string) *Cluster {
	t.Helper()
	if masters < 1 {
		t.Fatalf("a cluster of %d masters", masters)
	}
	c := &Cluster{}
	for range masters {
		args := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"}, extra...)
		c.Nodes = append(c.Nodes, startFree(t, freeClusterPort, args...))
	}
	if masters >= 3 {
		args := append([]string{"--cluster", "create"}, c.Addrs()...)
		args = append(args, "--cluster-replicas", "0", "--cluster-yes")
		out, err := exec.Command("redis-cli", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
		}
	} else {
		c.assignSlots(t)
	}
	// Wait until every node agrees the cluster is ok.
	for _, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr})
		err := await.Poll(20*time.Second, func() error {
			info, err := cl.ClusterInfo(context.Background()).Result()
			if err != nil {
				return err
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("node %s: %s", n.Addr, info)
			}
			return nil
		})
		cl.Close()
		if err != nil {
			t.Fatalf("cluster not ok: %v", err)
		}
	}
	return c
}

// assignSlots gives each node an equal range of the hash slots and has
// the others meet the first, as redis-cli --cluster create does.
func (c *Cluster) assignSlots(t testing.TB) {
	t.Helper()
	const slots = 16384
	ctx := context.Background()
	host, port, _ := net.SplitHostPort(c.Nodes[0].Addr)
	for i, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr})
		lo, hi := i*slots/len(c.Nodes), (i+1)*slots/len(c.Nodes)-1
		err := cl.ClusterAddSlotsRange(ctx, lo, hi).Err()
		if err == nil && i > 0 {
			err = cl.ClusterMeet(ctx, host, port).Err()
		}
		cl.Close()
		if err != nil {
			t.Fatalf("cluster node %s: slots %d-%d: %v", n.Addr, lo, hi, err)
		}
	}
}

// CommandCalls returns how many times cmd ran on the server (from INFO
// commandstats), e.g. "evalsha".
func CommandCalls(ctx context.Context, c redis.UniversalClient, cmd string) (int64, error) {
	var mu sync.Mutex
	var total int64
	count := func(info string) {
		mu.Lock()
		defer mu.Unlock()
		for _, line := range strings.Split(info, "\n") {
			if !strings.HasPrefix(line, "cmdstat_"+cmd+":") {
				continue
			}
			for _, f := range strings.Split(strings.TrimPrefix(line, "cmdstat_"+cmd+":"), ",") {
				if v, ok := strings.CutPrefix(f, "calls="); ok {
					n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					total += n
				}
			}
		}
	}
	switch cl := c.(type) {
	case *redis.ClusterClient:
		err := cl.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			info, err := m.Info(ctx, "commandstats").Result()
			count(info)
			return err
		})
		return total, err
	default:
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			return 0, fmt.Errorf("info commandstats: %w", err)
		}
		count(info)
		return total, nil
	}
}

// ScriptArgGuard, put before a Lua script, makes its redis.call refuse
// any argument that is not a string. Redis 7.2.0 to 7.2.4 write a whole
// number with eight or more trailing zeros in scientific notation (1e+08),
// which PEXPIRE and SET PX refuse and counters keep as text, so levy's
// scripts pass every number as a string made with %d; the guard finds a
// number passed as it is on any Redis, whatever its value.
const ScriptArgGuard = `local redis = setmetatable({call = function(...)
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    if type(a) ~= "string" then
      error("redis.call(" .. tostring((...)) .. ", ...): argument " .. i .. " is a " .. type(a) .. ", not a string")
    end
  end
  return redis.call(...)
end}, {__index = redis})
`
