package history_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
)

// Merge keeps the later sighting and counts denials in the period of the
// latest one: a flush of the same period adds, a later period's starts
// over, and a flush retried after a newer one wrote leaves them be.
func TestActivityMergeCountsThisPeriodOnly(t *testing.T) {
	day := func(d int) time.Time { return time.Date(2026, 3, d, 0, 0, 0, 0, time.UTC) }
	at := func(d, h int) time.Time { return day(d).Add(time.Duration(h) * time.Hour) }
	tests := []struct {
		name      string
		have, add history.Activity
		want      history.Activity
	}{
		{"first sighting", history.Activity{}, history.Activity{Seen: at(3, 1), Period: day(1), Denied: 2},
			history.Activity{Seen: at(3, 1), Period: day(1), Denied: 2}},
		{"same period adds", history.Activity{Seen: at(3, 1), Period: day(1), Denied: 2}, history.Activity{Seen: at(3, 2), Period: day(1), Denied: 3},
			history.Activity{Seen: at(3, 2), Period: day(1), Denied: 5}},
		{"same period, flushed out of order, adds", history.Activity{Seen: at(3, 2), Period: day(1), Denied: 2}, history.Activity{Seen: at(3, 1), Period: day(1), Denied: 3},
			history.Activity{Seen: at(3, 2), Period: day(1), Denied: 5}},
		{"a new period starts over", history.Activity{Seen: at(3, 1), Period: day(1), Denied: 7}, history.Activity{Seen: at(4, 1), Period: day(4), Denied: 0},
			history.Activity{Seen: at(4, 1), Period: day(4), Denied: 0}},
		{"a plan with periods starting earlier starts over too", history.Activity{Seen: at(3, 1), Period: day(3), Denied: 7}, history.Activity{Seen: at(3, 2), Period: day(1), Denied: 1},
			history.Activity{Seen: at(3, 2), Period: day(1), Denied: 1}},
		{"an old period's late flush is dropped", history.Activity{Seen: at(4, 1), Period: day(4), Denied: 1}, history.Activity{Seen: at(3, 23), Period: day(1), Denied: 9},
			history.Activity{Seen: at(4, 1), Period: day(4), Denied: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.have.Merge(tt.add); got != tt.want {
				t.Errorf("%+v.Merge(%+v) = %+v, want %+v", tt.have, tt.add, got, tt.want)
			}
		})
	}
}

// Two replicas count one consumer's decisions and flush them at once into
// one store: its activity record holds each denial once and the later
// sighting; flushes with nothing new change nothing; the next billing
// period's first flush starts its denials over, whichever replica makes
// it. On the local file, one Redis and a Redis Cluster.
func TestActivityHoldsDenialsThisPeriodAcrossReplicas(t *testing.T) {
	for name, kind := range storeKinds(t) {
		t.Run(name, func(t *testing.T) {
			clock := limitertest.NewClock(limitertest.Start)
			st := kind(t, clock)
			// Daily periods, so that the test crosses one.
			daily := func(_ string, at time.Time) time.Time { return history.Day.Floor(at) }
			replica := func() *history.Keeper {
				return history.New(history.Config{Store: st.history(), Ledger: st.ledger, Period: daily, Clock: clock.Now})
			}
			a, b := replica(), replica()
			ctx := context.Background()
			flush := func(ks ...*history.Keeper) {
				t.Helper()
				var wg sync.WaitGroup
				for _, k := range ks {
					wg.Go(func() {
						if err := k.Flush(ctx); err != nil {
							t.Error(err)
						}
					})
				}
				wg.Wait()
			}
			read := func() (history.Activity, bool) {
				t.Helper()
				acts, err := st.history().Activity(ctx, []string{"acme", "nobody"})
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := acts["nobody"]; ok {
					t.Errorf("a consumer never seen has an activity record: %+v", acts["nobody"])
				}
				act, ok := acts["acme"]
				return act, ok
			}

			now := clock.Now()
			a.Recorder().Counter("acme", "k1").Deny(now, history.ReasonRate)
			a.Recorder().Counter("acme", "k1").Allow(now)
			b.Recorder().Counter("acme", "k2").Deny(now, history.ReasonQuota)
			b.Recorder().Counter("acme", "k2").Deny(now, history.ReasonCap)
			clock.Advance(5 * time.Second)
			flush(a, b)
			flush(a, b) // nothing new
			want := history.Activity{Seen: clock.Now().Truncate(time.Second), Period: history.Day.Floor(now), Denied: 3}
			if got, ok := read(); !ok || got != want {
				t.Fatalf("after two replicas flushed: %+v (%v), want %+v", got, ok, want)
			}

			// The next day: an allow on a starts the period over; b's
			// denial is then counted in it.
			clock.Advance(24 * time.Hour)
			next := clock.Now()
			a.Recorder().Counter("acme", "k1").Allow(next)
			flush(a)
			if got, _ := read(); got.Denied != 0 || !got.Period.Equal(history.Day.Floor(next)) || !got.Seen.Equal(next.Truncate(time.Second)) {
				t.Fatalf("the next day, after an allow: %+v", got)
			}
			b.Recorder().Counter("acme", "k2").Deny(next, history.ReasonRate)
			clock.Advance(time.Second)
			flush(b)
			if got, _ := read(); got.Denied != 1 || !got.Period.Equal(history.Day.Floor(next)) {
				t.Fatalf("the next day, after a denial: %+v", got)
			}
		})
	}
}

// A consumer not seen within the daily retention loses its activity
// record at the next prune; one seen since keeps it.
func TestActivityIsForgottenPastTheDailyRetention(t *testing.T) {
	for name, kind := range storeKinds(t) {
		t.Run(name, func(t *testing.T) {
			clock := limitertest.NewClock(limitertest.Start)
			st := kind(t, clock)
			hist := st.history()
			ctx := context.Background()
			now := clock.Now()
			old := now.Add(-ret.Daily - 48*time.Hour)
			cs := []history.Counts{
				{Consumer: "gone", Key: "k", Hour: history.Hour.Floor(old), Allowed: 1, Seen: old, Period: history.Day.Floor(old)},
				{Consumer: "here", Key: "k", Hour: history.Hour.Floor(now), Allowed: 1, Seen: now, Period: history.Day.Floor(now)},
			}
			if err := hist.AddCounts(ctx, cs); err != nil {
				t.Fatal(err)
			}
			pruner, ok := hist.(history.Pruner)
			if !ok {
				t.Fatalf("%T does not prune", hist)
			}
			if err := pruner.Prune(ctx, now); err != nil {
				t.Fatal(err)
			}
			acts, err := hist.Activity(ctx, []string{"gone", "here"})
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := acts["gone"]; ok || !acts["here"].Seen.Equal(now.Truncate(time.Second)) {
				t.Errorf("after pruning: %+v", acts)
			}
		})
	}
}
