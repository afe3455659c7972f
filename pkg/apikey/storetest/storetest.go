// Package storetest is the behaviour suite every apikey.Store passes: the
// local store and Redis run the same tests.
package storetest

import (
	"context"
	"errors"
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
			PlanSince: anchor.Add(time.Hour), SuspendAt: anchor.Add(2 * time.Hour)}
		if err := s.PutConsumer(ctx, want); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetConsumer(ctx, "acme")
		if err != nil || *got != *want {
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
}
