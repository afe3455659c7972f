package limiter

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// A give-back that runs in the next period (a month's edge passed between
// the decision and its give-back: a cluster's denial, a late reply)
// returns each cost to the period the decision counted it in: the
// decision's quota period and ledger window. A quota that counts another
// period by then (a request of the new month came first) is left alone:
// its count is the new month's.
func TestGiveBackReturnsCostsToTheDecisionsPeriod(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	march := time.Date(2026, 3, 31, 23, 59, 59, 900_000_000, time.UTC)
	april := time.Date(2026, 4, 1, 0, 0, 0, 100_000_000, time.UTC)
	tests := []struct {
		name string
		// give the April request before the give-back
		aprilFirst bool
		// the counts after the give-back
		wantMarchQuota, wantAprilQuota, wantMarchWindow int64
	}{
		{name: "give-back first", aprilFirst: false, wantMarchQuota: 1, wantAprilQuota: 0, wantMarchWindow: 1},
		{name: "the new month first", aprilFirst: true, wantMarchQuota: 0, wantAprilQuota: 1, wantMarchWindow: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			client.FlushAll(ctx)
			now := march
			r := NewRedis(RedisConfig{Client: client, Clock: func() time.Time { return now }, Timeout: 5 * time.Second})
			t.Cleanup(func() { r.Close() })
			limits := []Limit{
				{Kind: Bucket, Name: "rate", Key: "{acme}:rate", Cost: 1, Requests: 10, Per: time.Minute},
				{Kind: Quota, Name: "quota", Key: "{acme}:quota", Cost: 1, Max: 100, Unit: plan.Month},
				{Kind: Ledger, Name: "usage", Key: "{acme}:ledger", Cost: 1, WindowSize: time.Minute},
			}
			var given []requestAnswer
			for range 2 {
				res, _, err := r.runBatch(ctx, r.decideScript, [][]Limit{limits})
				if err != nil || res[0].denied >= 0 {
					t.Fatal(res, err)
				}
				given = res
			}
			now = april
			if tt.aprilFirst {
				if _, _, err := r.runBatch(ctx, r.decideScript, [][]Limit{limits[1:2]}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := r.giveBack(ctx, asDecided(limits, given[0].statuses)); err != nil {
				t.Fatal(err)
			}
			quota := client.HMGet(ctx, "{acme}:quota", "s", "v").Val()
			counts := map[string]int64{}
			if quota[0] != nil {
				v, _ := strconv.ParseInt(quota[1].(string), 10, 64)
				counts[quota[0].(string)] = v
			}
			window, _ := client.HGet(ctx, "{acme}:ledger:"+strconv.FormatInt(march.Truncate(time.Minute).Unix(), 10), "u").Int64()
			marchStart := strconv.FormatInt(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).Unix(), 10)
			aprilStart := strconv.FormatInt(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC).Unix(), 10)
			if counts[marchStart] != tt.wantMarchQuota || counts[aprilStart] != tt.wantAprilQuota || window != tt.wantMarchWindow {
				t.Fatalf("after the give-back: March quota %d, April quota %d, March window %d; want %d, %d, %d",
					counts[marchStart], counts[aprilStart], window, tt.wantMarchQuota, tt.wantAprilQuota, tt.wantMarchWindow)
			}
		})
	}
}
