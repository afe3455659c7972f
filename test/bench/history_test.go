package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/usage"
)

// BenchmarkHistoryRollUp measures how many ledger windows a Keeper rolls
// up per second (windows/s: read from the ledger, summed per hour, the
// hours and their days set in the history store), to compare with
// BenchmarkALSIngest's entries/s: a settled entry touches at most one
// window, and a window holds every entry of its consumer and minute, so
// keeping up needs windows/s at or above what settlement changes, far
// below entries/s. 200 consumers with a window every minute of an hour
// (12,000 windows) are rolled up whole at each op, on the local store and
// on a redis-server of its own.
func BenchmarkHistoryRollUp(b *testing.B) {
	const consumers = 200
	hour := time.Date(2026, 3, 14, 15, 0, 0, 0, time.UTC)
	for _, store := range []string{"local", "redis"} {
		b.Run(store, func(b *testing.B) {
			now := hour
			clock := func() time.Time { return now }
			var lim limiter.Limiter
			var ledger history.WindowReader
			var hist history.Store
			switch store {
			case "local":
				db, err := localstore.Open(b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				defer db.Close()
				l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock, Counters: db})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				lim, ledger, hist = l, l, db.History(history.DefaultRetention)
			case "redis":
				client := redistest.Start(b).Client()
				r := limiter.NewRedis(limiter.RedisConfig{Client: client, Clock: clock, Timeout: 5 * time.Second})
				defer r.Close()
				h := redisstore.NewHistory(client, history.DefaultRetention)
				h.Clock = clock
				lim, ledger, hist = r, limiter.NewRedisLedger(client, time.Minute), h
			}
			terms := usage.Terms{Plan: "pro", Meter: "api_calls", Period: plan.Month}
			for m := range 60 {
				now = hour.Add(time.Duration(m) * time.Minute)
				for c := range consumers {
					_, err := lim.Decide(context.Background(), []limiter.Limit{{Kind: limiter.Ledger, Name: "ledger",
						Key: usage.LedgerKey(fmt.Sprintf("c%03d", c), terms), WindowSize: time.Minute, Cost: 3}})
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			now = hour.Add(90 * time.Minute)
			k := history.New(history.Config{Store: hist, Ledger: ledger, Clock: clock})
			windows := 0
			for b.Loop() {
				for c := range consumers {
					k.Touch(fmt.Sprintf("c%03d", c), hour)
				}
				st, err := k.RollUp(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				windows += st.Windows
			}
			if windows != b.N*consumers*60 {
				b.Fatalf("rolled up %d windows in %d ops, want %d an op", windows, b.N, consumers*60)
			}
			b.ReportMetric(float64(windows)/b.Elapsed().Seconds(), "windows/s")
		})
	}
}
