package localstore

import (
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
)

// A data file written before keyspace.Version keeps its counters and
// unexported windows after an upgrade, under their current names.
func TestOpenMovesAnOlderLayoutsCountersAndWindows(t *testing.T) {
	dir := t.TempDir()
	end := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	long := "{rl:edge.remote_address=" + strings.Repeat("v", 2000) + "}:q:day:1774915200"
	// The old layout's names, as levy wrote them.
	counters := map[string]limiter.Counter{"{c:acme}:units:1772323200": {Value: 7, End: end}, long: {Value: 2, End: end}}
	ledger := map[string]limiter.LedgerEntry{"{c:acme}:ledger:api_calls:1772323200": {Units: 5, Size: time.Minute}}
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Commit(limiter.Changes{Counters: counters, Ledger: ledger}); err != nil {
		t.Fatal(err)
	}
	// and no record of a layout, as in a file of that levy
	if err := db.bolt.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(keyLayout) }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	for range 2 { // the second open finds the file moved already
		db, err = Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		gotCounters, err := db.LoadCounters()
		if err != nil {
			t.Fatal(err)
		}
		gotLedger, err := db.LoadLedger()
		if err != nil {
			t.Fatal(err)
		}
		db.Close()
		want := map[string]int64{keyspace.State + "{c:acme}:units:1772323200": 7, keyspace.State + long: 2}
		if len(gotCounters) != len(want) {
			t.Fatalf("counters %v, want %v", gotCounters, want)
		}
		for k, v := range want {
			if c := gotCounters[k]; c.Value != v || !c.End.Equal(end) {
				t.Errorf("counter %.40q: %+v, want %d until %v", k, c, v, end)
			}
		}
		w, ok := gotLedger[keyspace.State+"{c:acme}:ledger:api_calls:1772323200"]
		if len(gotLedger) != 1 || !ok || w.Units != 5 || w.Size != time.Minute {
			t.Errorf("ledger %+v, want acme's window of 5 units under its current name", gotLedger)
		}
	}
}
