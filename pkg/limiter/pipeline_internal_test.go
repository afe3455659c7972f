package limiter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// masterTrips counts the script calls a cluster client's masters were
// sent, by master address: the pipelines that held them, and those sent
// alone, EVALSHA and EVAL apart.
type masterTrips struct {
	mu        sync.Mutex
	pipelines map[string]int
	evalsha   map[string]int // in pipelines
	eval      map[string]int // in pipelines
	alone     map[string]int // script calls sent as a command of their own
}

func newMasterTrips() *masterTrips {
	m := &masterTrips{}
	m.reset()
	return m
}

func (m *masterTrips) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pipelines, m.evalsha, m.eval, m.alone = map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
}

// hook is a go-redis hook for the node client of master addr.
func (m *masterTrips) hook(addr string) redis.Hook { return &masterHook{m, addr} }

type masterHook struct {
	trips *masterTrips
	addr  string
}

func (h *masterHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *masterHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			h.trips.mu.Lock()
			h.trips.alone[h.addr]++
			h.trips.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func (h *masterHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.mu.Lock()
		scripts := 0
		for _, cmd := range cmds {
			switch cmd.Name() {
			case "evalsha":
				h.trips.evalsha[h.addr]++
				scripts++
			case "eval":
				h.trips.eval[h.addr]++
				scripts++
			}
		}
		if scripts > 0 {
			h.trips.pipelines[h.addr]++
		}
		h.trips.mu.Unlock()
		return next(ctx, cmds)
	}
}

// One cluster serves them all: starting one takes seconds.
func TestClusterPipelines(t *testing.T) {
	cluster := redistest.StartCluster(t)
	t.Run("OnePipelinePerMaster", func(t *testing.T) { testOnePipelinePerMaster(t, cluster) })
	t.Run("NoScriptResendsOnlyThatMastersCalls", func(t *testing.T) { testNoScriptResendsOnlyThatMastersCalls(t, cluster) })
	t.Run("PeekIsOnePipeline", func(t *testing.T) { testPeekIsOnePipeline(t, cluster) })
}

// pipelineRig is a Redis limiter on cluster whose masters count what
// they are sent, every master emptied and knowing the scripts.
func pipelineRig(t *testing.T, cluster *redistest.Cluster) (*Redis, *redis.ClusterClient, *masterTrips) {
	t.Helper()
	trips := newMasterTrips()
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs()})
	client.OnNewNode(func(node *redis.Client) { node.AddHook(trips.hook(node.Options().Addr)) })
	t.Cleanup(func() { client.Close() })
	ctx := context.Background()
	err := client.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		if err := m.FlushAll(ctx).Err(); err != nil {
			return err
		}
		if err := m.ScriptLoad(ctx, decideLua).Err(); err != nil {
			return err
		}
		return m.ScriptLoad(ctx, peekLua).Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRedis(RedisConfig{Client: client, Cluster: true, Timeout: 5 * time.Second})
	t.Cleanup(func() { r.Close() })
	return r, client, trips
}

