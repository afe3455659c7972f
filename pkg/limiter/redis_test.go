package limiter_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	limitertest.Run(t, func(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
		if err := client.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		return limiter.NewRedis(limiter.RedisConfig{Client: client, Clock: clock.Now, Timeout: 5 * time.Second})
	})
}

func TestRedisCluster(t *testing.T) {
	cluster := redistest.StartCluster(t)
	client := cluster.Client(t)
	limitertest.Run(t, func(t *testing.T, clock *limitertest.Clock) limiter.Limiter {
		err := client.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			return m.FlushAll(ctx).Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		return limiter.NewRedis(limiter.RedisConfig{Client: client, Cluster: true, Clock: clock.Now, Timeout: 5 * time.Second})
	})
}

// Without a test clock the decision runs on Redis TIME, and one decision
// is one script call, whatever the number of limits in one slot.
func TestRedisUsesStoreClockAndOneCallPerDecision(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	l := limiter.NewRedis(limiter.RedisConfig{Client: client})
	limits := []limiter.Limit{
		{Kind: limiter.Bucket, Name: "rate", Key: "{c:x}:rate", Cost: 1, Requests: 10, Per: time.Second},
		{Kind: limiter.Quota, Name: "quota", Key: "{c:x}:quota", Cost: 1, Max: 100, Unit: plan.Month},
	}
	ctx := context.Background()
	if _, err := l.Decide(ctx, limits); err != nil { // loads the script
		t.Fatal(err)
	}
	before, err := redistest.CommandCalls(ctx, client, "evalsha")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		d, err := l.Decide(ctx, limits)
		if err != nil || !d.OK {
			t.Fatalf("decision %d: %v %v", i, d.OK, err)
		}
		if skew := time.Since(d.Now); skew < -time.Second || skew > time.Second {
			t.Fatalf("decision time %s is not Redis's clock (now %s)", d.Now, time.Now())
		}
	}
	after, _ := redistest.CommandCalls(ctx, client, "evalsha")
	if after-before != 5 {
		t.Fatalf("%d EVALSHA calls for 5 decisions", after-before)
	}
}

// In a cluster, limits in two slots: a denial in the second slot gives
// back what the first slot took.
func TestRedisClusterGivesBackEarlierSlots(t *testing.T) {
	cluster := redistest.StartCluster(t)
	client := cluster.Client(t)
	l := limiter.NewRedis(limiter.RedisConfig{Client: client, Cluster: true, Timeout: 5 * time.Second})
	a := limiter.Limit{Kind: limiter.Quota, Name: "a", Key: "{a}:q", Cost: 1, Max: 100, Unit: plan.Month}
	b := limiter.Limit{Kind: limiter.Quota, Name: "b", Key: "{b}:q", Cost: 1, Max: 1, Unit: plan.Month}
	if limiter.Slot(a.Key) == limiter.Slot(b.Key) {
		t.Fatal("test keys share a slot")
	}
	ctx := context.Background()
	if d, err := l.Decide(ctx, []limiter.Limit{a, b}); err != nil || !d.OK {
		t.Fatalf("first: %v %v", d.OK, err)
	}
	for i := 0; i < 5; i++ {
		d, err := l.Decide(ctx, []limiter.Limit{a, b})
		if err != nil || d.OK || d.Denied != 1 {
			t.Fatalf("denial %d: ok=%v denied=%d err=%v", i, d.OK, d.Denied, err)
		}
	}
	d, err := l.Decide(ctx, []limiter.Limit{a})
	if err != nil || d.Statuses[0].Used != 2 {
		t.Fatalf("slot a used %d after 1 allowed request and 5 denied, want 2 (%v)", d.Statuses[0].Used, err)
	}
}

func TestSlotMatchesRedisCluster(t *testing.T) {
	cluster := redistest.StartCluster(t)
	client := cluster.Client(t)
	for _, key := range []string{"foo", "{user1000}.following", "{user1000}.followers", "{}x", "bar{}", "{c:acme}:rate:pro", "a{b}c{d}", "{", "}{x}"} {
		want, err := client.ClusterKeySlot(context.Background(), key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := limiter.Slot(key); int64(got) != want {
			t.Errorf("Slot(%q) = %d, Redis says %d", key, got, want)
		}
	}
}
