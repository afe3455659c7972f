package limiter

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// clusterClient is what pipelining script calls on a Redis Cluster needs
// of a client: *redis.ClusterClient.
type clusterClient interface {
	Pipeline() redis.Pipeliner
	MasterForKey(ctx context.Context, key string) (*redis.Client, error)
}

// reply is one script call's reply, or its error.
type reply struct {
	v   []int64
	err error
}

// evalEach runs script calls (each args an EVALSHA of script, whose keys
// share a hash slot) as one pipeline, and answers each one's reply, in
// order. Calls whose Redis does not know the script (it restarted, or
// SCRIPT FLUSH) are sent again, those alone, as EVAL.
func (r *Redis) evalEach(ctx context.Context, script script, args [][]any) []reply {
	cmds := make([]*redis.StringCmd, len(args))
	for i := range args {
		cmds[i] = newScriptCmd(ctx, args[i])
	}
	r.pipeline(ctx, cmds)
	var again []*redis.StringCmd
	for i, cmd := range cmds {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			args[i][0], args[i][1] = "eval", script.src
			cmds[i] = newScriptCmd(ctx, args[i])
			again = append(again, cmds[i])
		}
	}
	if len(again) > 0 {
		r.pipeline(ctx, again)
	}
	out := make([]reply, len(cmds))
	for i, cmd := range cmds {
		out[i] = replyOf(cmd)
	}
	return out
}

// replyOf is a script call's reply, or its error. go-redis's cluster
// pipeline, when its context ends while it waits to follow a MOVED or ASK
// (between attempts), sets the context's error on every call of the
// pipeline, those another master already answered too. A call with a reply
// (the scripts always answer a non-empty array) ran, and its reply is
// read: what it took is then known, answered or given back when late,
// where the error would leave it charged to a caller who saw a failure.
func replyOf(cmd *redis.StringCmd) reply {
	err := cmd.Err()
	if err != nil && (cmd.Val() == "" || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled))) {
		return reply{err: err}
	}
	v, err := unpackInts(cmd.Val())
	return reply{v: v, err: err}
}

// pipeline sends cmds, each with its own reply or error after. A cluster
// client sends them as one go-redis pipeline: each master's in one write
// on one connection, which it reads in one wakeup, the masters' at once,
// following MOVED and ASK. Another Scripter (a test's wrapper of a
// client) sends them one at a time.
func (r *Redis) pipeline(ctx context.Context, cmds []*redis.StringCmd) {
	if r.masters == nil || len(cmds) == 1 { // one call: no pipeline's cost
		for _, cmd := range cmds {
			_ = r.client.Process(ctx, sentOnce{cmd})
		}
		return
	}
	p := r.masters.Pipeline()
	for _, cmd := range cmds {
		_ = p.Process(ctx, sentOnce{cmd}) // queues it
	}
	_, _ = p.Exec(ctx) // each cmd holds its own error
}

// slotCalls is a batch's calls in one hash slot, and their limits.
type slotCalls struct {
	calls  []*call
	limits [][]Limit
}

// byMaster groups slots by the master that serves them, as the cluster
// client last saw it: a group is a pipeline, whose calls are answered
// together. It decides only that: the pipeline routes each call by its
// own key, wherever its slot has moved. On another Scripter each slot is
// a group of its own.
func (r *Redis) byMaster(ctx context.Context, slots []slotCalls) [][]slotCalls {
	if r.masters == nil {
		groups := make([][]slotCalls, len(slots))
		for i := range slots {
			groups[i] = slots[i : i+1]
		}
		return groups
	}
	return groupBy(slots, func(s slotCalls) *redis.Client {
		var master *redis.Client // nil: a batch without keys, or no map of the cluster
		if key, ok := firstKey(s.limits); ok {
			master, _ = r.masters.MasterForKey(ctx, key)
		}
		return master
	})
}

// groupBy groups items by their key: a group per key, in the order each
// key first comes, each group's items in their order.
func groupBy[T any, K comparable](items []T, key func(T) K) [][]T {
	var groups [][]T
	at := map[K]int{}
	for _, it := range items {
		k := key(it)
		g, ok := at[k]
		if !ok {
			g = len(groups)
			at[k] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], it)
	}
	return groups
}

// firstKey is the key of a batch's first limit, if it has any.
func firstKey(batch [][]Limit) (string, bool) {
	for _, limits := range batch {
		if len(limits) > 0 {
			return limits[0].Key, true
		}
	}
	return "", false
}
