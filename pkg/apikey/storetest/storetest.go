// Package storetest is the behaviour suite every apikey.Store passes: the
// local store and Redis run the same tests.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
)

// Run runs the suite on fresh, empty stores from newStore.
func Run(t *testing.T, newStore func(t *testing.T) apikey.Store) {
	ctx := context.Background()
	t.Run("ConsumerRoundTrip", func(t *testing.T) {
		s := newStore(t)
		anchor := time.Date(2026, 1, 15, 8, 0, 0, 0, time.UTC)
		want := &apikey.Consumer{ID: "acme", Plan: "pro", StripeCustomerID: "cus_1", PeriodAnchor: anchor,
			PlanSince: anchor.Add(time.Hour), SuspendAt: anchor.Add(2 * time.Hour), Labels: map[string]string{"team": "payments", "cost-center": "CC 4711"}}
		if err := s.PutConsumer(ctx, want); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetConsumer(ctx, "acme")
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("GetConsumer = %+v, %v; want %+v", got, err, want)
		}
		if c, ok := s.Consumer("acme"); !ok || c.Plan != "pro" {
			t.Fatalf("Consumer = %+v, %v", c, ok)
		}
		if _, err := s.GetConsumer(ctx, "nobody"); !errors.Is(err, apikey.ErrNotFound) {
			t.Fatalf("missing consumer: %v", err)
		}
		if _, ok := s.Consumer("nobody"); ok {
			t.Fatal("Consumer found nobody")
		}
		if c, err := s.ConsumerByStripeCustomer(ctx, "cus_1"); err != nil || c.ID != "acme" {
			t.Fatalf("ConsumerByStripeCustomer = %+v, %v", c, err)
		}
		if _, err := s.ConsumerByStripeCustomer(ctx, "cus_nobody"); !errors.Is(err, apikey.ErrNotFound) {
			t.Fatalf("unknown customer: %v", err)
		}
	})
	t.Run("KeyLookupRevokeAndPlanChange", func(t *testing.T) {
		s := newStore(t)
		if err := s.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "free"}); err != nil {
			t.Fatal(err)
		}
		exp := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
		if err := s.PutKey(ctx, &apikey.Key{ID: "k1", Hash: "h1", ConsumerID: "acme", ExpiresAt: exp}); err != nil {
			t.Fatal(err)
		}
		k, c, err := s.Lookup(ctx, "h1")
		if err != nil || k.ID != "k1" || c.ID != "acme" || c.Plan != "free" || !k.ExpiresAt.Equal(exp) || k.Revoked {
			t.Fatalf("Lookup = %+v %+v %v", k, c, err)
		}
		if _, _, err := s.Lookup(ctx, "nope"); !errors.Is(err, apikey.ErrUnknown) {
			t.Fatalf("unknown hash: %v", err)
		}
		// Changes through the same store are seen at once.
		if err := s.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "pro"}); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeKey(ctx, "k1"); err != nil {
			t.Fatal(err)
		}
		k, c, err = s.Lookup(ctx, "h1")
		if err != nil || !k.Revoked || c.Plan != "pro" {
			t.Fatalf("after revoke and upgrade: %+v %+v %v", k, c, err)
		}
		if err := s.RevokeKey(ctx, "nope"); !errors.Is(err, apikey.ErrNotFound) {
			t.Fatalf("revoke unknown: %v", err)
		}
	})
	t.Run("KeyOfMissingConsumerIsUnknown", func(t *testing.T) {
		s := newStore(t)
		if err := s.PutKey(ctx, &apikey.Key{ID: "k", Hash: "h", ConsumerID: "ghost"}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Lookup(ctx, "h"); !errors.Is(err, apikey.ErrUnknown) {
			t.Fatalf("key of a missing consumer: %v", err)
		}
	})
	t.Run("ListPagesInIDOrderWithFilters", func(t *testing.T) {
		s := newStore(t)
		for i := range 25 {
			c := &apikey.Consumer{ID: fmt.Sprintf("c%02d", i), Plan: "free"}
			if i%3 == 0 {
				c.Plan, c.Labels = "pro", map[string]string{"team": "search"}
			}
			if err := s.PutConsumer(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.PutConsumer(ctx, &apikey.Consumer{ID: "other", Plan: "pro"}); err != nil {
			t.Fatal(err)
		}
		// Every consumer exactly once, in order, whatever the page size.
		var all []string
		for q := (apikey.ListQuery{Limit: 4}); ; {
			page, err := s.ListConsumers(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Consumers) > 4 {
				t.Fatalf("page of %d over the limit 4", len(page.Consumers))
			}
			for _, c := range page.Consumers {
				all = append(all, c.ID)
			}
			if page.Next == "" {
				break
			}
			q.After = page.Next
		}
		if len(all) != 26 || all[0] != "c00" || all[24] != "c24" || all[25] != "other" {
			t.Fatalf("listed %v", all)
		}
		// A prefix and a filter; the scan bound splits it into short pages.
		var pro []string
		pages := 0
		for q := (apikey.ListQuery{Prefix: "c", Limit: 3, MaxScan: 5, Match: func(c *apikey.Consumer) bool { return c.Labels["team"] == "search" }}); ; pages++ {
			page, err := s.ListConsumers(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range page.Consumers {
				pro = append(pro, c.ID)
			}
			if page.Next == "" {
				break
			}
			q.After = page.Next
		}
		want := []string{"c00", "c03", "c06", "c09", "c12", "c15", "c18", "c21", "c24"}
		if !reflect.DeepEqual(pro, want) || pages < 4 {
			t.Fatalf("team=search over %d pages: %v; want %v over 5", pages+1, pro, want)
		}
		// A page that ends exactly at the last consumer says there is no more.
		page, err := s.ListConsumers(ctx, apikey.ListQuery{Prefix: "oth", Limit: 1})
		if err != nil || len(page.Consumers) != 1 || page.Next != "" {
			t.Fatalf("last page = %+v, %v", page, err)
		}
	})
	t.Run("DeleteConsumerForgetsItsKeys", func(t *testing.T) {
		s := newStore(t)
		for _, id := range []string{"acme", "globex"} {
			if err := s.PutConsumer(ctx, &apikey.Consumer{ID: id, Plan: "free", StripeCustomerID: "cus_" + id}); err != nil {
				t.Fatal(err)
			}
		}
		created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		for _, k := range []*apikey.Key{
			{ID: "a2", Hash: "ha2", ConsumerID: "acme", CreatedAt: created},
			{ID: "a1", Hash: "ha1", ConsumerID: "acme", CreatedAt: created, ExpiresAt: created.Add(time.Hour), ReplacedBy: "a2", Hint: "levy_Ab3d"},
			{ID: "g1", Hash: "hg1", ConsumerID: "globex"},
		} {
			if err := s.PutKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		keys, err := s.ListKeys(ctx, "acme")
		if err != nil || len(keys) != 2 || keys[0].ID != "a1" || keys[1].ID != "a2" ||
			keys[0].ReplacedBy != "a2" || !keys[0].CreatedAt.Equal(created) || !keys[0].ExpiresAt.Equal(created.Add(time.Hour)) ||
			keys[0].Hint != "levy_Ab3d" || keys[1].Hint != "" {
			t.Fatalf("ListKeys = %+v, %v", keys, err)
		}
		if k, err := s.GetKey(ctx, "a1"); err != nil || k.Hash != "ha1" || k.ConsumerID != "acme" || k.Hint != "levy_Ab3d" {
			t.Fatalf("GetKey = %+v, %v", k, err)
		}
		// Looked up (and cached) before the deletion.
		if _, _, err := s.Lookup(ctx, "ha1"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteConsumer(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
		for _, h := range []string{"ha1", "ha2"} {
			if _, _, err := s.Lookup(ctx, h); !errors.Is(err, apikey.ErrUnknown) {
				t.Fatalf("key %s of a deleted consumer: %v", h, err)
			}
		}
		if _, err := s.GetConsumer(ctx, "acme"); !errors.Is(err, apikey.ErrNotFound) {
			t.Fatalf("deleted consumer: %v", err)
		}
		if _, err := s.GetKey(ctx, "a1"); !errors.Is(err, apikey.ErrNotFound) {
			t.Fatalf("key of a deleted consumer: %v", err)
		}
		if _, err := s.ConsumerByStripeCustomer(ctx, "cus_acme"); !errors.Is(err, apikey.ErrNotFound) {
			t.Fatalf("stripe customer of a deleted consumer: %v", err)
		}
		if err := s.DeleteConsumer(ctx, "acme"); !errors.Is(err, apikey.ErrNotFound) {
			t.Fatalf("delete twice: %v", err)
		}
		// The same id created again starts with no keys.
		if err := s.PutConsumer(ctx, &apikey.Consumer{ID: "acme", Plan: "free"}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Lookup(ctx, "ha1"); !errors.Is(err, apikey.ErrUnknown) {
			t.Fatalf("old key of a re-created consumer: %v", err)
		}
		if keys, err := s.ListKeys(ctx, "acme"); err != nil || len(keys) != 0 {
			t.Fatalf("keys of a re-created consumer: %+v, %v", keys, err)
		}
		page, err := s.ListConsumers(ctx, apikey.ListQuery{Limit: 10})
		if err != nil || len(page.Consumers) != 2 {
			t.Fatalf("list after delete: %+v, %v", page, err)
		}
		if _, _, err := s.Lookup(ctx, "hg1"); err != nil {
			t.Fatalf("another consumer's key: %v", err)
		}
	})
}
