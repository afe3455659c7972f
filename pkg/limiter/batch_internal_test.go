package limiter

import (
	"context"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// TestBatchDecidesAsIfEachWereAlone checks the batch script against the
// same requests decided one call at a time: requests that share a bucket,
// a quota and a usage window (one busy consumer), shadow and soft limits
// among them, get the same answers, and leave the same state, whether one
// script call decides them all or each has its own.
func TestBatchDecidesAsIfEachWereAlone(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	now := time.Date(2026, 11, 30, 23, 59, 58, 0, time.UTC)
	r := NewRedis(RedisConfig{Client: client, Clock: func() time.Time { return now }, Timeout: 5 * time.Second})
	t.Cleanup(func() { r.Close() })

	request := func(tag string, cost int64) []Limit {
		return []Limit{
			{Kind: Bucket, Name: "rate", Key: "{" + tag + "}:rate", Cost: cost, Requests: 4, Per: time.Minute},
			{Kind: Quota, Name: "quota", Key: "{" + tag + "}:quota", Cost: cost, Max: 9, Unit: plan.Month},
			{Kind: Quota, Name: "spend", Key: "{" + tag + "}:spend", Cost: cost, Max: 2, Soft: true, Cap: 6, Unit: plan.Month},
			{Kind: Bucket, Name: "watch", Key: "{" + tag + "}:watch", Cost: cost, Requests: 1, Per: time.Hour, Shadow: true},
			{Kind: Ledger, Name: "usage", Key: "{" + tag + "}:ledger", Cost: cost, WindowSize: time.Minute},
			// the same bucket twice in one request takes twice
			{Kind: Bucket, Name: "rate", Key: "{" + tag + "}:rate", Cost: cost, Requests: 4, Per: time.Minute},
		}
	}
	costs := []int64{1, 0, 1, 2, 1, 1, 3, 1}
	batch := func(tag string) [][]Limit {
		var b [][]Limit
		for _, c := range costs {
			b = append(b, request(tag, c))
		}
		return b
	}
	ctx := context.Background()
	together, _, err := r.runBatch(ctx, r.decide, batch("together"))
	if err != nil {
		t.Fatal(err)
	}
	var alone []decided
	for _, req := range batch("alone") {
		d, _, err := r.runBatch(ctx, r.decide, [][]Limit{req})
		if err != nil {
			t.Fatal(err)
		}
		alone = append(alone, d[0])
	}
	denials := 0
	for i := range costs {
		if !reflect.DeepEqual(together[i], alone[i]) {
			t.Fatalf("request %d (cost %d):\nin one call %+v\nalone       %+v", i+1, costs[i], together[i], alone[i])
		}
		if together[i].denied >= 0 {
			denials++
		}
	}
	if denials == 0 || denials == len(costs) {
		t.Fatalf("%d of %d requests denied: the batch should mix allows and denials", denials, len(costs))
	}
	// What they left is the same too: a check that takes nothing sees it.
	after := func(tag string) decided {
		d, _, err := r.runBatch(ctx, r.decide, [][]Limit{request(tag, 0)})
		if err != nil {
			t.Fatal(err)
		}
		return d[0]
	}
	if a, b := after("together"), after("alone"); !reflect.DeepEqual(a, b) {
		t.Fatalf("state left:\nby one call %+v\nby each     %+v", a, b)
	}
	var units []int64
	for _, tag := range []string{"together", "alone"} {
		u, err := client.HGet(ctx, "{"+tag+"}:ledger:"+strconv.FormatInt(now.Unix()/60*60, 10), "u").Int64()
		if err != nil {
			t.Fatal(err)
		}
		units = append(units, u)
	}
	if units[0] == 0 || units[0] != units[1] {
		t.Fatalf("usage counted by one call %d, by each %d", units[0], units[1])
	}
}
