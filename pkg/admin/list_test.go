package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
)

func TestListFiltersAndPagesWithACursor(t *testing.T) {
	f := newFixture(t, token)
	ctx := context.Background()
	for i := range 12 {
		c := &apikey.Consumer{ID: fmt.Sprintf("team-%02d", i), Plan: "free"}
		if i%2 == 0 {
			c.Plan, c.Labels = "pro", map[string]string{"cost-center": "cc-1"}
		}
		if i%3 == 0 {
			c.Suspended = true
		}
		if err := f.store.PutConsumer(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	list := func(query string) (ids []string, next string) {
		t.Helper()
		got := f.do(t, "GET", "/v1/consumers"+query, bearer, "")
		if got.status != 200 {
			t.Fatalf("GET %s = %d %s", query, got.status, got.body)
		}
		var page struct {
			Consumers []struct{ ID string }
			Next      string
		}
		if err := json.Unmarshal([]byte(got.body), &page); err != nil {
			t.Fatal(err)
		}
		for _, c := range page.Consumers {
			ids = append(ids, c.ID)
		}
		return ids, page.Next
	}
	tests := []struct {
		give string
		want string
	}{
		{"?prefix=team-", "team-00 team-01 team-02 team-03 team-04 team-05 team-06 team-07 team-08 team-09 team-10 team-11"},
		{"?plan=pro&status=active", "team-02 team-04 team-08 team-10"},
		{"?label=cost-center=cc-1&status=suspended", "team-00 team-06"},
		{"?label=cost-center&prefix=team-1", "team-10"},
		{"?plan=free&label=cost-center", ""},
		{"?prefix=c", "c1"},
	}
	for _, tt := range tests {
		ids, _ := list(tt.give)
		if got := strings.Join(ids, " "); got != tt.want {
			t.Errorf("GET /v1/consumers%s = %q, want %q", tt.give, got, tt.want)
		}
	}
	var all []string
	query := "?limit=5"
	for pages := 0; ; pages++ {
		ids, next := list(query)
		all = append(all, ids...)
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("the cursor never ends")
		}
		query = "?limit=5&cursor=" + next
	}
	if len(all) != 13 || all[0] != "c1" || all[12] != "team-11" {
		t.Fatalf("all pages: %v", all)
	}
	for _, tt := range []struct{ give, want string }{
		{"?limit=0", "invalid-limit"},
		{"?cursor=not!base64", "invalid-cursor"},
		{"?status=gone", "invalid-status"},
		{"?label=Team=x", "invalid-label"},
		{"?sort=id", "unknown-parameter"},
	} {
		if got := f.do(t, "GET", "/v1/consumers"+tt.give, bearer, ""); got.status != 400 || !strings.Contains(got.body, tt.want) {
			t.Errorf("GET %s = %d %s, want 400 %s", tt.give, got.status, got.body, tt.want)
		}
	}
	// A limit over the cap is capped, not refused.
	if ids, _ := list("?limit=100000"); len(ids) != 13 {
		t.Fatalf("limit over the cap: %d consumers", len(ids))
	}
}

func TestLabelsArePutMergedAndValidated(t *testing.T) {
	f := newFixture(t, token)
	steps := []struct {
		method, body string
		want         int
		wantLabels   map[string]string
	}{
		{"PATCH", `{"labels":{"team":"search","cost-center":"CC 4711"}}`, 200, map[string]string{"team": "search", "cost-center": "CC 4711"}},
		{"PATCH", `{"labels":{"team":null,"env":"prod"}}`, 200, map[string]string{"cost-center": "CC 4711", "env": "prod"}},
		{"PATCH", `{"labels":{"Team":"x"}}`, 400, map[string]string{"cost-center": "CC 4711", "env": "prod"}},
		{"PATCH", `{"labels":{"team":"a\nb"}}`, 400, map[string]string{"cost-center": "CC 4711", "env": "prod"}},
		{"PUT", `{"plan":"free","labels":{"team":"ads"}}`, 200, map[string]string{"team": "ads"}},
		{"PUT", `{"plan":"free"}`, 200, nil},
	}
	for i, st := range steps {
		got := f.do(t, st.method, "/v1/consumers/c1", bearer, st.body)
		if got.status != st.want {
			t.Fatalf("step %d: %s %s = %d %s", i, st.method, st.body, got.status, got.body)
		}
		c, _ := f.store.consumer("c1")
		if fmt.Sprint(c.Labels) != fmt.Sprint(st.wantLabels) {
			t.Fatalf("step %d: labels %v, want %v", i, c.Labels, st.wantLabels)
		}
	}
}

func TestRotateKeepsTheOldKeyUntilItsDeadline(t *testing.T) {
	f := newFixture(t, token)
	var created keyResponse
	got := f.do(t, "POST", "/v1/consumers/c1/keys", bearer, `{"id":"old"}`)
	if err := json.Unmarshal([]byte(got.body), &created); err != nil || got.status != 201 {
		t.Fatalf("create: %d %s", got.status, got.body)
	}
	got = f.do(t, "POST", "/v1/keys/old/rotate", bearer, `{"grace":"90m","id":"new"}`)
	if got.status != 201 || got.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("rotate: %d %v %s", got.status, got.header, got.body)
	}
	var rotated struct {
		ID, Key  string
		Replaces struct {
			ID, Status string
			ExpiresAt  string `json:"expires_at"`
			ReplacedBy string `json:"replaced_by"`
		}
	}
	if err := json.Unmarshal([]byte(got.body), &rotated); err != nil {
		t.Fatal(err)
	}
	deadline := now.Add(90 * time.Minute)
	if rotated.ID != "new" || apikey.Check(rotated.Key) != nil || rotated.Replaces.ID != "old" ||
		rotated.Replaces.Status != "active" || rotated.Replaces.ReplacedBy != "new" || rotated.Replaces.ExpiresAt != formatExpiry(deadline) {
		t.Fatalf("rotate answered %+v", rotated)
	}
	old, _ := f.store.key("old")
	if !old.ExpiresAt.Equal(deadline) || old.ReplacedBy != "new" || old.Revoked {
		t.Fatalf("old key stored as %+v", old)
	}
	// Both keys resolve; the listing has their hints and no secrets.
	for _, key := range []string{created.Key, rotated.Key} {
		if _, c, err := f.store.Lookup(context.Background(), hasher.Hash(key)); err != nil || c.ID != "c1" {
			t.Fatalf("lookup after rotation: %v", err)
		}
	}
	got = f.do(t, "GET", "/v1/consumers/c1/keys", bearer, "")
	if got.status != 200 || !strings.Contains(got.body, `"id":"old"`) || !strings.Contains(got.body, `"id":"new"`) ||
		strings.Contains(got.body, created.Key[10:]) || strings.Contains(got.body, hasher.Hash(created.Key)) || strings.Contains(got.body, `"key"`) {
		t.Fatalf("key listing: %d %s", got.status, got.body)
	}
	for _, key := range []string{created.Key, rotated.Key} {
		if hint := key[:len("levy_test_")+4]; !strings.Contains(got.body, `"hint":"`+hint+`"`) {
			t.Fatalf("key listing lacks hint %q: %s", hint, got.body)
		}
	}
	for _, tt := range []struct {
		path, body string
		want       int
		wantBody   string
	}{
		{"/v1/keys/old/rotate", `{}`, 409, "already rotated; its replacement is new"},
		{"/v1/keys/nope/rotate", `{}`, 404, "no key with id nope"},
		{"/v1/keys/new/rotate", `{"grace":"-1h"}`, 400, "invalid-deadline"},
		{"/v1/keys/new/rotate", `{"grace":"1h","old_expires_at":"2027-01-01T00:00:00Z"}`, 400, "not both"},
	} {
		if got := f.do(t, "POST", tt.path, bearer, tt.body); got.status != tt.want || !strings.Contains(got.body, tt.wantBody) {
			t.Errorf("POST %s %s = %d %s, want %d %s", tt.path, tt.body, got.status, got.body, tt.want, tt.wantBody)
		}
	}
	if got := f.do(t, "POST", "/v1/keys/new/revoke", bearer, ""); got.status != 204 {
		t.Fatal(got.status)
	}
	if got := f.do(t, "POST", "/v1/keys/new/rotate", bearer, `{}`); got.status != 409 || !strings.Contains(got.body, "revoked") {
		t.Fatalf("rotating a revoked key: %d %s", got.status, got.body)
	}
}

