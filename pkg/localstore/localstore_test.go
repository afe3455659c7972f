package localstore_test

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/apikey/storetest"
	"github.com/levyhq/levy/pkg/localstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, dir string) *localstore.DB {
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
