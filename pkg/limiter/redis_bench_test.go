package limiter_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/usage"
)

// BenchmarkRedisDecide is admission on Redis as levy serve runs it: each
// call takes a consumer's rate bucket, quota counter and ledger window,
// from many goroutines at once (so the batcher combines them). Besides the
// time per decision it reports script-us, the time Redis spent in
// decide.lua per script call (INFO commandstats): the figure to watch
// when the script changes, as it is what a Redis serving many replicas
// runs out of.
func BenchmarkRedisDecide(b *testing.B) {
	client := redistest.Start(b).Client()
	for _, consumers := range []int{1, 1000} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) {
			ctx := context.Background()
			if err := client.FlushAll(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			l := limitertest.NewRedis(b, limiter.RedisConfig{Client: client, Timeout: 5 * time.Second})
			limits := make([][]limiter.Limit, consumers)
			for i := range limits {
				c := fmt.Sprintf("c%d", i)
				limits[i] = []limiter.Limit{
					{Kind: limiter.Bucket, Name: "rate", Key: "{c:" + c + "}:rate", Cost: 1, Requests: 1 << 39, Per: time.Second},
					{Kind: limiter.Quota, Name: "quota", Key: "{c:" + c + "}:quota", Cost: 1, Unit: plan.Month, Soft: true},
					{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey(c, usage.Terms{Meter: "calls"}), Cost: 1, WindowSize: time.Minute},
				}
			}
			if _, err := l.Decide(ctx, limits[0]); err != nil { // loads the script
				b.Fatal(err)
			}
			if err := client.ConfigResetStat(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(16) // callers waiting at once, as under load: batches form
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := l.Decide(ctx, limits[int(next.Add(1))%consumers]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			calls, usec := scriptStats(b, client)
			if calls > 0 {
				b.ReportMetric(usec/calls, "script-us")
				b.ReportMetric(float64(b.N)/calls, "decisions/call")
			}
		})
	}
}

// scriptStats is how many EVALSHA calls Redis ran since its stats were
// reset, and the microseconds they took.
func scriptStats(b *testing.B, client *redis.Client) (calls, usec float64) {
	info, err := client.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	_, rest, ok := strings.Cut(info, "cmdstat_evalsha:")
	if !ok {
		return 0, 0
	}
	line, _, _ := strings.Cut(rest, "\r\n")
	for _, field := range strings.Split(line, ",") {
		k, v, _ := strings.Cut(field, "=")
		n, _ := strconv.ParseFloat(v, 64)
		switch k {
		case "calls":
			calls = n
		case "usec":
			usec = n
		}
	}
	return calls, usec
}
