package history_test

import (
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/history"
)

// BenchmarkCounterAllow is what the usage history adds to an allowed
// Check: the key's counter's add (Parallel: every core on one key).
func BenchmarkCounterAllow(b *testing.B) {
	c := history.NewRecorder().Counter("acme", "k1")
	now := time.Now()
	b.Run("Serial", func(b *testing.B) {
		for b.Loop() {
			c.Allow(now)
		}
	})
	b.Run("Parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Allow(now)
			}
		})
	})
}
