package localstore_test

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/apikey/storetest"
	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/localstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, dir string) *localstore.DB {
	t.Helper()
	db, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestDirectory(t *testing.T) {
	storetest.Run(t, func(t *testing.T) apikey.Store {
		db := open(t, t.TempDir())
		t.Cleanup(func() { db.Close() })
		d, err := db.Directory()
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

func TestDirectorySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	d, _ := db.Directory()
	ctx := context.Background()
	d.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "pro"})
	d.PutKey(ctx, &apikey.Key{ID: "k", Hash: "h", ConsumerID: "acme"})
	d.RevokeKey(ctx, "k")
	db.Close()

	db = open(t, dir)
	defer db.Close()
	d, err := db.Directory()
	if err != nil {
		t.Fatal(err)
	}
	k, c, err := d.Lookup(ctx, "h")
	if err != nil || !k.Revoked || c.Plan != "pro" {
		t.Fatalf("after reopen: %+v %+v %v", k, c, err)
	}
}

func TestSecondProcessOnTheSameDataDirIsRefused(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	defer db.Close()
	if _, err := localstore.Open(dir); err == nil {
		t.Fatal("a second open of the same data dir succeeded")
	}
}

// Commit writes counters and ledger windows, and deletes them, in one
// transaction that a reopen reads back.
func TestCommitKeepsCountersAndLedgerAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	end := time.Date(2026, time.April, 1, 0, 0, 0, 0, time.UTC)
	db := open(t, dir)
	err := db.Commit(limiter.Changes{
		Counters: map[string]limiter.Counter{keyspace.State + "{c:a}:q:1": {Value: 7, End: end}, keyspace.State + "{c:a}:q:0": {Value: 1, End: end}},
		Ledger:   map[string]limiter.LedgerEntry{keyspace.State + "{c:a}:ledger:m:60": {Units: 7, Size: time.Minute}, keyspace.State + "{c:a}:ledger:m:0": {Units: 1, Size: time.Minute}},
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Commit(limiter.Changes{DeleteCounters: []string{keyspace.State + "{c:a}:q:0"}, DeleteLedger: []string{keyspace.State + "{c:a}:ledger:m:0"}})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	db = open(t, dir)
	defer db.Close()
	counters, err := db.LoadCounters()
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := db.LoadLedger()
	if err != nil {
		t.Fatal(err)
	}
	wantCounters := map[string]limiter.Counter{keyspace.State + "{c:a}:q:1": {Value: 7, End: end}}
	wantLedger := map[string]limiter.LedgerEntry{keyspace.State + "{c:a}:ledger:m:60": {Units: 7, Size: time.Minute}}
	if !reflect.DeepEqual(counters, wantCounters) || !reflect.DeepEqual(ledger, wantLedger) {
		t.Fatalf("after reopen: counters %v, ledger %v; want %v and %v", counters, ledger, wantCounters, wantLedger)
	}
}

// BenchmarkCommit is one write-behind commit of a busy consumer: its
// quota counter and its ledger window, fsynced. Its time is the floor of
// the local store's loss window, and its CPU time (cpu-us/op, most of it
// the kernel's, in fdatasync) what each commit costs the process: see
// limiter.DefaultCommitSpacing.
func BenchmarkCommit(b *testing.B) {
	db := open(b, b.TempDir())
	defer db.Close()
	end := time.Now().Add(time.Hour)
	b.ReportAllocs()
	cpu := processCPU(b)
	for i := range b.N {
		err := db.Commit(limiter.Changes{
			Counters: map[string]limiter.Counter{keyspace.State + "{c:a}:q:1": {Value: int64(i), End: end}},
			Ledger:   map[string]limiter.LedgerEntry{keyspace.State + "{c:a}:ledger:m:60": {Units: int64(i), Size: time.Minute}},
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((processCPU(b)-cpu).Microseconds())/float64(b.N), "cpu-us/op")
}

// BenchmarkCommitBusy is one write-behind commit under BenchmarkCheck's
// traffic (test/bench): at the limiter's default spacing, the quota
// counters and ledger windows of 150 of 200 consumers, fsynced.
func BenchmarkCommitBusy(b *testing.B) {
	db := open(b, b.TempDir())
	defer db.Close()
	end := time.Now().Add(time.Hour)
	const consumers, busy = 200, 150
	var counters, windows []string
	for c := range consumers {
		counters = append(counters, fmt.Sprintf("%s{c:bench%d}:q:1", keyspace.State, c))
		windows = append(windows, fmt.Sprintf("%s{c:bench%d}:ledger:m:60", keyspace.State, c))
	}
	b.ReportAllocs()
	cpu := processCPU(b)
	for i := range b.N {
		ch := limiter.Changes{Counters: make(map[string]limiter.Counter, busy), Ledger: make(map[string]limiter.LedgerEntry, busy)}
		for j := range busy {
			c := (i*busy + j) % consumers
			ch.Counters[counters[c]] = limiter.Counter{Value: int64(i), End: end}
			ch.Ledger[windows[c]] = limiter.LedgerEntry{Units: int64(i), Size: time.Minute}
		}
		if err := db.Commit(ch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((processCPU(b)-cpu).Microseconds())/float64(b.N), "cpu-us/op")
}

// processCPU is the process's CPU time so far, user and system.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// DeleteEndedCounters deletes exactly the ended counters, long keys too,
// a batch at a time, and a pass of batches reaches the end.
func TestDeleteEndedCountersInBatches(t *testing.T) {
	db, err := localstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cut := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	set := map[string]limiter.Counter{}
	for i := range 25 {
		end := cut.Add(time.Hour)
		if i%2 == 0 {
			end = cut.Add(-time.Hour)
		}
		set[fmt.Sprintf("{rl:ip=10.0.0.%d}:q:day:%d", i, i)] = limiter.Counter{Value: int64(i), End: end}
	}
	long := "{rl:ip=" + strings.Repeat("v", 2000) + "}:q:day:1"
	set[long] = limiter.Counter{Value: 1, End: cut.Add(-time.Hour)}
	if err := db.Commit(limiter.Changes{Counters: set}); err != nil {
		t.Fatal(err)
	}
	from, batches := "", 0
	for {
		next, err := db.DeleteEndedCounters(cut, from, 4)
		if err != nil {
			t.Fatal(err)
		}
		batches++
		if next == "" {
			break
		}
		from = next
	}
	if batches < 5 {
		t.Fatalf("%d batches of 4 for 26 counters", batches)
	}
	got, err := db.LoadCounters()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 12 {
		t.Fatalf("%d counters left, want the 12 not ended", len(got))
	}
	for k, c := range got {
		if c.End.Before(cut) {
			t.Fatalf("ended counter %s kept", k)
		}
	}
}

// BenchmarkReadCounter is the read the local limiter makes, under a shard
// lock, for a counter that left memory (hit) or that the file does not
// have (miss: a new client address), in a file of 200,000 counters.
func BenchmarkReadCounter(b *testing.B) {
	db := open(b, b.TempDir())
	defer db.Close()
	end := time.Now().Add(time.Hour)
	const n = 200_000
	key := func(i int) string {
		return fmt.Sprintf("{rl:edge.remote_address=10.%d.%d.%d}:q:day:1773446400", i>>16, i>>8&0xff, i&0xff)
	}
	for start := 0; start < n; start += 20_000 {
		set := map[string]limiter.Counter{}
		for i := start; i < start+20_000; i++ {
			set[key(i)] = limiter.Counter{Value: 1, End: end}
		}
		if err := db.Commit(limiter.Changes{Counters: set}); err != nil {
			b.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name   string
		offset int
		found  bool
	}{{"hit", 0, true}, {"miss", n, false}} {
		b.Run(tt.name, func(b *testing.B) {
			keys := make([]string, 4096)
			for i := range keys {
				keys[i] = key(tt.offset + i*37%n)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, found, err := db.ReadCounter(keys[i%len(keys)]); err != nil || found != tt.found {
					b.Fatalf("%v %v", found, err)
				}
				i++
			}
		})
	}
}
