package localstore

import (
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
)

// A key of any length is saved and read back (a descriptor value from a
// request header can be 100 KiB; bbolt refuses keys over 32 KiB), and one
// such key never holds up the others.
func TestKeysOfAnyLengthAreSavedAndOthersWithThem(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	end := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	long := keyspace.State + "{rl:edge.remote_address=" + strings.Repeat("v", 100_000) + "}:day"
	counters := map[string]limiter.Counter{long: {Value: 7, End: end}, keyspace.State + "{c:acme}:units:1": {Value: 3, End: end},
		strings.Repeat("k", maxStoredKey): {Value: 1, End: end}}
	ledger := map[string]limiter.LedgerEntry{keyspace.State + "{c:" + strings.Repeat("x", 40_000) + "}:ledger:m:1": {Units: 5, Size: time.Minute}}
	if err := db.Commit(limiter.Changes{Counters: counters, Ledger: ledger}); err != nil {
		t.Fatalf("commit with a long key: %v", err)
	}
	db.Close()
	db, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got, err := db.LoadCounters()
	if err != nil || len(got) != 3 || got[long].Value != 7 || got[keyspace.State+"{c:acme}:units:1"].Value != 3 {
		t.Fatalf("counters after a restart: %d of 3, %v", len(got), err)
	}
	if c, found, err := db.ReadCounter(long); err != nil || !found || c.Value != 7 || !c.End.Equal(end) {
		t.Fatalf("read back one long key: %v %v %v", c, found, err)
	}
	gotLedger, err := db.LoadLedger()
	if err != nil || len(gotLedger) != 1 {
		t.Fatalf("ledger after a restart: %d, %v", len(gotLedger), err)
	}
	if err := db.Commit(limiter.Changes{DeleteCounters: []string{long}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.LoadCounters(); len(got) != 2 {
		t.Fatalf("the long key was not deleted: %d counters", len(got))
	}
}
