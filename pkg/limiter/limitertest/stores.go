package limitertest

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/redistest"
)

// Store is one kind of store a behaviour test runs on.
type Store struct {
	Name string
	New  Factory
}

// Stores starts a real redis-server and a real three-master Redis Cluster
// for the test t, and returns factories of empty limiters on the local
// store, on Redis and on the cluster, so that a behaviour test can run
// the same table on all three.
func Stores(t *testing.T) []Store {
	t.Helper()
	srv := redistest.Start(t)
	client := srv.Client()
	cluster := redistest.StartCluster(t)
	cc := cluster.Client(t)
	return []Store{
		{"local", func(t *testing.T, clock *Clock) limiter.Limiter {
			l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			return l
		}},
		{"redis", func(t *testing.T, clock *Clock) limiter.Limiter {
			if err := client.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			return NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
		}},
		{"cluster", func(t *testing.T, clock *Clock) limiter.Limiter {
			err := cc.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
			if err != nil {
				t.Fatal(err)
			}
			return NewRedis(t, limiter.RedisConfig{Client: cc, Cluster: true, Clock: clock.Now, Timeout: 5 * time.Second})
		}},
	}
}

// Usage reads a quota or usage counter without changing it (Peek).
func Usage(t *testing.T, l limiter.Limiter, l0 limiter.Limit) int64 {
	t.Helper()
	return peek(t, store(t, l), l0).Statuses[0].Used
}

// NewRedis returns a Redis limiter closed with the test.
func NewRedis(t testing.TB, cfg limiter.RedisConfig) *limiter.Redis {
	t.Helper()
	r := limiter.NewRedis(cfg)
	t.Cleanup(func() { r.Close() })
	return r
}