// slotBatch is a batch of two requests for each of consumers, whose
// buckets admit one: in order, the first of each is allowed and the
// second denied. It counts the batch's slots by the master serving them.
func slotBatch(t *testing.T, client *redis.ClusterClient, consumers int) ([]*call, map[string]int) {
	t.Helper()
	var batch []*call
	slots := map[string]int{}
	for c := range consumers {
		key := fmt.Sprintf("{c:pipelined-%d}:rate", c)
		m, err := client.MasterForKey(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		slots[m.Options().Addr]++
		for range 2 {
			limits := []Limit{{Kind: Bucket, Name: "rate", Key: key, Cost: 1, Requests: 1, Per: time.Hour}}
			batch = append(batch, &call{ctx: context.Background(), limits: limits, slot: Slot(key), done: make(chan struct{})})
		}
	}
	if len(slots) != 3 {
		t.Fatalf("the batch's slots are on %d masters; the test wants all 3", len(slots))
	}
	return batch, slots
}

// checkDecided checks slotBatch's answers: each consumer's first request
// allowed, its second denied.
func checkDecided(t *testing.T, batch []*call) {
	t.Helper()
	for i, c := range batch {
		<-c.done
		if c.err != nil || c.d.OK != (i%2 == 0) {
			t.Errorf("request %d of %s: ok=%v err=%v, want ok=%v", i%2, c.limits[0].Key, c.d.OK, c.err, i%2 == 0)
		}
	}
}

// A batch of 30 consumers' requests (30 slots, on every master) is sent
// as one pipeline per master, each holding one script call per slot of
// that master, and no call on its own: each master reads the batch's
// calls in one wakeup. Each slot's call is still its own, in order.
func testOnePipelinePerMaster(t *testing.T, cluster *redistest.Cluster) {
	r, client, trips := pipelineRig(t, cluster)
	batch, slots := slotBatch(t, client, 30)
	r.batch.runSlots(context.Background(), batch)
	checkDecided(t, batch)
	for addr, n := range slots {
		if trips.pipelines[addr] != 1 || trips.evalsha[addr] != n || trips.eval[addr] != 0 || trips.alone[addr] != 0 {
			t.Errorf("master %s, %d slots of the batch: sent %d pipelines of %d EVALSHA and %d EVAL, and %d script calls alone; "+
				"want one pipeline of %d EVALSHA", addr, n, trips.pipelines[addr], trips.evalsha[addr], trips.eval[addr], trips.alone[addr], n)
		}
	}
}

// A master that forgot the script (SCRIPT FLUSH) answers NOSCRIPT to its
// slots' calls: those, and only those, are sent again as EVAL, in one
// more pipeline to it; the other masters' slots are decided from the
// first pipeline.
func testNoScriptResendsOnlyThatMastersCalls(t *testing.T, cluster *redistest.Cluster) {
	r, client, trips := pipelineRig(t, cluster)
	flushed := cluster.Nodes[0].Addr
	one := redis.NewClient(&redis.Options{Addr: flushed})
	defer one.Close()
	if err := one.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	batch, slots := slotBatch(t, client, 30)
	r.batch.runSlots(context.Background(), batch)
	checkDecided(t, batch)
	for addr, n := range slots {
		wantPipelines, wantEval := 1, 0
		if addr == flushed {
			wantPipelines, wantEval = 2, n
		}
		if trips.pipelines[addr] != wantPipelines || trips.evalsha[addr] != n || trips.eval[addr] != wantEval || trips.alone[addr] != 0 {
			t.Errorf("master %s (flushed: %v), %d slots of the batch: sent %d pipelines of %d EVALSHA and %d EVAL, and %d script calls alone; "+
				"want %d pipelines, %d EVALSHA and %d EVAL", addr, addr == flushed, n, trips.pipelines[addr], trips.evalsha[addr],
				trips.eval[addr], trips.alone[addr], wantPipelines, n, wantEval)
		}
	}
}

// A Peek of 30 consumers' quotas (30 slots, on every master) is one
// pipeline, which the cluster client sends as one to each master: a
// script call per slot, none on its own.
func testPeekIsOnePipeline(t *testing.T, cluster *redistest.Cluster) {
	r, client, trips := pipelineRig(t, cluster)
	ctx := context.Background()
	const consumers = 30
	limits := make([]Limit, consumers)
	slots := map[string]int{}
	for c := range limits {
		limits[c] = Limit{Kind: Quota, Name: "quota", Key: fmt.Sprintf("{c:peeked-%d}:quota", c), Cost: int64(c), Max: 1000, Unit: plan.Month}
		if _, err := r.Decide(ctx, limits[c:c+1]); err != nil {
			t.Fatal(err)
		}
		m, err := client.MasterForKey(ctx, limits[c].Key)
		if err != nil {
			t.Fatal(err)
		}
		slots[m.Options().Addr]++
	}
	trips.reset()
	read, err := r.Peek(ctx, limits)
	if err != nil {
		t.Fatal(err)
	}
	for c, st := range read.Statuses {
		if st.Used != int64(c) {
			t.Errorf("consumer %d: peeked %d used, want %d", c, st.Used, c)
		}
	}
	for addr, n := range slots {
		if trips.pipelines[addr] != 1 || trips.evalsha[addr] != n || trips.alone[addr] != 0 {
			t.Errorf("master %s, %d slots of the Peek: sent %d pipelines of %d EVALSHA, and %d script calls alone; want one pipeline of %d",
				addr, n, trips.pipelines[addr], trips.evalsha[addr], trips.alone[addr], n)
		}
	}
}

// TestReplyOfKeepsAnAnsweredCallsReply: go-redis's cluster pipeline sets
// its context's error on every call when the context ends between
// attempts (following a MOVED), answered calls too. A call with a reply
// ran: its reply is read, so that what it took is known; a call without
// one, or with another error, failed.
func TestReplyOfKeepsAnAnsweredCallsReply(t *testing.T) {
	packed := string([]byte{0x93, 0x01, 0x02, 0x03}) // [1, 2, 3], as cmsgpack packs it
	cmd := func(val string, err error) *redis.StringCmd {
		c := redis.NewStringCmd(context.Background(), "evalsha")
		c.SetVal(val)
		c.SetErr(err)
		return c
	}
	moved := errors.New("MOVED 3999 127.0.0.1:6381")
	for _, tt := range []struct {
		name    string
		cmd     *redis.StringCmd
		want    []int64
		wantErr error
	}{
		{"answered", cmd(packed, nil), []int64{1, 2, 3}, nil},
		{"answered, then the pipeline's context ended", cmd(packed, context.DeadlineExceeded), []int64{1, 2, 3}, nil},
		{"answered, then the pipeline was canceled", cmd(packed, context.Canceled), []int64{1, 2, 3}, nil},
		{"not answered when the context ended", cmd("", context.DeadlineExceeded), nil, context.DeadlineExceeded},
		{"redirected", cmd("", moved), nil, moved},
		{"a reply and another error", cmd(packed, moved), nil, moved},
	} {
		got := replyOf(tt.cmd)
		if !errors.Is(got.err, tt.wantErr) || !slices.Equal(got.v, tt.want) {
			t.Errorf("%s: %v, %v; want %v, %v", tt.name, got.v, got.err, tt.want, tt.wantErr)
		}
	}
}
