package redisstore_test

import (
	"context"
	"fmt"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/redisstore"
	"github.com/levyhq/levy/pkg/redistest"
)

// A page of consumers reads the records it examines, not MaxScan of them:
// a page of 10 with no filter over a large store is about 10 HGETALLs, not
// thousands (the admin API asks with MaxScan 5000).
func TestAPageReadsOnlyTheConsumersItExamines(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr})
	t.Cleanup(func() { c.Close() })
	d := redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, Log: zaptest.NewLogger(t)})
	for i := range 500 {
		if err := d.PutConsumer(ctx, &apikey.Consumer{ID: fmt.Sprintf("c%04d", i), Plan: "free"}); err != nil {
			t.Fatal(err)
		}
	}
	before, err := redistest.CommandCalls(ctx, c, "hgetall")
	if err != nil {
		t.Fatal(err)
	}
	page, err := d.ListConsumers(ctx, apikey.ListQuery{Limit: 10, MaxScan: 5000})
	if err != nil || len(page.Consumers) != 10 || page.Next != "c0009" {
		t.Fatalf("page: %d consumers, next %q, %v", len(page.Consumers), page.Next, err)
	}
	after, err := redistest.CommandCalls(ctx, c, "hgetall")
	if err != nil {
		t.Fatal(err)
	}
	if n := after - before; n > 20 {
		t.Fatalf("a page of 10 with no filter ran %d HGETALLs over a store of 500: it reads MaxScan records, not those it examines", n)
	}
	// A filter still pages to the end with the cursor.
	var got []string
	q := apikey.ListQuery{Limit: 7, MaxScan: 50, Match: func(c *apikey.Consumer) bool { return c.ID[4] == '7' }}
	for {
		page, err := d.ListConsumers(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page.Consumers {
			got = append(got, c.ID)
		}
		if page.Next == "" {
			break
		}
		q.After = page.Next
	}
	if len(got) != 50 || got[0] != "c0007" || got[49] != "c0497" {
		t.Fatalf("filtered walk: %d consumers %v", len(got), got)
	}
}

// Two replicas issuing the same client-chosen key id at once: the second
// is refused, never re-pointing the id at its key (the first key, still
// working, could no longer be revoked by its id). Writing a key again
// under its own id (an update: rotation sets its deadline) is fine.
func TestAKeyIDNamesOneKeyAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c, _ := redisstore.NewClient(redisstore.Options{Addr: srv.Addr})
	t.Cleanup(func() { c.Close() })
	a := redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, Log: zaptest.NewLogger(t)})
	b := redisstore.NewDirectory(redisstore.DirectoryConfig{Client: c, Log: zaptest.NewLogger(t)})
	for _, d := range []*redisstore.Directory{a, b} {
		if err := d.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "free"}); err != nil {
			t.Fatal(err)
		}
	}
	first := &apikey.Key{ID: "k1", Hash: fmt.Sprintf("%064x", 1), ConsumerID: "acme"}
	if err := a.PutKey(ctx, first); err != nil {
		t.Fatal(err)
	}
	second := &apikey.Key{ID: "k1", Hash: fmt.Sprintf("%064x", 2), ConsumerID: "acme"}
	if err := b.PutKey(ctx, second); err != apikey.ErrKeyIDTaken {
		t.Fatalf("a second key under a taken id: %v, want ErrKeyIDTaken", err)
	}
	if got, err := b.GetKey(ctx, "k1"); err != nil || got.Hash != first.Hash {
		t.Fatalf("k1 names %+v (%v), want the first key", got, err)
	}
	first.Revoked = true
	if err := b.PutKey(ctx, first); err != nil {
		t.Fatalf("the first key written again under its own id: %v", err)
	}
}
