package redisstore_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// downFor fails, without sending them, the commands of a pipeline whose
// first key holds down: what a client sees of a master that is down,
// while the others answer.
type downFor struct {
	down string
	on   *atomic.Bool
}

func (downFor) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (downFor) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (d downFor) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !d.on.Load() {
			return next(ctx, cmds)
		}
		var up []redis.Cmder
		for _, c := range cmds {
			if key, ok := c.Args()[1].(string); ok && strings.Contains(key, d.down) {
				c.SetErr(errors.New("master down"))
				continue
			}
			up = append(up, c)
		}
		if len(up) == 0 {
			return nil
		}
		return next(ctx, up)
	}
}

// A flush whose counts Redis took in part (one consumer's master down)
// hands back only the counts of which it took nothing, and a Keeper adds
// those again once Redis is back: every count lands once, none twice.
func TestHistoryCountsTakenInPartAreAddedOnce(t *testing.T) {
	client := redistest.Start(t).Client()
	down := &atomic.Bool{}
	client.AddHook(downFor{down: "bolt}:history:", on: down})
	h := redisstore.NewHistory(client, history.DefaultRetention)
	now := time.Now().UTC().Truncate(time.Second)
	k := history.New(history.Config{Store: h, Clock: func() time.Time { return now }})
	for _, consumer := range []string{"acme", "bolt"} {
		c := k.Recorder().Counter(consumer, "k1")
		c.Allow(now)
		c.Deny(now, history.ReasonRate)
	}
	down.Store(true)
	err := k.Flush(context.Background())
	var partial *history.PartialError
	if !errors.As(err, &partial) || len(partial.Failed) != 1 || partial.Failed[0].Consumer != "bolt" {
		t.Fatalf("flush with bolt's master down: %v, want bolt's counts handed back", err)
	}
	down.Store(false)
	for range 2 { // the retry, then a flush of nothing new
		if err := k.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	hour := now.Truncate(time.Hour)
	for _, consumer := range []string{"acme", "bolt"} {
		bs, err := h.Buckets(context.Background(), consumer, history.Hour, hour, hour.Add(time.Hour))
		if err != nil || len(bs) != 1 || bs[0].Denied.Rate != 1 || bs[0].Keys["k1"] != (history.KeyCounts{Allowed: 1, Denied: 1}) {
			t.Fatalf("%s: buckets %+v, %v: want one hour of 1 allowed and 1 rate denial", consumer, bs, err)
		}
	}
	as, err := h.Activity(context.Background(), []string{"acme", "bolt"})
	if err != nil || as["acme"].Denied != 1 || as["bolt"].Denied != 1 {
		t.Fatalf("activity %+v, %v: want 1 denial each", as, err)
	}
	if ids := slices.Sorted(maps.Keys(as)); !slices.Equal(ids, []string{"acme", "bolt"}) {
		t.Fatalf("activity of %v", ids)
	}
}
