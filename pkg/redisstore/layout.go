package redisstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
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

// LayoutPass is what one MigrateLayout pass did.
type LayoutPass struct {
	// Moved is how many old keys it renamed or merged.
	Moved int
	// Skipped is how many old keys it could not merge (layout.lua says
	// which), left where they are; SkippedKeys names the first few.
	Skipped     int
	SkippedKeys []string
}

// maxSkippedKeys bounds LayoutPass.SkippedKeys.
const maxSkippedKeys = 10

func (p *LayoutPass) add(q LayoutPass) {
	p.Moved += q.Moved
	p.Skipped += q.Skipped
	for _, k := range q.SkippedKeys {
		if len(p.SkippedKeys) < maxSkippedKeys {
			p.SkippedKeys = append(p.SkippedKeys, k)
		}
	}
}

// MigrateLayout moves every state key of the layout before
// keyspace.Version to its current name, on every master: renamed, or
// merged into the current key when both exist (layout.lua says how), so
// that no count, bucket or unexported usage is lost. Keys that only look
// like levy's (keyspace.Upgrade) are left alone, and a key that cannot be
// merged is skipped and counted while the pass goes on. It is safe to run
// on several replicas at once, and again while replicas of an older levy
// still write the old names: each run moves what appeared since.
func MigrateLayout(ctx context.Context, client redis.UniversalClient) (LayoutPass, error) {
	return migrateLayout(ctx, client, nil)
}

// migrateLayout is MigrateLayout calling keep, when set, after each batch:
// an error from it ends the pass.
func migrateLayout(ctx context.Context, client redis.UniversalClient, keep func(context.Context) error) (LayoutPass, error) {
	var pass LayoutPass
	if err := layoutScript.Load(ctx, client).Err(); err != nil {
		return pass, fmt.Errorf("redis layout: %w", err)
	}
	var mu sync.Mutex
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
					p, err := moveKeys(ctx, client, batch)
					mu.Lock()
					pass.add(p)
					mu.Unlock()
					if err != nil {
						return err
					}
					if keep != nil {
						if err := keep(ctx); err != nil {
							return err
						}
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
		return pass, fmt.Errorf("redis layout: %w", err)
	}
	return pass, nil
}

// moveKeys runs layout.lua for each old key in one pipeline (runScript:
// the calls a node without the script refused, again in a second). A key
// the script cannot merge, or that Redis refuses to move (an error reply),
// is skipped; a connection error ends the batch, which the next pass
// takes again (the script is safe to run twice: a moved key is gone).
func moveKeys(ctx context.Context, client redis.UniversalClient, old []string) (LayoutPass, error) {
	calls := make([]scriptCall, len(old))
	for i, k := range old {
		nk, _ := keyspace.Upgrade(k)
		calls[i] = scriptCall{keys: []string{k, nk}, args: []any{keyspace.State}}
	}
	cmds := runScript(ctx, client, layoutScript, calls)
	var pass LayoutPass
	for i, c := range cmds {
		n, err := c.Int()
		var reply redis.Error
		switch {
		case err != nil && !errors.As(err, &reply):
			return pass, fmt.Errorf("move %q: %w", old[i], err)
		case err != nil || n < 0:
			pass.add(LayoutPass{Skipped: 1, SkippedKeys: []string{old[i]}})
		default:
			pass.Moved += n
		}
	}
	return pass, nil
}

// LayoutComplete reports whether every state key is in keyspace.Version's
// layout for good: a sweep found none of an older layout while no replica
// of an older levy was registered (keyspace.LayoutDone), and none is
// registered now. Until then a window of a rolling update can have a copy
// under each name whose meter events would share their identifiers, so
// exports and reconcile's fixes wait for it.
func LayoutComplete(ctx context.Context, client redis.UniversalClient) (bool, error) {
	st, err := readLayoutState(ctx, client)
	if err != nil {
		return false, err
	}
	return st.complete(), nil
}

// layoutState is what the registry and the LayoutDone marker say.
type layoutState struct {
	older int  // registered replicas of an older layout
	done  bool // LayoutDone holds keyspace.Version
}

func (s layoutState) complete() bool { return s.done && s.older == 0 }

func readLayoutState(ctx context.Context, client redis.UniversalClient) (layoutState, error) {
	pipe := client.Pipeline()
	members := pipe.ZRange(ctx, keyspace.Replicas, 0, -1)
	done := pipe.Get(ctx, keyspace.LayoutDone)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return layoutState{}, fmt.Errorf("redis layout state: %w", err)
	}
	var st layoutState
	for _, m := range members.Val() {
		if keyspace.ReplicaLayout(m) < keyspace.Version {
			st.older++
		}
	}
	st.done = done.Val() == strconv.Itoa(keyspace.Version)
	return st, nil
}

