package limiter

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/redistest"
)

// eofConn forwards to a real connection; armed, the first write that holds
// an EVALSHA reaches Redis, and once the reply has come (so Redis ran
// every call of that write) the reader gets EOF instead, as from a
// connection reset after the send.
type eofConn struct {
	net.Conn
	armed *atomic.Bool
	cut   bool
}

func (c *eofConn) Write(p []byte) (int, error) {
	if strings.Contains(strings.ToLower(string(p)), "evalsha") && c.armed.CompareAndSwap(true, false) {
		c.cut = true
	}
	return c.Conn.Write(p)
}

func (c *eofConn) Read(p []byte) (int, error) {
	if c.cut {
		if _, err := c.Conn.Read(p); err != nil { // the reply: the calls ran
			return 0, err
		}
		c.Conn.Close()
		return 0, io.EOF
	}
	return c.Conn.Read(p)
}

// retryClient is a cluster client with levy's options (redisstore.NewClient:
// MaxRetries -1, MaxRedirects go-redis's default), through eofConns.
func retryClient(t *testing.T, addrs []string, armed *atomic.Bool) *redis.ClusterClient {
	c := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: addrs, DialTimeout: time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: time.Second,
		ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1, PoolSize: 64, ConnMaxIdleTime: time.Minute,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			cn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &eofConn{Conn: cn, armed: armed}, nil
		},
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func hourBucket(key string, cost int64) []Limit {
	return []Limit{{Kind: Bucket, Name: "rate", Key: key, Cost: cost, Requests: 100, Per: time.Hour}}
}

// A connection that breaks after a master's pipeline was sent: go-redis's
// cluster pipeline re-sends every command of that master's pipeline
// (MaxRetries: -1 does not apply to it; MaxRedirects, default 3, does),
// so every slot's script runs twice: a decision is charged twice.
// A connection that breaks after a master's pipeline was sent: go-redis
// would send the whole pipeline again, and every call in it would count
// twice. Each is counted once, and its caller told of the error.
func TestClusterPipelineNotSentAgainAfterBrokenConnection(t *testing.T) {
	cluster := redistest.StartCluster(t)
	var armed atomic.Bool
	client := retryClient(t, cluster.Addrs(), &armed)
	r := NewRedis(RedisConfig{Client: client, Cluster: true, Timeout: 2 * time.Second, ReplyWait: 5 * time.Second, Log: zaptest.NewLogger(t)})
	t.Cleanup(func() { r.Close() })
	ctx := context.Background()
	// Keys on one master, in different slots.
	m0, _ := client.MasterForKey(ctx, "{c:once-0}:rate")
	var keys []string
	for i := 0; len(keys) < 4; i++ {
		k := fmt.Sprintf("{c:once-%d}:rate", i)
		if m, _ := client.MasterForKey(ctx, k); m.Options().Addr == m0.Options().Addr {
			keys = append(keys, k)
		}
	}
	// Load the script everywhere first.
	for _, k := range keys {
		if _, err := r.Decide(ctx, hourBucket(k, 0)); err != nil {
			t.Fatal(err)
		}
	}
	// One pipeline holding the four slots' calls.
	slots := make([]slotCalls, len(keys))
	calls := make([]*call, len(keys))
	for i, k := range keys {
		calls[i] = &call{ctx: ctx, limits: hourBucket(k, 1), slot: Slot(k), done: make(chan struct{})}
		slots[i] = slotCalls{calls: []*call{calls[i]}, limits: [][]Limit{calls[i].limits}}
	}
	armed.Store(true)
	r.decideSlots(ctx, slots)
	for i, c := range calls {
		<-c.done
		if c.err == nil { // its reply was lost: the caller cannot know it was decided
			t.Errorf("%s: answered %+v without an error", keys[i], c.d)
		}
	}
	for _, k := range keys {
		d, err := r.Decide(ctx, hourBucket(k, 0))
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Statuses[0].Remaining; got != 99 {
			t.Errorf("%s: %d left after one decision of cost 1, want 99", k, got)
		}
	}
}

