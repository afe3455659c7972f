package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// A Redis that has not loaded a script (restarted, SCRIPT FLUSH) refuses
// its calls, which ran nothing: they are sent again, once. Alerts are
// claimed once, and a flush's denials and activity are counted once.
func TestScriptCallsRefusedByARedisWithoutTheScriptRunOnce(t *testing.T) {
	client := redistest.Start(t).Client()
	ctx := context.Background()
	alerts := redisstore.Alerts{Client: client}
	h := redisstore.NewHistory(client, history.DefaultRetention)
	now := time.Now().UTC().Truncate(time.Second)
	hour := now.Truncate(time.Hour)
	for round := range 2 { // the first finds no script loaded and loads them; the second finds them flushed
		if round == 1 {
			if err := client.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		id := []string{"a", "b"}[round]
		got, err := alerts.Add(ctx, []alert.Claim{
			{ID: id, Rec: []byte("r"), Keep: time.Hour, Due: now},
			{ID: id, Rec: []byte("r"), Keep: time.Hour, Due: now}, // the same claim again: not new
		})
		if err != nil || !got[0] || got[1] {
			t.Fatalf("round %d: claims %v, %v: want the first new, its repeat not", round, got, err)
		}
		c := history.Counts{Consumer: "acme", Key: "k1", Hour: hour, Seen: now, Period: hour,
			Denied: history.Denied{Rate: 2}}
		if err := h.AddCounts(ctx, []history.Counts{c}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if q, err := alerts.Queued(ctx); err != nil || q != 2 {
		t.Fatalf("queued %d, %v: want 2", q, err)
	}
	as, err := h.Activity(ctx, []string{"acme"})
	if err != nil || as["acme"].Denied != 4 {
		t.Fatalf("activity %+v, %v: want 4 denials, two flushes of 2", as, err)
	}
	bs, err := h.Buckets(ctx, "acme", history.Hour, hour, hour.Add(time.Hour))
	if err != nil || len(bs) != 1 || bs[0].Denied.Rate != 4 {
		t.Fatalf("buckets %+v, %v: want one hour of 4 rate denials", bs, err)
	}
}