// LayoutSweepConfig configures StartLayoutSweep.
type LayoutSweepConfig struct {
	Client redis.UniversalClient
	// Holder names this replica in the sweep's lease.
	Holder string
	// Every is the time between sweeps (default 30s).
	Every time.Duration
	Log   *zap.Logger
	// Clock is time.Now unless set.
	Clock func() time.Time
}

// StartLayoutSweep runs MigrateLayout now and then every cfg.Every, on
// the replica that holds the "layout" lease, for as long as a replica of
// an older levy is registered or a pass moves keys: during a rolling
// update the older replicas keep writing the old names, and each pass
// moves what they wrote since (settlements that found no window meanwhile
// are retried by the usage receiver). After a pass that moved nothing
// while no older replica was registered, it sets keyspace.LayoutDone and
// stops sweeping; it then only reads the registry every cfg.Every, and
// sweeps again (LayoutDone deleted) if an older replica registers, as
// after a rollback. stop ends it and waits for it.
func StartLayoutSweep(cfg LayoutSweepConfig) (stop func()) {
	if cfg.Every <= 0 {
		cfg.Every = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s := &layoutSweep{cfg: cfg, lease: NewLease(cfg.Client, "layout")}
	go func() {
		defer close(done)
		defer s.lease.Release(context.WithoutCancel(ctx), cfg.Holder)
		tick := time.NewTicker(cfg.Every)
		defer tick.Stop()
		for {
			s.step(ctx)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

type layoutSweep struct {
	cfg   LayoutSweepConfig
	lease *Lease

	mu   sync.Mutex // keep's, called from every master's sweep
	held time.Time  // when the lease was last held
}

// errLayoutLease ends a pass whose lease another replica took.
var errLayoutLease = errors.New("the layout lease passed to another replica")

// step sweeps once if the layout is not complete and this replica holds
// the lease, and records the outcome.
func (s *layoutSweep) step(ctx context.Context) {
	log := s.cfg.Log
	st, err := readLayoutState(ctx, s.cfg.Client)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("read the state layout's progress; retrying", zap.Error(err))
		}
		return
	}
	if st.complete() {
		return
	}
	if st.older > 0 && st.done {
		// An older replica registered again: its writes need sweeping, and
		// exports wait until they are.
		if err := s.cfg.Client.Del(ctx, keyspace.LayoutDone).Err(); err != nil {
			log.Warn("mark the state layout incomplete", zap.Error(err))
			return
		}
		log.Info("a replica of an older levy is registered: sweeping its state keys to the current layout, exports wait", zap.Int("replicas", st.older))
	}
	if !s.hold(ctx) {
		return
	}
	pass, err := migrateLayout(ctx, s.cfg.Client, s.keep)
	if pass.Moved > 0 {
		log.Info("moved state keys to the current layout", zap.Int("keys", pass.Moved), zap.Int("layout", keyspace.Version))
	}
	if pass.Skipped > 0 {
		log.Warn("left state keys of the older layout that cannot be merged", zap.Int("keys", pass.Skipped), zap.Strings("first", pass.SkippedKeys))
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("move state keys to the current layout; retrying", zap.Error(err))
		}
		return
	}
	if pass.Moved > 0 || st.older > 0 {
		return // sweep again: older replicas may still write
	}
	after, err := readLayoutState(ctx, s.cfg.Client)
	if err != nil || after.older > 0 {
		return
	}
	if err := s.cfg.Client.Set(ctx, keyspace.LayoutDone, keyspace.Version, 0).Err(); err != nil {
		log.Warn("mark the state layout complete", zap.Error(err))
		return
	}
	log.Info("every state key is in the current layout: exports go on", zap.Int("layout", keyspace.Version))
}

// hold takes or renews the sweep's lease, for long enough that a pass
// renewing it every cfg.Every keeps it.
func (s *layoutSweep) hold(ctx context.Context) bool {
	held, err := s.lease.Hold(ctx, s.cfg.Holder, 3*s.cfg.Every)
	if err != nil || !held {
		return false
	}
	s.mu.Lock()
	s.held = s.cfg.Clock()
	s.mu.Unlock()
	return true
}

// keep renews the lease during a long pass (after a batch, once cfg.Every
// has passed since it was last held), and ends the pass if it was lost.
func (s *layoutSweep) keep(ctx context.Context) error {
	s.mu.Lock()
	due := s.cfg.Clock().Sub(s.held) >= s.cfg.Every
	s.mu.Unlock()
	if !due {
		return nil
	}
	if !s.hold(ctx) {
		return errLayoutLease
	}
	return nil
}
