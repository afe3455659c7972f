package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/portal"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/telemetry"
	"github.com/levyhq/levy/pkg/usage"
)

// backend is the store levy runs on: what decides, what remembers
// consumers and keys, whether it is reachable, and how to close it.
type backend struct {
	limiter limiter.Store
	ledger  usage.Ledger
	lease   billing.Lease
	// exportReady, when set, says whether exports and reconcile's fixes
	// may run (billing.ExporterConfig.Ready).
	exportReady func(ctx context.Context) (bool, error)
	events      billing.Events
	store       apikey.Store
	// history keeps the usage history (nil when usage.history is off);
	// consumers lists whom the ledger has windows of, for its catch-up.
	history   history.Store
	consumers history.ConsumerLister
	portal    portal.Store
	alerts    alert.Store
	ready     func() bool
	demoKeys  func(plans []string, gen func() (string, error)) (map[string]string, error)
	closers   []func() error

	// alertLease lets one replica scan for usage alerts at a time (nil:
	// the local store's one process).
	alertLease alert.Lease
}

func (b *backend) close() error {
	var errs []error
	for i := len(b.closers) - 1; i >= 0; i-- {
		errs = append(errs, b.closers[i]())
	}
	return errors.Join(errs...)
}

func (s *Server) openBackend(cfg *config.Config) (*backend, error) {
	if cfg.Store.Type == "redis" {
		return s.openRedis(cfg)
	}
	b := &backend{ready: func() bool { return true }}
	db, err := localstore.Open(cfg.Store.DataDir)
	if err != nil {
		return nil, err
	}
	b.closers = append(b.closers, db.Close)
	local, err := limiter.NewLocal(limiter.LocalConfig{Clock: s.opts.Clock, Counters: db, Registerer: s.metrics.Registry, Log: s.log,
		CounterIdle: time.Duration(cfg.Store.CounterIdle), MaxCounters: cfg.Store.MaxCounters})
	if err != nil {
		b.close()
		return nil, err
	}
	b.closers = append(b.closers, local.Close)
	dir, err := db.Directory()
	if err != nil {
		b.close()
		return nil, err
	}
	b.limiter, b.store, b.demoKeys = local, dir, db.DemoKeys
	b.portal = db.Portal(s.opts.Clock)
	b.alerts = db.Alerts(s.opts.Clock)
	b.ledger, b.lease, b.events = local, billing.SoleLease{}, db
	if h := cfg.Usage.History; h.Enabled {
		b.history, b.consumers = db.History(retention(cfg)), local
	}
	return b, nil
}

