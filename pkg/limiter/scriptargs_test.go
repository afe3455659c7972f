package limiter_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/usage"
)

// The scripts pass redis.call no number, only strings made with %d: Redis
// 7.2.0 to 7.2.4 turn a round number (1e+08) into scientific notation,
// which PX, PEXPIRE and HINCRBY refuse and Go cannot parse. The suites
// run with every script guarded (GuardScriptArgs), on a Redis and on a
// cluster (where requests that span slots give back what they took).
func TestScriptsPassRedisOnlyStrings(t *testing.T) {
	guarded := func(t *testing.T, cfg limiter.RedisConfig) limiter.Limiter {
		r := limitertest.NewRedis(t, cfg)
		limiter.GuardScriptArgs(r)
		return r
	}
	ledger := func(client redis.UniversalClient) usage.Ledger {
		l := limiter.NewRedisLedger(client, time.Minute)
		limiter.GuardLedgerScriptArgs(l)
		return l
	}
	t.Run("Redis", func(t *testing.T) {
		client := redistest.Start(t).Client()
		flush := func(t *testing.T) {
			if err := client.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		}
		limitertest.Run(t, func(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
			flush(t)
			return guarded(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
		})
		limitertest.RunLedger(t, func(t *testing.T, clock *limitertest.Clock) (limiter.Limiter, usage.Ledger) {
			flush(t)
			return guarded(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second}), ledger(client)
		}, true)
	})
	t.Run("Cluster", func(t *testing.T) {
		client := redistest.StartCluster(t).Client(t)
		flush := func(t *testing.T) {
			err := client.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
			if err != nil {
				t.Fatal(err)
			}
		}
		limitertest.Run(t, func(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
			flush(t)
			return guarded(t, limiter.RedisConfig{Client: client, Cluster: true, Clock: clock.Now, Timeout: 5 * time.Second})
		})
	})
}
