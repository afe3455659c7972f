package admin_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
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

// The usage route reads ?windows=true|false, as api/openapi.yaml says,
// and refuses what it does not know, as the listing does: windows=yes or
// windows=1 must not quietly answer without the windows asked for.
func TestUsageRefusesAnUnknownParameterOrValue(t *testing.T) {
	catalog, err := plan.NewCatalog(&plan.Plan{Name: "free", Model: plan.Freemium})
	if err != nil {
		t.Fatal(err)
	}
	var asked []bool
	h := admin.New(admin.Config{
		Store:   newStore(t),
		Catalog: func() *plan.Catalog { return catalog },
		Hasher:  func() apikey.Hasher { return hasher },
		Token:   token,
		Usage: func(_ context.Context, id string, windows bool) (any, error) {
			asked = append(asked, windows)
			return map[string]any{"consumer": id, "plan": "free", "model": "freemium", "period_start": "2026-03-01T00:00:00Z",
				"period_end": "2026-04-01T00:00:00Z", "used": 0, "included": 0, "overage": 0, "settled": 0, "billable": 0,
				"exported": 0, "pending": 0}, nil
		},
	})
	srv := httptest.NewServer(apitest.Handler(t, h))
	defer srv.Close()
	f := &fixture{url: srv.URL, client: srv.Client()}
	for query, want := range map[string]int{"": 200, "?windows=true": 200, "?windows=false": 200,
		"?windows=yes": 400, "?windows=1": 400, "?window=true": 400} {
		if got := f.do(t, "GET", "/v1/consumers/c1/usage"+query, bearer, ""); got.status != want {
			t.Errorf("GET usage%s = %d %s, want %d", query, got.status, got.body, want)
		}
	}
	if len(asked) != 3 || asked[0] == asked[1] && asked[1] == asked[2] {
		t.Fatalf("windows asked for: %v", asked)
	}
}

// The admin token often comes from a Secret made from a file (kubectl
// create secret --from-file), with its trailing newline. The handler
// trims the token a caller presents, so it must trim the configured one
// too: otherwise no caller can ever match it and the API, though on,
// refuses everyone.
func TestATokenWithATrailingNewlineCanBeMatched(t *testing.T) {
	f := newFixture(t, token+"\n")
	if got := f.do(t, "GET", "/v1/consumers/c1", bearer, ""); got.status != 200 {
		t.Fatalf("LEVY_ADMIN_TOKEN with a trailing newline, Bearer with the token: %d %s", got.status, got.body)
	}
	// A blank token is no token: the API stays off.
	f = newFixture(t, " \n")
	if got := f.do(t, "GET", "/v1/consumers/c1", "Bearer  ", ""); got.status != 404 {
		t.Fatalf("a blank LEVY_ADMIN_TOKEN: %d %s, want 404 (off)", got.status, got.body)
	}
}
