package redisstore

import (
	"context"
	_ "embed"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/keyspace"
)

//go:embed layout.lua
var layoutLua string

var layoutScript = redis.NewScript(layoutLua)

// layoutBatch is how many keys one pipeline moves.
const layoutBatch = 256

// MigrateLayout moves every state key of the layout before
// keyspace.Version to its current name, on every master: renamed, or
// merged into the current key when both exist (layout.lua says how), so
// that no count, bucket or unexported usage is lost. It returns how many
// keys it moved. It is safe to run on several replicas at once, and again
// while replicas of an older levy still write the old names: each run
// moves what appeared since.
func MigrateLayout(ctx context.Context, client redis.UniversalClient) (int, error) {
	if err := layoutScript.Load(ctx, client).Err(); err != nil {
		return 0, fmt.Errorf("redis layout: %w", err)
	}
	var mu sync.Mutex
	moved := 0
	sweep := func(ctx context.Context, node *redis.Client) error {
		for _, pattern := range keyspace.LegacyPatterns {
			it := node.Scan(ctx, 0, pattern, 1000).Iterator()
			var batch []string
			for {
				more := it.Next(ctx)
				if more {
					if _, ok := keyspace.Upgrade(it.Val()); ok {
						batch = append(batch, it.Val())
					}
				}
				if len(batch) == layoutBatch || !more && len(batch) > 0 {
					n, err := moveKeys(ctx, client, batch)
					mu.Lock()
					moved += n
					mu.Unlock()
					if err != nil {
						return err
					}
					batch = batch[:0]
				}
				if !more {
					break
				}
			}
			if err := it.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	switch c := client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, sweep)
	case *redis.Client:
		err = sweep(ctx, c)
	default:
		err = fmt.Errorf("unsupported client %T", client)
	}
	if err != nil {
		return moved, fmt.Errorf("redis layout: %w", err)
	}
	return moved, nil
}

// moveKeys runs layout.lua for each old key in one pipeline; a call that
// failed (NOSCRIPT on a node that restarted) is tried once more alone.
func moveKeys(ctx context.Context, client redis.UniversalClient, old []string) (int, error) {
	pipe := client.Pipeline()
	cmds := make([]*redis.Cmd, len(old))
	for i, k := range old {
		nk, _ := keyspace.Upgrade(k)
		cmds[i] = layoutScript.EvalSha(ctx, pipe, []string{k, nk}, keyspace.State)
	}
	pipe.Exec(ctx) // errors are the commands'
	moved := 0
	for i, c := range cmds {
		n, err := c.Int()
		if err != nil {
			nk, _ := keyspace.Upgrade(old[i])
			if n, err = layoutScript.Run(ctx, client, []string{old[i], nk}, keyspace.State).Int(); err != nil {
				return moved, fmt.Errorf("move %q: %w", old[i], err)
			}
		}
		moved += n
	}
	return moved, nil
}

// LayoutSweepConfig configures StartLayoutSweep.
type LayoutSweepConfig struct {
	Client redis.UniversalClient
	// Holder names this replica in the sweep's lease.
	Holder string
	// Every is the time between sweeps (default 30s).
	Every time.Duration
	// Quiet ends the sweeps once this long has passed without an old key
	// found (default 10m): the older replicas are gone.
	Quiet time.Duration
	Log   *zap.Logger
	// Clock is time.Now unless set.
	Clock func() time.Time
}

// StartLayoutSweep runs MigrateLayout now and then every cfg.Every, on
// the replica that holds the "layout" lease, until cfg.Quiet passes with
// no old key found; stop ends it and waits for it. During a rolling
// update, older replicas keep writing the old names: each sweep moves
// what they wrote since, and settlements that found no window meanwhile
// are retried by the usage receiver.
func StartLayoutSweep(cfg LayoutSweepConfig) (stop func()) {
	if cfg.Every <= 0 {
		cfg.Every = 30 * time.Second
	}
	if cfg.Quiet <= 0 {
		cfg.Quiet = 10 * time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	lease := NewLease(cfg.Client, "layout")
	go func() {
		defer close(done)
		defer lease.Release(context.WithoutCancel(ctx), cfg.Holder)
		found := cfg.Clock()
		tick := time.NewTicker(cfg.Every)
		defer tick.Stop()
		for {
			if held, err := lease.Hold(ctx, cfg.Holder, 2*cfg.Every); err == nil && held {
				n, err := MigrateLayout(ctx, cfg.Client)
				if err != nil && ctx.Err() == nil {
					cfg.Log.Warn("move state keys to the current layout; retrying", zap.Error(err))
				}
				if n > 0 || err != nil {
					found = cfg.Clock()
				}
				if n > 0 {
					cfg.Log.Info("moved state keys to the current layout", zap.Int("keys", n), zap.Int("layout", keyspace.Version))
				}
			}
			if cfg.Clock().Sub(found) >= cfg.Quiet {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}
