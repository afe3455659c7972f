package limiter_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// BenchmarkLocalDecide is admission on the local store as levy serve runs
// it (a bbolt file written behind): each call takes a consumer's rate
// bucket, quota counter and ledger window, from every CPU at once. It
// reports the write-behind's commits/s and mean loss window (loss-ms) too:
// with one consumer a commit writes one counter and one window, with 1000
// up to 2000 keys.
func BenchmarkLocalDecide(b *testing.B) {
	for _, consumers := range []int{1, 1000} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) {
			db, err := localstore.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			reg := prometheus.NewRegistry()
			l, err := limiter.NewLocal(limiter.LocalConfig{Counters: db, Registerer: reg})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			limits := make([][]limiter.Limit, consumers)
			for i := range limits {
				c := fmt.Sprintf("c%d", i)
				limits[i] = []limiter.Limit{
					{Kind: limiter.Bucket, Name: "rate", Key: "{c:" + c + "}:rate", Cost: 1, Requests: 1 << 39, Per: time.Second},
					{Kind: limiter.Quota, Name: "quota", Key: "{c:" + c + "}:quota", Cost: 1, Unit: plan.Month, Soft: true},
					{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey(c, usage.Terms{Meter: "calls"}), Cost: 1, WindowSize: time.Minute},
				}
			}
			var next atomic.Int64
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := l.Decide(ctx, limits[int(next.Add(1))%consumers]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			elapsed := time.Since(start)
			commits := metric(b, reg, "levy_local_loss_window_seconds")
			b.ReportMetric(commits/elapsed.Seconds(), "commits/s")
			if commits > 0 {
				b.ReportMetric(metricSum(b, reg, "levy_local_loss_window_seconds")/commits*1e3, "loss-ms")
			}
		})
	}
}

// BenchmarkLocalDecideAlone is Decide itself, one call at a time, without
// a counter store: a consumer's rate bucket, quota counter and ledger
// window. The figure to watch when the decision's logic changes.
func BenchmarkLocalDecideAlone(b *testing.B) {
	l, err := limiter.NewLocal(limiter.LocalConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	limits := []limiter.Limit{
		{Kind: limiter.Bucket, Name: "rate", Key: "{c:a}:rate", Cost: 1, Requests: 1 << 39, Per: time.Second},
		{Kind: limiter.Quota, Name: "quota", Key: "{c:a}:quota", Cost: 1, Max: 1 << 39, Unit: plan.Month},
		{Kind: limiter.Ledger, Name: "ledger", Key: usage.LedgerKey("a", usage.Terms{Meter: "calls"}), Cost: 1, WindowSize: time.Minute},
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Decide(ctx, limits); err != nil {
			b.Fatal(err)
		}
	}
}
