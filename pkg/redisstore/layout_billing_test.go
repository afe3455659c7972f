package redisstore_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	stripe "github.com/stripe/stripe-go/v76"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/stripetest"
	"github.com/levyhq/levy/pkg/usage"
)

// During a rolling update from the unversioned layout, older and newer
// replicas admit into the same window under its two names. The older
// replica's exporter bills its copy as the window's event 0; had a newer
// one billed its copy too, its event 0 would carry the same identifier
// (Identifier keeps an identifier across the rename), Stripe would keep
// one and the exporter count the other as billed. So newer replicas
// export nothing until no older replica is registered and the sweep has
// merged the copies; the merged window then bills the rest under its next
// event: every unit is billed once.
func TestRollingUpdateBillsEveryUnitOnce(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client()
	sp := stripetest.Start(t)
	lim := limitertest.NewRedis(t, limiter.RedisConfig{Client: client, Timeout: 5 * time.Second})
	ledger := limiter.NewRedisLedger(client, time.Minute)
	terms := usage.Terms{Plan: "payg", Meter: "api_calls", Billed: true, Period: plan.Month}
	newKey := usage.LedgerKey("bolt", terms)
	oldKey := strings.TrimPrefix(newKey, keyspace.State)
	bolt := &apikey.Consumer{ID: "bolt", Plan: "payg", StripeCustomerID: "cus_bolt"}

	register(ctx, t, client, "old-replica", keyspace.ReplicaMember("new-replica"))
	win := func(key string, cost int64) limiter.Limit {
		return limiter.Limit{Kind: limiter.Ledger, Name: "ledger", Key: key, Cost: cost, WindowSize: time.Minute}
	}
	if _, err := lim.Decide(ctx, []limiter.Limit{win(oldKey, 5)}); err != nil { // the older replica
		t.Fatal(err)
	}
	if _, err := lim.Decide(ctx, []limiter.Limit{win(newKey, 2)}); err != nil { // the newer one
		t.Fatal(err)
	}
	starts, err := ledgerWindows(ctx, client, oldKey)
	if err != nil || len(starts) != 1 {
		t.Fatal(starts, err)
	}
	start := time.Unix(starts[0], 0).UTC()

	// The older replica exports its copy as levy before layout 1 did.
	oldW := usage.Window{Consumer: "bolt", Meter: "api_calls", Terms: terms, Key: oldKey, Start: start, Units: 5}
	_, err = billing.NewStripeClient("sk_test_levy", sp.URL).BillingMeterEvents.New(&stripe.BillingMeterEventParams{
		EventName:  stripe.String("api_calls"),
		Payload:    map[string]string{"stripe_customer_id": bolt.StripeCustomerID, "value": "5"},
		Identifier: stripe.String(billing.Identifier(oldW, 0)),
		Timestamp:  stripe.Int64(start.Unix()),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ledger.Commit(ctx, oldW, 5, []usage.Window{oldW}); err != nil {
		t.Fatal(err)
	}

	exporter := billing.NewExporter(billing.ExporterConfig{
		Ledger:   ledger,
		Consumer: func(id string) (*apikey.Consumer, bool) { return bolt, id == bolt.ID },
		Ready:    func(ctx context.Context) (bool, error) { return redisstore.LayoutComplete(ctx, client) },
		APIKey:   "sk_test_levy", APIBase: sp.URL,
		Log:   zaptest.NewLogger(t),
		Clock: func() time.Time { return start.Add(5 * time.Minute) },
	})
	// The newer replica's exporter, before the sweep has merged the copies.
	if n, err := exporter.ExportOnce(ctx); !errors.Is(err, billing.ErrNotReady) || n != 0 {
		t.Fatalf("ExportOnce before the sweep = %d, %v; want %v", n, err, billing.ErrNotReady)
	}
	stop := redisstore.StartLayoutSweep(redisstore.LayoutSweepConfig{Client: client, Holder: "new-replica", Every: 10 * time.Millisecond, Log: zaptest.NewLogger(t)})
	defer stop()
	// The sweep merges the copies while the older replica runs, and the
	// newer replicas' exports wait all the same: it may write again.
	await.Until(t, 5*time.Second, func() bool { return client.Exists(ctx, oldKey).Val() == 0 }, "the copies merged")
	if n, err := exporter.ExportOnce(ctx); !errors.Is(err, billing.ErrNotReady) || n != 0 {
		t.Fatalf("ExportOnce with an older replica registered = %d, %v; want %v", n, err, billing.ErrNotReady)
	}

	client.ZRem(ctx, keyspace.Replicas, "old-replica") // the update ends
	await.Until(t, 5*time.Second, func() bool {
		done, err := redisstore.LayoutComplete(ctx, client)
		return err == nil && done
	}, "the layout complete")
	if _, err := exporter.ExportOnce(ctx); err != nil {
		t.Fatal(err)
	}
	// (The exporter may replace the older replica's event with one for
	// the whole window, under the window's next identifier.)
	var billed int64
	for _, e := range sp.Events() {
		if !e.Cancelled {
			billed += e.Value
		}
	}
	if billed != 7 {
		t.Fatalf("Stripe holds %d units in %+v; want the 7 admitted", billed, sp.Events())
	}
	ws, err := ledger.Windows(ctx, "bolt", start, start.Add(time.Minute))
	if err != nil || len(ws) != 1 || ws[0].Billed != 7 || ws[0].Due() {
		t.Fatalf("bolt's windows %+v, %v; want one, billed 7, with nothing due", ws, err)
	}
	if n, err := exporter.ExportOnce(ctx); err != nil || n != 0 {
		t.Fatalf("a second export = %d, %v; want nothing", n, err)
	}
}

// register puts replicas in the registry as beating now: a bare id is a
// replica of the unversioned layout.
func register(ctx context.Context, t *testing.T, client redis.UniversalClient, members ...string) {
	t.Helper()
	now := float64(time.Now().UnixMilli())
	for _, m := range members {
		if err := client.ZAdd(ctx, keyspace.Replicas, redis.Z{Score: now, Member: m}).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// The sweep goes on while an older replica is registered, however long
// the update takes, and after every pass that moved keys; it marks the
// layout complete only after a pass that found nothing with no older
// replica registered, and sweeps again when one registers after that (a
// rollback).
func TestLayoutSweepRunsUntilNoOlderReplicaAndNoOldKey(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client()
	complete := func() bool {
		done, err := redisstore.LayoutComplete(ctx, client)
		if err != nil {
			t.Fatal(err)
		}
		return done
	}
	writeOld := func(i int) string {
		k := "{c:c" + strconv.Itoa(i) + "}:units"
		client.HSet(ctx, k, "s", "1772323200", "v", "1")
		return k
	}
	gone := func(k string) func() bool { return func() bool { return client.Exists(ctx, k).Val() == 0 } }

	register(ctx, t, client, "old-replica", keyspace.ReplicaMember("new-replica"))
	stop := redisstore.StartLayoutSweep(redisstore.LayoutSweepConfig{Client: client, Holder: "new-replica", Every: 10 * time.Millisecond, Log: zaptest.NewLogger(t)})
	defer stop()
	for i := range 3 { // the older replica keeps writing: each is moved
		await.Until(t, 5*time.Second, gone(writeOld(i)), "an old key moved while an older replica runs")
	}
	await.Holds(t, 100*time.Millisecond, func() bool { return !complete() }, "the layout incomplete while an older replica is registered")

	client.ZRem(ctx, keyspace.Replicas, "old-replica")
	await.Until(t, 5*time.Second, complete, "the layout complete once no older replica is registered")

	register(ctx, t, client, "old-replica-again")
	await.Until(t, 5*time.Second, func() bool { return client.Exists(ctx, keyspace.LayoutDone).Val() == 0 }, "the marker gone once an older replica registers again")
	await.Until(t, 5*time.Second, gone(writeOld(9)), "its keys moved")
	client.ZRem(ctx, keyspace.Replicas, "old-replica-again")
	await.Until(t, 5*time.Second, complete, "the layout complete again")
}

// Another application's keys in a shared Redis keep their names, and a
// key levy cannot merge is skipped without stopping the pass: the keys
// after it are moved.
func TestMigrateLayoutSkipsForeignAndCorruptKeys(t *testing.T) {
	ctx := context.Background()
	client := redistest.Start(t).Client()
	foreign := []string{"{c:cart}:items", "{rl:x}:cache"}
	client.RPush(ctx, foreign[0], "a")
	client.Set(ctx, foreign[1], "v", 0)
	// corrupt: a bucket that is not a number, where the new one exists;
	// a counter of a type levy never writes there
	client.Set(ctx, "{c:a}:rate:pro", "not-a-number", 0)
	client.Set(ctx, keyspace.Rate("a", "pro"), "5", 0)
	client.RPush(ctx, "{c:b}:units", "x")
	client.HSet(ctx, "{c:w}:ledger:api_calls:1772323200", "u", "lots")
	client.HSet(ctx, keyspace.State+"{c:w}:ledger:api_calls:1772323200", "u", "1")
	good := []string{"{c:a}:units", "{c:z}:units", "{rl:x}:b:1000000000"}
	for _, k := range good[:2] {
		client.HSet(ctx, k, "s", "1772323200", "v", "3")
	}
	client.Set(ctx, good[2], "7", 0)

	pass, err := redisstore.MigrateLayout(ctx, client)
	if err != nil || pass.Moved != len(good) || pass.Skipped != 3 {
		t.Fatalf("MigrateLayout = %+v, %v; want %d moved and 3 skipped", pass, err, len(good))
	}
	for _, k := range foreign {
		if client.Exists(ctx, k).Val() != 1 {
			t.Errorf("%s was moved", k)
		}
	}
	for _, k := range good {
		if client.Exists(ctx, keyspace.State+k).Val() != 1 {
			t.Errorf("%s was not moved", k)
		}
	}
	if v := client.Get(ctx, keyspace.Rate("a", "pro")).Val(); v != "5" {
		t.Errorf("the bucket merged with a corrupt one: %q", v)
	}
}
