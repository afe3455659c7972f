package localstore

import (
	"strings"
	"testing"
	"time"

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

// After a rollback to an older levy, which writes the old names again,
// and a roll forward, what the older levy wrote is counted and exported:
// the file is folded at every open, merged into what has the current
// name (a counter of the same period summed, a window's units and
// billing summed).
func TestOpenFoldsOldNamesWrittenAfterTheUpgrade(t *testing.T) {
	dir := t.TempDir()
	end := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	window := "{c:acme}:ledger:api_calls:1772323200"
	counter := "{c:acme}:units:1772323200"
	db, err := Open(dir) // upgraded: levy of the current layout wrote these
	if err != nil {
		t.Fatal(err)
	}
	err = db.Commit(limiter.Changes{
		Counters: map[string]limiter.Counter{keyspace.State + counter: {Value: 3, End: end}},
		Ledger: map[string]limiter.LedgerEntry{keyspace.State + window: {Units: 4, Size: time.Minute, Exported: true,
			Accounted: 4, Billed: 4, Events: 1, LastValue: 4, LastSent: 100}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// the older levy, rolled back to, writes the old names
	err = db.Commit(limiter.Changes{
		Counters: map[string]limiter.Counter{counter: {Value: 2, End: end}, "{c:bolt}:units:1772323200": {Value: 1, End: end}},
		Ledger:   map[string]limiter.LedgerEntry{window: {Units: 9, Size: time.Minute}, "{c:bolt}:ledger:api_calls:1772323200": {Units: 9, Size: time.Minute}},
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err = Open(dir) // rolled forward again
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	counters, err := db.LoadCounters()
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := db.LoadLedger()
	if err != nil {
		t.Fatal(err)
	}
	wantCounters := map[string]int64{keyspace.State + counter: 5, keyspace.State + "{c:bolt}:units:1772323200": 1}
	if len(counters) != len(wantCounters) {
		t.Fatalf("counters %v, want %v", counters, wantCounters)
	}
	for k, v := range wantCounters {
		if c := counters[k]; c.Value != v || !c.End.Equal(end) {
			t.Errorf("counter %s: %+v, want %d", k, c, v)
		}
	}
	want := map[string]limiter.LedgerEntry{
		keyspace.State + window:                                 {Units: 13, Size: time.Minute, Exported: true, Accounted: 4, Billed: 4, Events: 1, LastValue: 4, LastSent: 100},
		keyspace.State + "{c:bolt}:ledger:api_calls:1772323200": {Units: 9, Size: time.Minute},
	}
	if len(ledger) != len(want) {
		t.Fatalf("ledger %+v, want %+v", ledger, want)
	}
	for k, w := range want {
		if ledger[k] != w {
			t.Errorf("window %s: %+v, want %+v: the 9 units the older levy wrote are due", k, ledger[k], w)
		}
	}
}
