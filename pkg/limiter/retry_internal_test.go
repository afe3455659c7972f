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

// retryRig is levy's Redis limiter on a new 3-master cluster through a
// retryClient, with the script loaded on every master.
func retryRig(t *testing.T) (*Redis, *redis.ClusterClient, *redistest.Cluster, *atomic.Bool) {
	t.Helper()
	cluster := redistest.StartCluster(t)
	armed := new(atomic.Bool)
	client := retryClient(t, cluster.Addrs(), armed)
	r := NewRedis(RedisConfig{Client: client, Cluster: true, Timeout: 2 * time.Second, ReplyWait: 5 * time.Second, Log: zaptest.NewLogger(t)})
	t.Cleanup(func() { r.Close() })
	return r, client, cluster, armed
}

// keysOnMaster is n bucket keys (prefix and a number) served by master,
// none in skip's slot, each taken once at cost 0 (which loads the script).
func keysOnMaster(t *testing.T, r *Redis, client *redis.ClusterClient, master *redis.Client, prefix, skip string, n int) []string {
	t.Helper()
	ctx := context.Background()
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("{c:%s-%d}:rate", prefix, i)
		if m, _ := client.MasterForKey(ctx, k); m.Options().Addr == master.Options().Addr && Slot(k) != Slot(skip) {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		if _, err := r.Decide(ctx, hourBucket(k, 0)); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// slotCall is one call of limits, alone in its slot.
func slotCall(limits []Limit) slotCalls {
	c := &call{ctx: context.Background(), limits: limits, slot: Slot(limits[0].Key), done: make(chan struct{})}
	return slotCalls{calls: []*call{c}, limits: [][]Limit{limits}}
}

// wantTakenOnce fails unless each key's hourly bucket of 100 holds 99:
// one decision of cost 1 counted once.
func wantTakenOnce(t *testing.T, r *Redis, keys ...string) {
	t.Helper()
	for _, k := range keys {
		d, err := r.Decide(context.Background(), hourBucket(k, 0))
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Statuses[0].Remaining; got != 99 {
			t.Errorf("%s: %d left after one decision of cost 1, want 99", k, got)
		}
	}
}

// A connection that breaks after a master's pipeline was sent: go-redis's
// cluster pipeline re-sends every call of that master's pipeline
// (MaxRetries: -1 does not apply to it; MaxRedirects, default 3, does),
// and each would count twice. Each is counted once, and its caller told
// of the error.
func TestClusterPipelineNotSentAgainAfterBrokenConnection(t *testing.T) {
	r, client, _, armed := retryRig(t)
	master, err := client.MasterForKey(context.Background(), "{c:once-0}:rate")
	if err != nil {
		t.Fatal(err)
	}
	keys := keysOnMaster(t, r, client, master, "once", "", 4)
	var slots []slotCalls
	for _, k := range keys {
		slots = append(slots, slotCall(hourBucket(k, 1)))
	}
	armed.Store(true)
	r.decideSlots(context.Background(), slots)
	for i, s := range slots {
		c := s.calls[0]
		<-c.done
		if c.err == nil { // its reply was lost: the caller cannot know it was decided
			t.Errorf("%s: answered %+v without an error", keys[i], c.d)
		}
	}
	wantTakenOnce(t, r, keys...)
}

// A slot being migrated, with only some of a call's keys still on its
// master, answers TRYAGAIN. When that call is the first of its master's
// pipeline, go-redis re-sends the whole pipeline (pipelineReadCmds checks
// cmds[0] alone), up to MaxRedirects+1 times, and the other slots' calls,
// which succeeded, would run again each time. They count once.
func TestClusterPipelineNotSentAgainAfterTryAgain(t *testing.T) {
	r, client, cluster, _ := retryRig(t)
	ctx := context.Background()
	migr := "{c:mig}"
	master, err := client.MasterForKey(ctx, migr+":a")
	if err != nil {
		t.Fatal(err)
	}
	others := keysOnMaster(t, r, client, master, "tryagain", migr, 3)
	if _, err := r.Decide(ctx, hourBucket(migr+":a", 1)); err != nil { // :a exists, :b does not
		t.Fatal(err)
	}
	var target string
	for _, n := range cluster.Nodes {
		if n.Addr != master.Options().Addr {
			if target, err = n.Client().ClusterMyID(ctx).Result(); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if err := master.Do(ctx, "cluster", "setslot", Slot(migr), "migrating", target).Err(); err != nil {
		t.Fatal(err)
	}
	mig := append(hourBucket(migr+":a", 1), hourBucket(migr+":b", 1)[0])
	mig[1].Name = "rate2"
	slots := []slotCalls{slotCall(mig)}
	for _, k := range others {
		slots = append(slots, slotCall(hourBucket(k, 1)))
	}
	r.decideSlots(ctx, slots)
	for i, s := range slots {
		c := s.calls[0]
		<-c.done
		switch {
		case i == 0 && c.err == nil:
			t.Errorf("the migrating slot's call was answered %+v, want TRYAGAIN's error", c.d)
		case i > 0 && (c.err != nil || !c.d.OK):
			t.Errorf("%s: %+v, %v: want allowed", others[i-1], c.d, c.err)
		}
	}
	if err := master.Do(ctx, "cluster", "setslot", Slot(migr), "stable").Err(); err != nil {
		t.Fatal(err)
	}
	wantTakenOnce(t, r, others...)
}

// The same broken connection under one script call alone (Redis.eval).
func TestClusterCallNotSentAgainAfterBrokenConnection(t *testing.T) {
	r, _, _, armed := retryRig(t)
	k := "{c:single}:rate"
	if _, err := r.Decide(context.Background(), hourBucket(k, 0)); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	if _, _, err := r.runBatch(context.Background(), r.decideScript, [][]Limit{hourBucket(k, 1)}); err == nil {
		t.Error("a decision whose reply was lost answered without an error")
	}
	wantTakenOnce(t, r, k)
}
