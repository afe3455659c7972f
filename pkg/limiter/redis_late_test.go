package limiter_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// lateCounts reads levy_store_late_decisions_total by outcome.
func lateCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "levy_store_late_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

// A decision its caller stopped waiting for is given back when Redis
// answers late, and one whose reply never comes is counted as unknown.
func TestLateDecisionsAreGivenBackOrCounted(t *testing.T) {
	tests := []struct {
		name      string
		stall     time.Duration // Redis paused this long
		replyWait time.Duration
		wantUsed  int64
		want      string // the outcome counted
	}{
		{"reply within the wait: given back", 300 * time.Millisecond, 3 * time.Second, 0, "refunded"},
		{"no reply within the wait: unknown", 600 * time.Millisecond, 200 * time.Millisecond, -1, "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			client, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr, Timeout: time.Second, ReadTimeout: tt.replyWait})
			t.Cleanup(func() { client.Close() })
			reg := prometheus.NewRegistry()
			l := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Timeout: 50 * time.Millisecond, ReplyWait: tt.replyWait,
				Registerer: reg, Log: zaptest.NewLogger(t)})
			quota := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: "{c:late}:quota", Cost: 1, Max: 100, Unit: plan.Month}
			// Before the subject, the script loaded and a connection of the
			// client open, by a limiter of its own with time to spare: on a
			// busy machine a first decision may outlast the subject's 50 ms,
			// and its late outcome would count in the subject's registry.
			loader := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Timeout: 10 * time.Second})
			warm := quota
			warm.Key = "{c:warm}:quota"
			if _, err := loader.Decide(context.Background(), []limiter.Limit{warm}); err != nil {
				t.Fatal(err)
			}
			srv.Pause()
			_, err := l.Decide(context.Background(), []limiter.Limit{quota})
			time.Sleep(tt.stall) // the subject: Redis stalls this long
			srv.Resume()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Decide with Redis stalled: %v, want a timeout", err)
			}
			waitUntil(t, 5*time.Second, func() bool { return lateCounts(t, reg)[tt.want] == 1 }) // the subject's, the one decision reg counts
			peek := quota
			peek.Cost = 0
			used := func() int64 {
				d, err := loader.Decide(context.Background(), []limiter.Limit{peek})
				if err != nil {
					t.Fatal(err)
				}
				return d.Statuses[0].Used
			}
			if tt.wantUsed >= 0 {
				waitUntil(t, 5*time.Second, func() bool { return used() == tt.wantUsed })
			}
			t.Logf("late decisions: %v; units charged: %d", lateCounts(t, reg), used())
		})
	}
}

func waitUntil(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	await.Until(t, timeout, cond, "the condition")
}