func (s *Server) openRedis(cfg *config.Config) (*backend, error) {
	opts, err := redisOptions(cfg)
	if err != nil {
		return nil, err
	}
	redis.SetLogger(quietRedisLog{}) // levy logs store errors itself
	client, cluster := redisstore.NewClient(opts)
	b := &backend{closers: []func() error{client.Close}}
	health := redisstore.StartHealth(client, uuid.NewString(), 500*time.Millisecond, s.log)
	b.closers = append(b.closers, func() error { health.Stop(); return nil })
	b.ready = health.Ready
	// The limiter has a client of its own, whose read timeout lets a
	// script call wait for a reply its callers stopped waiting for: what
	// it took for them is then given back (limiter.RedisConfig.ReplyWait).
	timeout := time.Duration(cfg.Store.Timeout)
	replyWait := max(20*timeout, time.Second)
	limOpts := opts
	limOpts.ReadTimeout = replyWait
	limClient, _ := redisstore.NewClient(limOpts)
	b.closers = append(b.closers, limClient.Close)
	rl := limiter.NewRedis(limiter.RedisConfig{Client: limClient, Cluster: cluster, Timeout: timeout, ReplyWait: replyWait,
		Available: health.SlotReady, Failed: health.SlotFailed, Registerer: s.metrics.Registry, Log: s.log})
	b.closers = append(b.closers, rl.Close)
	var lim limiter.Store = rl
	ledger := limiter.NewRedisLedger(client, time.Duration(cfg.Billing.Window))
	if cfg.Store.OnStoreError == "allow" {
		local, err := limiter.NewLocal(limiter.LocalConfig{Log: s.log})
		if err != nil {
			b.close()
			return nil, err
		}
		b.closers = append(b.closers, local.Close)
		fb := limiter.NewFallback(limiter.FallbackConfig{
			Primary: lim, Local: local, Share: health.Replicas, Log: s.log, Ledger: ledger,
			OnError: func(error) { s.metrics.StoreErrors.WithLabelValues(telemetry.StoreOpDecide).Inc() },
		})
		b.closers = append(b.closers, fb.Close)
		lim = fb
	}
	b.limiter = lim
	b.ledger = ledger
	b.lease = redisstore.NewLease(client, "usage-export")
	b.events = redisstore.Events{Client: client}
	dir := redisstore.NewDirectory(redisstore.DirectoryConfig{Client: client, TTL: time.Duration(cfg.Store.Redis.CacheTTL),
		Timeout: time.Duration(cfg.Store.Timeout), Log: s.log,
		Available: func(key string) bool { return health.SlotReady(keySlot(cluster, key)) },
		Failed:    func(key string, err error) { health.SlotFailed(keySlot(cluster, key), err) }})
	// Deletions and revocations made on any replica drop this one's cached
	// lookups at once (the cache TTL is the backstop).
	stopFollow := dir.Follow()
	b.closers = append(b.closers, func() error { stopFollow(); return nil })
	// Consumers and keys stored by an older levy join the indexes that
	// listings and deletions use (once per Redis), off the start path.
	backfill, stopBackfill := context.WithCancel(context.Background())
	backfilled := make(chan struct{})
	go func() {
		defer close(backfilled)
		if err := dir.Backfill(backfill); err != nil && backfill.Err() == nil {
			s.log.Warn("index stored consumers and keys; listings may miss older ones until the next start", zap.Error(err))
		}
	}()
	b.closers = append(b.closers, func() error { stopBackfill(); <-backfilled; return nil })
	// State keys of an older levy's layout move to keyspace's current one
	// (merged when an older replica still writes them), off the start
	// path, on one replica at a time, while older replicas are registered
	// or a pass finds old keys; exports wait until then.
	stopSweep := redisstore.StartLayoutSweep(redisstore.LayoutSweepConfig{Client: client, Holder: uuid.NewString(), Log: s.log})
	b.closers = append(b.closers, func() error { stopSweep(); return nil })
	b.exportReady = func(ctx context.Context) (bool, error) { return redisstore.LayoutComplete(ctx, client) }
	b.store = dir
	b.portal = redisstore.Portal{Client: client}
	if h := cfg.Usage.History; h.Enabled {
		hist := redisstore.NewHistory(client, retention(cfg))
		hist.Clock = s.opts.Clock
		b.history, b.consumers = hist, ledger
	}
	b.alerts = redisstore.Alerts{Client: client}
	b.alertLease = redisstore.NewLease(client, "usage-alerts")
	b.demoKeys = func(plans []string, gen func() (string, error)) (map[string]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return redisstore.DemoKeys(ctx, client, plans, gen)
	}
	return b, nil
}

// retention is usage.history's.
func retention(cfg *config.Config) history.Retention {
	return history.Retention{Hourly: time.Duration(cfg.Usage.History.Hourly), Daily: time.Duration(cfg.Usage.History.Daily)}
}

// redisOptions turns the Redis settings into the client's options.
func redisOptions(cfg *config.Config) (redisstore.Options, error) {
	r := cfg.Store.Redis
	o := redisstore.Options{
		Addr: r.Addr, ClusterAddrs: r.Cluster,
		Username: r.Username, Password: r.Password.Value(),
		Timeout: max(time.Duration(cfg.Store.Timeout), 100*time.Millisecond),
	}
	if r.TLS.Enabled {
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.TLS.ServerName}
		if ca := r.TLS.CAFile; ca != "" {
			pem, err := os.ReadFile(ca)
			if err != nil {
				return o, fmt.Errorf("LEVY_REDIS_TLS_CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return o, fmt.Errorf("LEVY_REDIS_TLS_CA: no certificate in %s", ca)
			}
			o.TLS.RootCAs = pool
		}
	}
	return o, nil
}

// quietRedisLog drops go-redis's own log lines (dial retries while Redis
// is down); levy reports store state through readiness, logs and metrics.
type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

// keySlot is key's hash slot on a cluster, 0 on a standalone Redis.
func keySlot(cluster bool, key string) uint16 {
	if !cluster {
		return 0
	}
	return limiter.Slot(key)
}
