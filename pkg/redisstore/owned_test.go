package redisstore_test

import (
	"context"
	"testing"
	"time"
	"unsafe"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// The cache outlives the call that filled it, so it keeps copies of the id
// and hash it was asked with, not the caller's strings: RLS asks with a
// piece of its copy of a request (which a cached key would pin), and a
// zero-copy decoder asks with a string over a buffer gRPC reuses for the
// next message (which would rewrite the cached key and record under it).
func TestCacheOwnsTheIDsItWasAskedWith(t *testing.T) {
	srv := redistest.Start(t)
	c, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr})
	t.Cleanup(func() { c.Close() })
	d := redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, TTL: time.Hour, Timeout: 5 * time.Second})
	ctx := context.Background()
	for _, id := range []string{"acme", "zeta"} {
		if err := d.PutConsumer(ctx, &apikey.Consumer{ID: id, Plan: "pro"}); err != nil {
			t.Fatal(err)
		}
		if err := d.PutKey(ctx, &apikey.Key{ID: "k-" + id, Hash: "h-" + id, ConsumerID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// received is s as a zero-copy decoder hands it out, and the buffer
	// under it, which the next message overwrites.
	received := func(s string) (string, []byte) {
		b := []byte(s)
		return unsafe.String(&b[0], len(b)), b
	}

	id, buf := received("acme")
	got, ok := d.Consumer(id)
	copy(buf, "zeta")
	if !ok || got.ID != "acme" {
		t.Fatalf("consumer %+v (%v): its id changed with the caller's buffer", got, ok)
	}
	if again, ok := d.Consumer("acme"); !ok || again != got {
		t.Fatalf("acme is not cached as acme: %+v, want the cached %p", again, got)
	}

	hash, buf := received("h-acme")
	k, _, err := d.Lookup(ctx, hash)
	copy(buf, "h-zeta")
	if err != nil || k.Hash != "h-acme" || k.ConsumerID != "acme" {
		t.Fatalf("key %+v (%v): its hash changed with the caller's buffer", k, err)
	}
	if again, _, _ := d.Lookup(ctx, "h-acme"); again != k {
		t.Fatalf("h-acme is not cached as h-acme: %+v, want the cached %p", again, k)
	}
}
