package limitertest

import (
	"context"
	"sync"
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

// Stores returns factories of empty limiters on the local store, on a
// real redis-server and on a real three-master Redis Cluster, so that a
// behaviour test can run the same table on all three. The redis-server
// and the cluster start with the first limiter made on them, once for
// the test t (they live as long as it does, across its subtests): a test
// that uses only some stores starts only those.
func Stores(t *testing.T) []Store {
	t.Helper()
	owner := t
	var mu sync.Mutex
	var client *redis.Client
	var cc *redis.ClusterClient
	return []Store{
		{"local", Local},
		{"redis", func(t *testing.T, clock *Clock) limiter.Limiter {
			mu.Lock()
			if client == nil {
				client = redistest.Start(owner).Client()
			}
			mu.Unlock()
			if err := client.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			return NewRedis(t, limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
		}},
		{"cluster", func(t *testing.T, clock *Clock) limiter.Limiter {
			mu.Lock()
			if cc == nil {
				cc = redistest.StartCluster(owner).Client(owner)
			}
			mu.Unlock()
			err := cc.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
			if err != nil {
				t.Fatal(err)
			}
			return NewRedis(t, limiter.RedisConfig{Client: cc, Cluster: true, Clock: clock.Now, Timeout: 5 * time.Second})
		}},
	}
}

// Local is a factory of empty limiters on the local store.
func Local(t *testing.T, clock *Clock) limiter.Limiter {
	l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
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
