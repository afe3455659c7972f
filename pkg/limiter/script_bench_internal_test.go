package limiter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// BenchmarkDecideScript is decide.lua alone: one call deciding a batch of
// 16 consumers' requests (a bucket, a quota and a ledger each), one call
// at a time; script-us is Redis's own time per call.
func BenchmarkDecideScript(b *testing.B) {
	client := redistest.Start(b).Client()
	r := NewRedis(RedisConfig{Client: client, Timeout: 5 * time.Second})
	defer r.Close()
	batch := make([][]Limit, 16)
	for i := range batch {
		c := fmt.Sprintf("{c:%d}", i)
		batch[i] = []Limit{
			{Kind: Bucket, Name: "rate", Key: c + ":rate", Cost: 1, Requests: 1 << 39, Per: time.Second},
			{Kind: Quota, Name: "quota", Key: c + ":quota", Cost: 1, Max: 1 << 39, Unit: plan.Month},
			{Kind: Ledger, Name: "ledger", Key: c + ":ledger:calls", Cost: 1, WindowSize: time.Minute},
		}
	}
	ctx := context.Background()
	if _, _, err := r.runBatch(ctx, r.decideScript, batch); err != nil {
		b.Fatal(err)
	}
	client.ConfigResetStat(ctx)
	b.ResetTimer()
	for range b.N {
		if _, _, err := r.runBatch(ctx, r.decideScript, batch); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	info, _ := client.Info(ctx, "commandstats").Result()
	_, rest, _ := strings.Cut(info, "cmdstat_evalsha:")
	line, _, _ := strings.Cut(rest, "\r\n")
	for _, f := range strings.Split(line, ",") {
		if k, v, _ := strings.Cut(f, "="); k == "usec_per_call" {
			n, _ := strconv.ParseFloat(v, 64)
			b.ReportMetric(n, "script-us")
		}
	}
}
