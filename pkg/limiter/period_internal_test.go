package limiter

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// batchArgs sends each quota's period on Go's clock, and decide.lua uses
// it only when the store's clock is in it: a Go clock off the store's (or
// a decision at a period's boundary) decides as if Go had sent nothing.
// Each case decides twice on a fresh Redis, with Go's clock right and
// then off by skew, and wants the same statuses and the same keys.
func TestQuotaPeriodFromGoIsCheckedAgainstTheStoreClock(t *testing.T) {
	client := redistest.Start(t).Client()
	ctx := context.Background()
	anchor := time.Date(2025, time.January, 31, 13, 30, 0, 0, time.UTC)
	at := time.Date(2027, time.March, 1, 0, 0, 0, 0, time.UTC) // a month's, a day's and an hour's first second; a Monday
	var limits []Limit
	for _, u := range []plan.Unit{plan.Hour, plan.Day, plan.Week, plan.Month, plan.Year} {
		for _, a := range []time.Time{{}, anchor} {
			limits = append(limits, Limit{Kind: Quota, Name: "q", Key: fmt.Sprintf("{c:x}:q:%s:%d", u, a.Unix()),
				Cost: 2, Max: 10, Unit: u, Anchor: a})
		}
	}
	decide := func(now, goNow time.Time) ([]requestAnswer, map[string]map[string]string) {
		r := NewRedis(RedisConfig{Client: client, Clock: func() time.Time { return goNow }, Timeout: 5 * time.Second})
		defer r.Close()
		args, want := r.batchArgs(r.decideScript, [][]Limit{limits})
		args[len(args)-2] = strconv.FormatInt(now.UnixMicro(), 10) // the store's clock
		v, err := r.eval(ctx, r.decideScript, args)
		if err != nil {
			t.Fatal(err)
		}
		res, _, err := parseBatch(v, want, [][]Limit{limits}, false)
		if err != nil {
			t.Fatal(err)
		}
		keys, _ := client.Keys(ctx, "*").Result()
		sort.Strings(keys)
		state := map[string]map[string]string{}
		for _, k := range keys {
			state[k], _ = client.HGetAll(ctx, k).Result()
		}
		return res, state
	}
	for _, now := range []time.Time{at, at.Add(-time.Microsecond), at.Add(90 * time.Minute)} {
		for _, skew := range []time.Duration{time.Second, -time.Second, 40 * 24 * time.Hour, -400 * 24 * time.Hour} {
			client.FlushAll(ctx)
			decide(now, now)
			want, wantState := decide(now, now)
			client.FlushAll(ctx)
			decide(now, now.Add(skew))
			got, gotState := decide(now, now.Add(skew))
			if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotState, wantState) {
				t.Errorf("at %s with Go's clock off by %s:\n got %+v\n%v\nwant %+v\n%v", now, skew, got, gotState, want, wantState)
			}
		}
	}
}

// decide.lua works a quota's period out itself when Go's is not the
// store clock's: the period start it stores, and the expiry it sets (a
// day past the period's end), are plan.PeriodAt's at random times and
// anchors.
func TestScriptPeriodIsPlanPeriodAt(t *testing.T) {
	client := redistest.Start(t).Client()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	units := []plan.Unit{plan.Hour, plan.Day, plan.Week, plan.Month, plan.Year}
	base := time.Date(2020, time.January, 1, 0, 0, 0, 0, time.UTC)
	for i := range 400 {
		now := base.Add(time.Duration(rng.Int64N(int64(20 * 365 * 24 * time.Hour)))).Truncate(time.Microsecond)
		if i%4 == 0 { // on a boundary
			now = now.Truncate(time.Hour)
		}
		var anchor time.Time
		if i%2 == 0 {
			anchor = base.Add(time.Duration(rng.Int64N(int64(5 * 365 * 24 * time.Hour)))).Truncate(time.Second)
		}
		l := Limit{Kind: Quota, Name: "q", Key: "{c:x}:q", Cost: 1, Max: 10, Unit: units[rng.IntN(len(units))], Anchor: anchor}
		// Go's clock more than a year behind: no period of any unit holds
		// the store's clock, so the script works every one out itself.
		r := NewRedis(RedisConfig{Client: client, Clock: func() time.Time { return now.Add(-400 * 24 * time.Hour) }, Timeout: 5 * time.Second})
		args, _ := r.batchArgs(r.decideScript, [][]Limit{{l}})
		args[len(args)-2] = strconv.FormatInt(now.UnixMicro(), 10) // the store's clock, not in Go's period
		client.FlushAll(ctx)
		if _, err := r.eval(ctx, r.decideScript, args); err != nil {
			t.Fatal(err)
		}
		r.Close()
		p := plan.PeriodAt(now, l.Unit, l.Anchor)
		s, _ := client.HGet(ctx, l.Key, "s").Result()
		ttl, _ := client.PTTL(ctx, l.Key).Result()
		wantTTL := p.End.Sub(now).Truncate(time.Millisecond) + 24*time.Hour
		if s != strconv.FormatInt(p.Start.Unix(), 10) || ttl > wantTTL || ttl < wantTTL-time.Second {
			t.Fatalf("%s quota anchored at %s, at %s: stored start %s and expiry in %s, want %d (%s) and %s",
				l.Unit, anchor, now, s, ttl, p.Start.Unix(), p.Start, wantTTL)
		}
	}
}
