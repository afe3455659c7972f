package limiter_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
)

// maxLimits is the most limits one RateLimitService request can bring to
// the limiter (rls.MaxDescriptors descriptors, one limit each).
const maxLimits = 64

// BenchmarkLocalDecideLockHold bounds how long one request can hold the
// local store's shard locks, and what that costs the others.
//
// largest: one Decide of 64 limits of 64 keys, which lock (nearly) every
// shard; Local.Decide holds its locks for all of its work, so ns/op bounds
// the hold. small-alone and small-beside-largest: the p99 (and max) of a
// consumer's two-limit decisions from 8 goroutines, alone and while
// another goroutine decides 64-limit requests without pause.
//
//	go test ./pkg/limiter -run '^$' -bench BenchmarkLocalDecideLockHold -count 3
func BenchmarkLocalDecideLockHold(b *testing.B) {
	l, err := limiter.NewLocal(limiter.LocalConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	largest := make([]limiter.Limit, maxLimits)
	for i := range largest {
		largest[i] = limiter.Limit{Kind: limiter.Bucket, Name: "d", Key: fmt.Sprintf("storm:k:%d", i), Cost: 1, Requests: 1 << 39, Per: time.Second}
	}
	small := func(c int) []limiter.Limit {
		return []limiter.Limit{
			{Kind: limiter.Bucket, Name: "rate", Key: fmt.Sprintf("{c:%d}:rate", c), Cost: 1, Requests: 1 << 39, Per: time.Second},
			{Kind: limiter.Quota, Name: "quota", Key: fmt.Sprintf("{c:%d}:quota", c), Cost: 1, Unit: plan.Month, Soft: true},
		}
	}
	ctx := context.Background()
	b.Run("largest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Decide(ctx, slices.Clone(largest)); err != nil {
				b.Fatal(err)
			}
		}
	})
	// smallLatencies runs b.N small decisions from 8 goroutines and reports
	// their p99 and max.
	smallLatencies := func(b *testing.B) {
		const workers = 8
		lat := make([][]time.Duration, workers)
		var wg sync.WaitGroup
		per := b.N/workers + 1
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range per {
					limits := small(w*1000 + i%1000)
					start := time.Now()
					if _, err := l.Decide(ctx, limits); err != nil {
						b.Error(err)
						return
					}
					lat[w] = append(lat[w], time.Since(start))
				}
			}()
		}
		wg.Wait()
		all := slices.Concat(lat...)
		slices.Sort(all)
		b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds()), "p99-ns")
		b.ReportMetric(float64(all[len(all)-1].Nanoseconds()), "max-ns")
	}
	b.Run("small-alone", smallLatencies)
	b.Run("small-beside-largest", func(b *testing.B) {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := l.Decide(ctx, slices.Clone(largest)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
		smallLatencies(b)
		close(stop)
		<-done
	})
}