func TestDeleteRemovesTheConsumerAndItsKeys(t *testing.T) {
	f := newFixture(t, token)
	var created keyResponse
	got := f.do(t, "POST", "/v1/consumers/c1/keys", bearer, `{}`)
	if err := json.Unmarshal([]byte(got.body), &created); err != nil {
		t.Fatal(err)
	}
	if got := f.do(t, "DELETE", "/v1/consumers/c1", bearer, ""); got.status != 204 {
		t.Fatalf("delete: %d %s", got.status, got.body)
	}
	if _, _, err := f.store.Lookup(context.Background(), hasher.Hash(created.Key)); err != apikey.ErrUnknown {
		t.Fatalf("key of the deleted consumer: %v", err)
	}
	for _, tt := range []struct{ method, path string }{{"DELETE", "/v1/consumers/c1"}, {"GET", "/v1/consumers/c1"}, {"GET", "/v1/consumers/c1/keys"}} {
		if got := f.do(t, tt.method, tt.path, bearer, ""); got.status != 404 {
			t.Errorf("%s %s after delete = %d %s", tt.method, tt.path, got.status, got.body)
		}
	}
}

// A consumer whose failed payment's grace has run out is denied by
// ext_authz, and the admin API shows and filters it as suspended.
func TestConsumerPastItsPaymentGraceShowsSuspended(t *testing.T) {
	f := newFixture(t, token)
	if err := f.store.PutConsumer(context.Background(), &apikey.Consumer{ID: "late", Plan: "free", SuspendAt: now.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if got := f.do(t, "GET", "/v1/consumers/late", bearer, ""); !strings.Contains(got.body, `"status":"suspended"`) {
		t.Fatalf("GET: %s", got.body)
	}
	got := f.do(t, "GET", "/v1/consumers?status=suspended", bearer, "")
	if !strings.Contains(got.body, `"id":"late"`) || strings.Contains(got.body, `"id":"c1"`) {
		t.Fatalf("status=suspended: %s", got.body)
	}
}
