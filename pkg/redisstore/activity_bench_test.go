package redisstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// BenchmarkActivityRead100k reads 100,000 consumers' activity records (a
// third of them written), a thousand a call, as the console's index
// does.
func BenchmarkActivityRead100k(b *testing.B) {
	rdb := redistest.Start(b)
	client := rdb.Client()
	b.Cleanup(func() { client.Close() })
	h := redisstore.NewHistory(client, history.DefaultRetention)
	ctx := context.Background()
	now := time.Now()
	ids := make([]string, 100_000)
	var cs []history.Counts
	for i := range ids {
		ids[i] = fmt.Sprintf("c%06d", i)
		if i%3 == 0 {
			cs = append(cs, history.Counts{Consumer: ids[i], Key: "k", Hour: history.Hour.Floor(now), Allowed: 1, Seen: now, Period: now.Add(-time.Hour)})
		}
		if len(cs) == 5000 || i == len(ids)-1 {
			if err := h.AddCounts(ctx, cs); err != nil {
				b.Fatal(err)
			}
			cs = cs[:0]
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		seen := 0
		for i := 0; i < len(ids); i += 1000 {
			acts, err := h.Activity(ctx, ids[i:i+1000])
			if err != nil {
				b.Fatal(err)
			}
			seen += len(acts)
		}
		if seen != 33_334 {
			b.Fatalf("%d records read, want 33334", seen)
		}
	}
}
