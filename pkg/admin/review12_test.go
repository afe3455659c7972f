package admin_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/levyhq/levy/pkg/apikey"
)

// A key id names one key. Issuing a key under an id another key already
// has (the client may choose ids) must be refused: otherwise the id points
// at the new key, and the old one, still working, can no longer be revoked
// or rotated by its id, and deleting its consumer leaves it behind, to
// work again when a consumer of that id is created.
func TestAKeyIDThatIsTakenIsAConflict(t *testing.T) {
	f := newFixture(t, token)
	ctx := context.Background()
	if err := f.store.PutConsumer(ctx, &apikey.Consumer{ID: "c2", Plan: "free"}); err != nil {
		t.Fatal(err)
	}
	var first keyResponse
	got := f.do(t, "POST", "/v1/consumers/c1/keys", bearer, `{"id":"k1"}`)
	if err := json.Unmarshal([]byte(got.body), &first); err != nil || got.status != 201 {
		t.Fatalf("create: %d %s", got.status, got.body)
	}
	for _, tt := range []struct{ method, path, body string }{
		{"POST", "/v1/consumers/c2/keys", `{"id":"k1"}`}, // another consumer's key id
		{"POST", "/v1/consumers/c1/keys", `{"id":"k1"}`}, // the same consumer's
		{"POST", "/v1/keys/k1/rotate", `{"id":"k1"}`},    // the key being rotated
	} {
		if got := f.do(t, tt.method, tt.path, bearer, tt.body); got.status != 409 {
			t.Errorf("%s %s %s = %d %s, want 409 (key id taken)", tt.method, tt.path, tt.body, got.status, got.body)
		}
	}
	// Whatever was answered, k1 still names the first key, and revoking
	// k1 stops it.
	if got := f.do(t, "POST", "/v1/keys/k1/revoke", bearer, ""); got.status != 204 {
		t.Fatalf("revoke: %d %s", got.status, got.body)
	}
	k, _, err := f.store.Lookup(ctx, hasher.Hash(first.Key))
	if err != nil || !k.Revoked {
		t.Fatalf("the first key after revoking k1: %+v, %v: it still works, and no id reaches it", k, err)
	}
}

// A Stripe customer bills one consumer: the webhook finds the consumer
// by its customer id (plan changes, payment failures). Giving a second
// consumer the same customer id must be refused, or a webhook for that
// customer changes whichever of the two the store finds first (on the
// local store, a map's iteration order: at random).
func TestAStripeCustomerOfAnotherConsumerIsAConflict(t *testing.T) {
	f := newFixture(t, token) // c1 is billed to cus_1
	if got := f.do(t, "PUT", "/v1/consumers/c2", bearer, `{"plan":"free","stripe_customer_id":"cus_1"}`); got.status != 409 {
		t.Errorf("PUT c2 with c1's Stripe customer = %d %s, want 409", got.status, got.body)
	}
	if got := f.do(t, "PUT", "/v1/consumers/c3", bearer, `{"plan":"free"}`); got.status != 200 {
		t.Fatalf("PUT c3: %d %s", got.status, got.body)
	}
	if got := f.do(t, "PATCH", "/v1/consumers/c3", bearer, `{"stripe_customer_id":"cus_1"}`); got.status != 409 {
		t.Errorf("PATCH c3 to c1's Stripe customer = %d %s, want 409", got.status, got.body)
	}
	// The consumer that has it may keep it.
	if got := f.do(t, "PUT", "/v1/consumers/c1", bearer, `{"plan":"pro","stripe_customer_id":"cus_1"}`); got.status != 200 {
		t.Errorf("PUT c1 keeping its own customer = %d %s", got.status, got.body)
	}
	if got := f.do(t, "PATCH", "/v1/consumers/c1", bearer, `{"stripe_customer_id":"cus_1"}`); got.status != 200 {
		t.Errorf("PATCH c1 keeping its own customer = %d %s", got.status, got.body)
	}
	c, err := f.store.ConsumerByStripeCustomer(context.Background(), "cus_1")
	if err != nil || c.ID != "c1" {
		t.Fatalf("cus_1 is billed to %+v, %v; want c1", c, err)
	}
}
