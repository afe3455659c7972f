package limiter

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/usage"
)

//go:embed adjust.lua
var adjustLua string

//go:embed add.lua
var addLua string

// RedisLedger is the usage ledger in Redis. Admission writes it inside the
// decision script; this type settles, lists and marks windows. A
// consumer's meter has a sorted set of unexported window starts (the
// LedgerKey), another of exported ones (":done"), and a hash per window
// (":<start>": u units, z size, e exported).
type RedisLedger struct {
	client redis.UniversalClient
	// Window is the ledger window (billing.window): settlements find their
	// window with it.
	Window time.Duration
	adjust *redis.Script
	add    *redis.Script
}

var _ usage.Ledger = (*RedisLedger)(nil)

// NewRedisLedger returns the ledger on client.
func NewRedisLedger(client redis.UniversalClient, window time.Duration) *RedisLedger {
	return &RedisLedger{client: client, Window: window, adjust: redis.NewScript(adjustLua), add: redis.NewScript(addLua)}
}

// Adjust implements usage.Ledger.
func (r *RedisLedger) Adjust(ctx context.Context, adjs []usage.Adjustment) error {
	size := int64(r.Window / time.Second)
	pipe := r.client.Pipeline()
	for _, a := range adjs {
		start := a.At.Unix() / size * size
		r.adjust.Run(ctx, pipe, []string{LedgerKey(a.Consumer, a.Meter)}, start, a.Units)
	}
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	// Some commands failed (NOSCRIPT on a node that restarted, a broken
	// connection): try each of those once more on its own; the others are
	// applied and must not be again.
	var failed []usage.Adjustment
	var last error
	for i, c := range cmds {
		if c.Err() == nil {
			continue
		}
		a := adjs[i]
		start := a.At.Unix() / size * size
		if err := r.adjust.Run(ctx, r.client, []string{LedgerKey(a.Consumer, a.Meter)}, start, a.Units).Err(); err != nil {
			failed, last = append(failed, a), err
		}
	}
	if len(failed) > 0 {
		return &usage.PartialError{Failed: failed, Err: fmt.Errorf("redis ledger adjust: %w", last)}
	}
	return nil
}

// AddUnits adds units counted elsewhere (by a replica while Redis was
// away) to the window of key starting at start, creating it; a window
// already exported passes them to the window after.
func (r *RedisLedger) AddUnits(ctx context.Context, key string, start time.Time, size time.Duration, units int64) error {
	for s := start; ; s = s.Add(size) {
		n, err := r.add.Run(ctx, r.client, []string{key}, s.Unix(), int64(size/time.Second), units).Int()
		if err != nil {
			return fmt.Errorf("redis ledger add: %w", err)
		}
		if n == 1 {
			return nil
		}
	}
}

// scanLedgers lists the ledger index keys matching pattern on every master.
func (r *RedisLedger) scanLedgers(ctx context.Context, pattern string) ([]string, error) {
	var mu sync.Mutex
	seen := map[string]bool{}
	var keys []string
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.ScanType(ctx, 0, pattern, 1000, "zset").Iterator()
		for it.Next(ctx) {
			// A ledger whose windows are all exported has only ":done".
			k := strings.TrimSuffix(it.Val(), ":done")
			if _, _, ok := parseLedgerKey(k); ok {
				mu.Lock()
				if !seen[k] {
					seen[k] = true
					keys = append(keys, k)
				}
				mu.Unlock()
			}
		}
		return it.Err()
	}
	var err error
	switch c := r.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	default:
		err = fmt.Errorf("redis ledger: unsupported client %T", r.client)
	}
	if err != nil {
		return nil, fmt.Errorf("redis ledger scan: %w", err)
	}
	return keys, nil
}

// Closed implements usage.Ledger.
func (r *RedisLedger) Closed(ctx context.Context, before time.Time, maxWindows int) ([]usage.Window, error) {
	keys, err := r.scanLedgers(ctx, "{c:*}:ledger:*")
	if err != nil {
		return nil, err
	}
	var out []usage.Window
	for _, key := range keys {
		// Windows that started before `before - size` have ended; the
		// size is checked per window below.
		starts, err := r.client.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(before.Unix(), 10)}).Result()
		if err != nil {
			return nil, fmt.Errorf("redis ledger: %w", err)
		}
		for _, s := range starts {
			w, ok, err := r.read(ctx, key, s)
			if err != nil {
				return nil, err
			}
			if ok && !w.Exported && !w.End().After(before) {
				out = append(out, w)
			}
		}
	}
	sortWindows(out)
	if maxWindows > 0 && len(out) > maxWindows {
		out = out[:maxWindows]
	}
	return out, nil
}

func (r *RedisLedger) read(ctx context.Context, key, start string) (usage.Window, bool, error) {
	m, err := r.client.HGetAll(ctx, key+":"+start).Result()
	if err != nil {
		return usage.Window{}, false, fmt.Errorf("redis ledger: %w", err)
	}
	consumer, meter, ok := parseLedgerKey(key)
	if len(m) == 0 || !ok {
		return usage.Window{}, false, nil
	}
	n := func(f string) int64 { v, _ := strconv.ParseInt(m[f], 10, 64); return v }
	s, _ := strconv.ParseInt(start, 10, 64)
	return usage.Window{Consumer: consumer, Meter: meter, Start: time.Unix(s, 0).UTC(), Size: time.Duration(n("z")) * time.Second,
		Units: n("u"), Exported: m["e"] == "1"}, true, nil
}

// MarkExported implements usage.Ledger.
func (r *RedisLedger) MarkExported(ctx context.Context, w usage.Window) error {
	key := LedgerKey(w.Consumer, w.Meter)
	start := strconv.FormatInt(w.Start.Unix(), 10)
	keep := 35 * 24 * time.Hour
	pipe := r.client.TxPipeline()
	pipe.HSet(ctx, key+":"+start, "e", "1")
	pipe.Expire(ctx, key+":"+start, keep)
	pipe.ZRem(ctx, key, start)
	pipe.ZAdd(ctx, key+":done", redis.Z{Score: float64(w.Start.Unix()), Member: start})
	pipe.ZRemRangeByScore(ctx, key+":done", "-inf", strconv.FormatInt(w.Start.Add(-keep).Unix(), 10))
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis ledger mark exported: %w", err)
	}
	return nil
}

// Windows implements usage.Ledger.
func (r *RedisLedger) Windows(ctx context.Context, consumer string, from, to time.Time) ([]usage.Window, error) {
	keys, err := r.scanLedgers(ctx, "{c:"+consumer+"}:ledger:*")
	if err != nil {
		return nil, err
	}
	var out []usage.Window
	for _, key := range keys {
		for _, set := range []string{key, key + ":done"} {
			starts, err := r.client.ZRangeByScore(ctx, set, &redis.ZRangeBy{Min: strconv.FormatInt(from.Unix(), 10), Max: "(" + strconv.FormatInt(to.Unix(), 10)}).Result()
			if err != nil {
				return nil, fmt.Errorf("redis ledger: %w", err)
			}
			for _, s := range starts {
				if w, ok, err := r.read(ctx, key, s); err != nil {
					return nil, err
				} else if ok {
					out = append(out, w)
				}
			}
		}
	}
	sortWindows(out)
	return out, nil
}
