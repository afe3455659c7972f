package history_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/usage"
)

// windows is a ledger that holds what the test puts in it.
type windows []usage.Window

func (ws *windows) Windows(_ context.Context, consumer string, from, to time.Time) ([]usage.Window, error) {
	var out []usage.Window
	for _, w := range *ws {
		if w.Consumer == consumer && !w.Start.Before(from) && w.Start.Before(to) {
			out = append(out, w)
		}
	}
	return out, nil
}

var t0 = time.Date(2026, 3, 14, 15, 0, 0, 0, time.UTC)

func localHistory(t *testing.T) *localstore.History {
	db, err := localstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db.History(history.DefaultRetention)
}

// The ledger prunes accounted windows after 35 days: an hour rolled up
// before keeps its units when its windows are gone, and so does its day.
func TestRollUpSurvivesTheLedgerPruningItsWindows(t *testing.T) {
	st := localHistory(t)
	now := t0.Add(10 * time.Minute)
	ledger := &windows{
		{Consumer: "acme", Start: t0, Size: time.Minute, Units: 7, Refunded: 2},
		{Consumer: "acme", Start: t0.Add(time.Minute), Size: time.Minute, Units: 3},
	}
	k := history.New(history.Config{Store: st, Ledger: ledger, Clock: func() time.Time { return now }})
	k.Touch("acme", t0)
	if _, err := k.RollUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	*ledger = nil // pruned
	now = now.Add(time.Hour)
	k.Touch("acme", t0)
	if _, err := k.RollUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := &history.Reader{Store: st, Clock: func() time.Time { return now }}
	for _, step := range []history.Step{history.Hour, history.Day} {
		s, err := r.Series(context.Background(), "acme", history.Query{From: t0, To: t0.Add(time.Hour), Step: step})
		if err != nil {
			t.Fatal(err)
		}
		if s.Total.Billed != 10 || s.Total.Refunded != 2 {
			t.Errorf("%s: billed %d refunded %d, want 10 and 2", step, s.Total.Billed, s.Total.Refunded)
		}
	}
}

