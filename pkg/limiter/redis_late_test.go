package limiter_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// BenchmarkRedisDecide is admission on a real Redis as levy serve runs it
// (the server's client options, concurrent callers, a consumer's rate and
// quota): what the late-reply bookkeeping must not slow.
//
//	go test ./pkg/limiter -run '^$' -bench BenchmarkRedisDecide -count 6
func BenchmarkRedisDecide(b *testing.B) {
	srv := redistest.Start(b)
	client, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr, Timeout: time.Second})
	b.Cleanup(func() { client.Close() })
	l := limitertest.NewRedis(b, limiter.RedisConfig{Client: client, Timeout: time.Second})
	var n, failed atomic.Int64
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := n.Add(1)
		limits := []limiter.Limit{
			{Kind: limiter.Bucket, Name: "rate", Key: fmt.Sprintf("{c:%d}:rate", c), Cost: 1, Requests: 1 << 30, Per: time.Second},
			{Kind: limiter.Quota, Name: "quota", Key: fmt.Sprintf("{c:%d}:quota", c), Cost: 1, Max: 1 << 40, Unit: plan.Month},
		}
		for pb.Next() {
			if d, err := l.Decide(context.Background(), limits); err != nil || !d.OK {
				failed.Add(1)
			}
		}
	})
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d decisions failed", f, b.N)
	}
}
