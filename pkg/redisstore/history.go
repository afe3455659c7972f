package redisstore

import (
	"context"
	"fmt"
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
// same hour write the same value); flushes add to the rest (HINCRBY).
type History struct {
	client redis.UniversalClient
	ret    history.Retention
	// Clock is levy's time, which the expiries are counted from (as a
	// TTL, so that a test's clock works too); nil means time.Now.
	Clock func() time.Time
}

var _ history.Store = (*History)(nil)

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

// AddCounts implements history.Store: one pipeline.
func (h *History) AddCounts(ctx context.Context, cs []history.Counts) error {
	if len(cs) == 0 {
		return nil
	}
	pipe := h.client.Pipeline()
	incr := func(key, field string, n int64) {
		if n != 0 {
			pipe.HIncrBy(ctx, key, field, n)
		}
	}
	for _, c := range cs {
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
			pipe.Expire(ctx, key, ttl)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis history: %w", err)
	}
	return nil
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