// Buckets past their retention are pruned; those within it stay.
func TestPruneForgetsBucketsPastTheRetention(t *testing.T) {
	st := localHistory(t)
	ctx := context.Background()
	old, recent := t0.Add(-40*24*time.Hour), t0.Add(-time.Hour)
	err := st.SetUsage(ctx, []history.Usage{{Consumer: "acme", Step: history.Hour, Start: old, Billed: 1},
		{Consumer: "acme", Step: history.Hour, Start: recent, Billed: 2}, {Consumer: "acme", Step: history.Day, Start: history.Day.Floor(old), Billed: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Prune(ctx, t0); err != nil {
		t.Fatal(err)
	}
	hours, err := st.Buckets(ctx, "acme", history.Hour, old.Add(-time.Hour), t0)
	if err != nil || len(hours) != 1 || hours[0].Billed != 2 {
		t.Fatalf("hours after prune: %+v %v", hours, err)
	}
	if days, err := st.Buckets(ctx, "acme", history.Day, old.Add(-48*time.Hour), t0); err != nil || len(days) != 1 {
		t.Fatalf("days after prune (400 days kept): %+v %v", days, err)
	}
}

// A failed flush keeps its counts for the next.
type failingStore struct {
	history.Store
	fail bool
}

func (f *failingStore) AddCounts(ctx context.Context, cs []history.Counts) error {
	if f.fail {
		return errors.New("store down")
	}
	return f.Store.AddCounts(ctx, cs)
}

func TestFlushKeepsCountsTheStoreRefused(t *testing.T) {
	st := &failingStore{Store: localHistory(t), fail: true}
	now := t0.Add(time.Minute)
	k := history.New(history.Config{Store: st, Ledger: &windows{}, Clock: func() time.Time { return now }})
	c := k.Recorder().Counter("acme", "k1")
	c.Allow(now)
	c.Deny(now, history.ReasonRate)
	if err := k.Flush(context.Background()); err == nil {
		t.Fatal("Flush reported no error from a failing store")
	}
	st.fail = false
	c.Deny(now, history.ReasonCap)
	if err := k.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	bs, err := st.Buckets(context.Background(), "acme", history.Hour, t0, t0.Add(time.Hour))
	if err != nil || len(bs) != 1 {
		t.Fatalf("%+v %v", bs, err)
	}
	if want := (history.Denied{Rate: 1, Cap: 1}); bs[0].Denied != want || bs[0].Keys["k1"] != (history.KeyCounts{Allowed: 1, Denied: 2}) {
		t.Fatalf("bucket %+v", bs[0])
	}
}

// A key idle for two hours leaves the recorder; its holder takes a new
// counter, and nothing counted before is lost.
func TestIdleCountersAreForgottenWithoutLosingCounts(t *testing.T) {
	st := localHistory(t)
	now := t0.Add(time.Minute)
	k := history.New(history.Config{Store: st, Ledger: &windows{}, Clock: func() time.Time { return now }})
	c := k.Recorder().Counter("acme", "k1")
	c.Allow(now)
	now = now.Add(3 * time.Hour)
	if err := k.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := k.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !c.Dead() || k.Recorder().Counter("acme", "k1") == c {
		t.Fatal("an idle counter stayed")
	}
	bs, _ := st.Buckets(context.Background(), "acme", history.Hour, t0, t0.Add(time.Hour))
	if len(bs) != 1 || bs[0].Keys["k1"].Allowed != 1 {
		t.Fatalf("buckets %+v", bs)
	}
}

// Bad parameters are a QueryError naming what is wrong (a 400).
func TestParseQueryRefusesBadParameters(t *testing.T) {
	r := &history.Reader{Clock: func() time.Time { return t0 }}
	tests := []struct {
		give string
		want string
	}{
		{"step=week", "invalid_step"},
		{"from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z", "invalid_range"},
		{"from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z", "range_too_long"},
		{"step=day&from=2024-01-01T00:00:00Z&to=2026-03-01T00:00:00Z", "range_too_long"},
		{"from=yesterday", "invalid_from"},
		{"to=2026-03-01", "invalid_to"},
		{"format=xml", "invalid_format"},
		{"bogus=1", "unknown_parameter"},
		{"step=hour&step=day", "repeated_parameter"},
	}
	for _, tt := range tests {
		v, _ := url.ParseQuery(tt.give)
		_, err := r.ParseQuery(v)
		var qe *history.QueryError
		if !errors.As(err, &qe) || qe.Reason != tt.want {
			t.Errorf("%s: %v, want %s", tt.give, err, tt.want)
		}
	}
	v, _ := url.ParseQuery("step=day&from=2026-01-01T10:00:00Z&to=2026-03-01T10:00:00Z&key=all&format=csv")
	q, err := r.ParseQuery(v)
	if err != nil || !q.From.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) || !q.To.Equal(time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)) ||
		q.Key != history.AllKeys || !q.CSV {
		t.Fatalf("%+v %v", q, err)
	}
}

// A consumer with many keys is looked up once a flush for its billing
// period (levy serve's lookup reads the directory and the plan), and each
// count gets that period.
func TestFlushLooksUpAConsumersPeriodOnce(t *testing.T) {
	st := localHistory(t)
	now := t0.Add(time.Minute)
	period := t0.Add(-3 * 24 * time.Hour)
	lookups := map[string]int{}
	k := history.New(history.Config{Store: st, Ledger: &windows{}, Clock: func() time.Time { return now },
		Period: func(consumer string, _ time.Time) time.Time { lookups[consumer]++; return period }})
	for _, key := range []string{"k1", "k2", "k3"} {
		k.Recorder().Counter("acme", key).Deny(now, history.ReasonRate)
	}
	k.Recorder().Counter("beta", "k1").Deny(now, history.ReasonRate)
	if err := k.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if lookups["acme"] != 1 || lookups["beta"] != 1 {
		t.Fatalf("period lookups %v, want one a consumer", lookups)
	}
	as, err := st.Activity(context.Background(), []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	if a := as["acme"]; !a.Period.Equal(period) || a.Denied != 3 {
		t.Fatalf("acme's activity %+v, want 3 denials in the period from %v", a, period)
	}
}
