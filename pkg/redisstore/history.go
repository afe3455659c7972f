package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/keyspace"
)

// History is the usage history in Redis: a hash per consumer and hour or
// day (keyspace.History, in the consumer's hash tag) holding b (billed),
// r (refunded), dr, dq, dc (denied for rate, quota, cap) and, per API
// key, a:<id> and d:<id> (allowed, denied). Each expires past the
// retention. The roll-up sets b and r (HSET: replicas that roll up the
// same hour write the same value); flushes add to the rest (HINCRBY) and,
// in the same pipeline, merge into each consumer's activity record: a
// field of keyspace.Activity, one hash for every consumer, read a
// thousand fields a command; Prune forgets the records not seen within
// the daily retention.
type History struct {
	client redis.UniversalClient
	ret    history.Retention
	// Clock is levy's time, which the expiries are counted from (as a
	// TTL, so that a test's clock works too); nil means time.Now.
	Clock func() time.Time
}

var (
	_ history.Store  = (*History)(nil)
	_ history.Pruner = (*History)(nil)
)

// NewHistory returns the usage history on client, kept for ret.
func NewHistory(client redis.UniversalClient, ret history.Retention) *History {
	return &History{client: client, ret: ret}
}

// SetUsage implements history.Store: one pipeline.
func (h *History) SetUsage(ctx context.Context, us []history.Usage) error {
	if len(us) == 0 {
		return nil
	}
	pipe := h.client.Pipeline()
	for _, u := range us {
		key := keyspace.History(u.Consumer, string(u.Step), u.Start.Unix())
		ttl := h.ttl(u.Step, u.Start)
		if ttl <= 0 {
			continue // past its retention
		}
		pipe.HSet(ctx, key, "b", u.Billed, "r", u.Refunded)
		pipe.Expire(ctx, key, ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis history: %w", err)
	}
	return nil
}

// ttl is how long the bucket of step at start is still kept.
func (h *History) ttl(step history.Step, start time.Time) time.Duration {
	now := time.Now
	if h.Clock != nil {
		now = h.Clock
	}
	return h.ret.ExpireAt(step, start).Sub(now()).Truncate(time.Second)
}

// mergeActivityScript merges flushes' activity into the records of
// keyspace.Activity (KEYS[1]): ARGV holds, per consumer, its id, seen,
// period start and denials, merged as history.Activity.Merge does.
var mergeActivityScript = redis.NewScript(`
for i = 1, #ARGV, 4 do
  local ns, np, nd = tonumber(ARGV[i+1]), tonumber(ARGV[i+2]), tonumber(ARGV[i+3])
  local s, p, d = 0, nil, 0
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local a, b, c = string.match(cur, '^(%d+) (%d+) (%-?%d+)$')
    s, p, d = tonumber(a) or 0, tonumber(b), tonumber(c) or 0
  end
  if p == np then
    d = d + nd
  elseif ns > s then
    p, d = np, nd
  end
  if ns > s then s = ns end
  if p then redis.call('HSET', KEYS[1], ARGV[i], string.format('%d %d %d', s, p, d)) end
end
return 1
`)

// activityBatch bounds the records one mergeActivity call merges (a
// fraction of a millisecond of Redis).
const activityBatch = 200

// AddCounts implements history.Store: the counts in one pipeline, then
// the activity of those it added in another (and, for merges a Redis that
// had not loaded the script refused, a third: a refused script ran
// nothing, so running it again counts nothing twice). Counts of which
// Redis took nothing (their master down) are handed back in a
// *history.PartialError, to be added again; the others are not, and
// neither is an activity merge that failed: added again, they would
// count twice (a lost reply, the one case Redis cannot tell, still does).
func (h *History) AddCounts(ctx context.Context, cs []history.Counts) error {
	if len(cs) == 0 {
		return nil
	}
	pipe := h.client.Pipeline()
	cmds := make([][]redis.Cmder, len(cs)) // each count's commands
	for i, c := range cs {
		incr := func(key, field string, n int64) {
			if n != 0 {
				cmds[i] = append(cmds[i], pipe.HIncrBy(ctx, key, field, n))
			}
		}
		for _, step := range []history.Step{history.Hour, history.Day} {
			start := step.Floor(c.Hour)
			key := keyspace.History(c.Consumer, string(step), start.Unix())
			ttl := h.ttl(step, start)
			if ttl <= 0 {
				continue
			}
			incr(key, "dr", c.Denied.Rate)
			incr(key, "dq", c.Denied.Quota)
			incr(key, "dc", c.Denied.Cap)
			incr(key, "a:"+c.Key, c.Allowed)
			incr(key, "d:"+c.Key, c.Denied.Total())
			cmds[i] = append(cmds[i], pipe.Expire(ctx, key, ttl))
		}
	}
	_, _ = pipe.Exec(ctx) // each command holds its own error
	var added, failed []history.Counts
	var refused, lost error // the first error of a count not added; of one added in part, or of the activity
	for i, c := range cs {
		took, err := false, error(nil)
		for _, cmd := range cmds[i] {
			if e := cmd.Err(); e == nil {
				took = true
			} else if err == nil {
				err = e
			}
		}
		switch {
		case err == nil:
			added = append(added, c)
		case took:
			added, lost = append(added, c), err
		default:
			failed, refused = append(failed, c), err
		}
	}
	if err := h.mergeActivity(ctx, added); err != nil {
		lost = err
	}
	if len(failed) > 0 {
		return &history.PartialError{Failed: failed, Err: fmt.Errorf("redis history: %w", errors.Join(refused, lost))}
	}
	if lost != nil {
		return fmt.Errorf("redis history, not tried again: %w", lost)
	}
	return nil
}

// mergeActivity merges the activity of cs into its records, a batch of
// consumers a script call.
func (h *History) mergeActivity(ctx context.Context, cs []history.Counts) error {
	var merges []scriptCall
	var args []any
	activity := []string{keyspace.Activity}
	acts := history.ActivityOf(cs)
	for _, consumer := range sortedIDs(acts) {
		a := acts[consumer]
		args = append(args, consumer, history.UnixOrZero(a.Seen), history.UnixOrZero(a.Period), a.Denied)
		if len(args) == 4*activityBatch {
			merges, args = append(merges, scriptCall{activity, args}), nil
		}
	}
	if len(args) > 0 {
		merges = append(merges, scriptCall{activity, args})
	}
	cmds := runScript(ctx, h.client, mergeActivityScript, merges)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return fmt.Errorf("activity: %w", err)
		}
	}
	return nil
}

