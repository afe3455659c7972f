package limiter_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// A decision whose caller's deadline has passed is not taken: the caller
// is answered the context's error, and nothing is charged.
func TestExpiredCallerIsNotDecided(t *testing.T) {
	local, err := limiter.NewLocal(limiter.LocalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.Close() })
	rdb := redistest.Start(t)
	tests := []struct {
		name string
		give limiter.Limiter
	}{
		{"local", local},
		{"redis", limitertest.NewRedis(t, limiter.RedisConfig{Client: rdb.Client(), Timeout: time.Second})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			quota := limiter.Limit{Kind: limiter.Quota, Name: "quota", Key: "{c:deadline}:quota", Cost: 1, Max: 10, Unit: plan.Month}
			expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			defer cancel()
			if _, err := tt.give.Decide(expired, []limiter.Limit{quota}); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Decide with an expired context: %v, want DeadlineExceeded", err)
			}
			peek := quota
			peek.Cost = 0
			d, err := tt.give.Decide(context.Background(), []limiter.Limit{peek})
			if err != nil {
				t.Fatal(err)
			}
			if used := d.Statuses[0].Used; used != 0 {
				t.Fatalf("%d units charged for a decision whose caller had gone", used)
			}
		})
	}
}
