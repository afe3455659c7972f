package localstore

import (
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/limiter"
)

// A data file that is empty or corrupt is a clear error at open or load:
// never a panic, and never a start as if the file were new.
func TestCorruptOrEmptyDataFileIsAClearError(t *testing.T) {
	good := t.TempDir()
	db, err := Open(good)
	if err != nil {
		t.Fatal(err)
	}
	counters := map[string]limiter.Counter{}
	ledger := map[string]limiter.LedgerEntry{}
	for i := range 300 {
		counters["{c:acme}:units:"+strings.Repeat("x", i%40)+":"+string(rune('a'+i%26))] = limiter.Counter{Value: int64(i), End: time.Now().Add(time.Hour)}
		ledger["{c:acme}:ledger:api_calls:"+string(rune('a'+i%26))+strings.Repeat("y", i%30)] = limiter.LedgerEntry{Units: int64(i), Size: time.Minute}
	}
	if err := db.Commit(limiter.Changes{Counters: counters, Ledger: ledger}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	orig, err := os.ReadFile(filepath.Join(good, "levy.db"))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(7))
	garble := func(b []byte, off, n int) []byte {
		b = append([]byte{}, b...)
		for i := off; i < off+n && i < len(b); i++ {
			b[i] = byte(rng.Intn(256))
		}
		return b
	}
	page := 4096
	tests := []struct {
		name    string
		give    []byte
		wantErr string // "" when the corruption may go unnoticed
	}{
		{name: "empty", give: []byte{}, wantErr: "empty (0 bytes)"},
		{name: "both meta pages", give: garble(orig, 0, 2*page), wantErr: "open"},
		{name: "truncated", give: orig[:len(orig)/2]},
		{name: "a data page", give: garble(orig, 3*page, page)},
		{name: "the free list", give: garble(orig, 2*page, page)},
		{name: "every page after the meta", give: garble(orig, 2*page, len(orig))},
		{name: "scattered bytes", give: func() []byte {
			b := orig
			for range 40 {
				b = garble(b, 2*page+rng.Intn(len(orig)-2*page), 8)
			}
			return b
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "levy.db"), tt.give, 0o600); err != nil {
				t.Fatal(err)
			}
			err := openAndLoad(dir)
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want one that says %q", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "levy.db") && !strings.Contains(err.Error(), "corrupt") {
				t.Fatalf("err %q names neither the file nor the corruption", err)
			}
		})
	}
}

// openAndLoad does what levy serve does with a data dir at start (Open
// reads every quota counter once; the local limiter loads the ledger).
func openAndLoad(dir string) error {
	db, err := Open(dir)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.LoadLedger(); err != nil {
		return err
	}
	_, err = db.Directory()
	return err
}