// A slot being migrated, with only some of a call's keys still on its
// master, answers TRYAGAIN. When that call is the first of its master's
// pipeline, go-redis re-sends the whole pipeline (pipelineReadCmds checks
// cmds[0] alone), up to MaxRedirects+1 times: the other slots' calls,
// which succeeded, run again each time.
// A TRYAGAIN answered to the first call of a master's pipeline (a slot
// migrating, some of its keys moved): go-redis would send every call of
// that master again, up to MaxRedirects times. The others count once.
func TestClusterPipelineNotSentAgainAfterTryAgain(t *testing.T) {
	cluster := redistest.StartCluster(t)
	client := cluster.Client(t)
	client = redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs(), ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { client.Close() })
	r := NewRedis(RedisConfig{Client: client, Cluster: true, Timeout: 2 * time.Second, ReplyWait: 5 * time.Second, Log: zaptest.NewLogger(t)})
	t.Cleanup(func() { r.Close() })
	ctx := context.Background()
	migr := "{c:mig}"
	m0, err := client.MasterForKey(ctx, migr+":a")
	if err != nil {
		t.Fatal(err)
	}
	var others []string
	for i := 0; len(others) < 3; i++ {
		k := fmt.Sprintf("{c:tryagain-%d}:rate", i)
		if m, _ := client.MasterForKey(ctx, k); m.Options().Addr == m0.Options().Addr && Slot(k) != Slot(migr) {
			others = append(others, k)
		}
	}
	for _, k := range append([]string{migr + ":a"}, others...) {
		if _, err := r.Decide(ctx, hourBucket(k, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Decide(ctx, hourBucket(migr+":a", 1)); err != nil { // :a exists
		t.Fatal(err)
	}
	// Migrate the slot toward another master: {c:mig}:a exists here, :b does not.
	var target string
	for _, n := range cluster.Nodes {
		if n.Addr != m0.Options().Addr {
			target, err = n.Client().ClusterMyID(ctx).Result()
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if err := m0.Do(ctx, "cluster", "setslot", Slot(migr), "migrating", target).Err(); err != nil {
		t.Fatal(err)
	}
	mig := append(hourBucket(migr+":a", 1), hourBucket(migr+":b", 1)[0])
	mig[1].Name = "rate2"
	slots := []slotCalls{{calls: []*call{{ctx: ctx, limits: mig, slot: Slot(migr), done: make(chan struct{})}}, limits: [][]Limit{mig}}}
	for _, k := range others {
		c := &call{ctx: ctx, limits: hourBucket(k, 1), slot: Slot(k), done: make(chan struct{})}
		slots = append(slots, slotCalls{calls: []*call{c}, limits: [][]Limit{c.limits}})
	}
	r.decideSlots(ctx, slots)
	for _, s := range slots {
		<-s.calls[0].done
		t.Logf("%s: ok=%v err=%v", s.limits[0][0].Key, s.calls[0].d.OK, s.calls[0].err)
	}
	if err := m0.Do(ctx, "cluster", "setslot", Slot(migr), "stable").Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range others {
		d, err := r.Decide(ctx, hourBucket(k, 0))
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Statuses[0].Remaining; got != 99 {
			t.Errorf("%s: %d left after one decision of cost 1, want 99", k, got)
		}
	}
}

// The same broken connection under one script call alone (Redis.eval).
func TestClusterCallNotSentAgainAfterBrokenConnection(t *testing.T) {
	cluster := redistest.StartCluster(t)
	var armed atomic.Bool
	client := retryClient(t, cluster.Addrs(), &armed)
	r := NewRedis(RedisConfig{Client: client, Cluster: true, Timeout: 2 * time.Second, ReplyWait: 5 * time.Second, Log: zaptest.NewLogger(t)})
	t.Cleanup(func() { r.Close() })
	ctx := context.Background()
	k := "{c:single}:rate"
	if _, err := r.Decide(ctx, hourBucket(k, 0)); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	_, _, err := r.runBatch(ctx, r.decideScript, [][]Limit{hourBucket(k, 1)})
	t.Logf("runBatch: %v", err)
	d, _ := r.Decide(ctx, hourBucket(k, 0))
	if got := d.Statuses[0].Remaining; got != 99 {
		t.Errorf("%s: %d left after one decision of cost 1, want 99", k, got)
	}
}