func sortedIDs(m map[string]history.Activity) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Activity implements history.Store: one HMGET of the consumers' fields.
// Reading 100,000 records a thousand a command takes 77 to 89 ms
// (BenchmarkActivityRead100k, on 2 cores shared with other work); a
// record a key in the consumer's hash tag, read with an HMGET each in a
// pipeline, took 0.28 to 0.66 s on the same machine, made 1.3 million
// allocations where this makes 0.2 million, and cost Redis a command a
// consumer at every rebuild of every replica's console index.
func (h *History) Activity(ctx context.Context, consumers []string) (map[string]history.Activity, error) {
	out := make(map[string]history.Activity, len(consumers))
	if len(consumers) == 0 {
		return out, nil
	}
	vals, err := h.client.HMGet(ctx, keyspace.Activity, consumers...).Result()
	if err != nil {
		return nil, fmt.Errorf("redis history activity: %w", err)
	}
	for i, v := range vals {
		if a, ok := parseActivity(v); ok && i < len(consumers) {
			out[consumers[i]] = a
		}
	}
	return out, nil
}

// parseActivity reads a record ("seen period denied"); false for none.
func parseActivity(v any) (history.Activity, bool) {
	s, _ := v.(string)
	f := strings.Fields(s)
	if len(f) != 3 {
		return history.Activity{}, false
	}
	var n [3]int64
	for i := range f {
		var err error
		if n[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return history.Activity{}, false
		}
	}
	return history.Activity{Seen: history.TimeOrZero(n[0]), Period: history.TimeOrZero(n[1]), Denied: n[2]}, n[0] != 0
}

// forgetActivity deletes the records of KEYS[1] named in ARGV (id, then
// the record as it was read) that are still as they were read: one a
// flush merged into meanwhile was seen again.
var forgetActivity = redis.NewScript(`
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i+1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 1
`)

// Prune implements history.Pruner: it forgets the activity records not
// seen within the daily retention (buckets expire by themselves), a
// thousand fields an HSCAN.
func (h *History) Prune(ctx context.Context, now time.Time) error {
	var cursor uint64
	for {
		kv, next, err := h.client.HScan(ctx, keyspace.Activity, cursor, "", 1000).Result()
		if err != nil {
			return fmt.Errorf("redis history prune: %w", err)
		}
		var stale []any
		for i := 0; i+1 < len(kv); i += 2 {
			a, ok := parseActivity(kv[i+1])
			if !ok || !h.ret.ExpireAt(history.Day, history.Day.Floor(a.Seen)).After(now) {
				stale = append(stale, kv[i], kv[i+1])
			}
		}
		if len(stale) > 0 {
			if err := forgetActivity.Run(ctx, h.client, []string{keyspace.Activity}, stale...).Err(); err != nil {
				return fmt.Errorf("redis history prune: %w", err)
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// Buckets implements history.Store: one HGETALL a bucket, in one
// pipeline (the range is bounded by the retention: 840 hours, 400 days
// by default).
func (h *History) Buckets(ctx context.Context, consumer string, step history.Step, from, to time.Time) ([]history.Bucket, error) {
	pipe := h.client.Pipeline()
	var starts []time.Time
	var cmds []*redis.MapStringStringCmd
	for t := step.Floor(from); t.Before(to); t = t.Add(step.Size()) {
		if t.Before(from) {
			continue
		}
		starts = append(starts, t)
		cmds = append(cmds, pipe.HGetAll(ctx, keyspace.History(consumer, string(step), t.Unix())))
	}
	if len(cmds) == 0 {
		return nil, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redis history: %w", err)
	}
	var out []history.Bucket
	for i, c := range cmds {
		m := c.Val()
		if len(m) == 0 {
			continue
		}
		b := history.Bucket{Consumer: consumer, Step: step, Start: starts[i]}
		for f, v := range m {
			n, _ := strconv.ParseInt(v, 10, 64)
			switch {
			case f == "b":
				b.Billed = n
			case f == "r":
				b.Refunded = n
			case f == "dr":
				b.Denied.Rate = n
			case f == "dq":
				b.Denied.Quota = n
			case f == "dc":
				b.Denied.Cap = n
			case strings.HasPrefix(f, "a:"), strings.HasPrefix(f, "d:"):
				if b.Keys == nil {
					b.Keys = map[string]history.KeyCounts{}
				}
				k := b.Keys[f[2:]]
				if f[0] == 'a' {
					k.Allowed = n
				} else {
					k.Denied = n
				}
				b.Keys[f[2:]] = k
			}
		}
		out = append(out, b)
	}
	return out, nil
}
