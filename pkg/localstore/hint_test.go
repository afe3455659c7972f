package localstore

import (
	"context"
	"testing"

	"github.com/levyhq/levy/pkg/apikey"
)

// A key record an older levy wrote, without a hint, is read as a key
// without one; a key stored with its hint keeps it across a reopen.
func TestKeyRecordsWithAndWithoutAHintAreRead(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := []byte(`{"id":"kold","hash":"hold","consumer":"acme","created_at":"2026-01-02T03:04:05Z"}`)
	if err := db.put(bucketKeys, "hold", jsonRaw(old)); err != nil {
		t.Fatal(err)
	}
	d, err := db.Directory()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := d.PutKey(ctx, &apikey.Key{ID: "knew", Hash: "hnew", ConsumerID: "acme", Hint: "levy_Ab3d"}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d, err = db.Directory()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := d.ListKeys(ctx, "acme")
	if err != nil || len(keys) != 2 || keys[0].ID != "knew" || keys[0].Hint != "levy_Ab3d" || keys[1].ID != "kold" || keys[1].Hint != "" {
		t.Fatalf("ListKeys = %+v, %v", keys, err)
	}
}

// jsonRaw is a record as stored, marshalled as it is.
type jsonRaw []byte

func (r jsonRaw) MarshalJSON() ([]byte, error) { return r, nil }
