package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/problem"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "admin-token-for-tests"

var (
	now    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	hasher = apikey.NewHasher([]byte("hash-secret"))
)

// store is the real local store, with a fault to inject: while err is
// set, every call that reaches the store fails with it.
type store struct {
	apikey.Store
	mu  sync.Mutex
	err error
}

func newStore(t *testing.T) *store {
	t.Helper()
	db, err := localstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	d, err := db.Directory()
	if err != nil {
		t.Fatal(err)
	}
	return &store{Store: d}
}

func (s *store) fault() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *store) GetConsumer(ctx context.Context, id string) (*apikey.Consumer, error) {
	if err := s.fault(); err != nil {
		return nil, err
	}
	return s.Store.GetConsumer(ctx, id)
}

func (s *store) PutConsumer(ctx context.Context, c *apikey.Consumer) error {
	if err := s.fault(); err != nil {
		return err
	}
	return s.Store.PutConsumer(ctx, c)
}

func (s *store) PutKey(ctx context.Context, k *apikey.Key) error {
	if err := s.fault(); err != nil {
		return err
	}
	return s.Store.PutKey(ctx, k)
}

func (s *store) RevokeKey(ctx context.Context, id string) error {
	if err := s.fault(); err != nil {
		return err
	}
	return s.Store.RevokeKey(ctx, id)
}

func (s *store) ListConsumers(ctx context.Context, q apikey.ListQuery) (apikey.Page, error) {
	if err := s.fault(); err != nil {
		return apikey.Page{}, err
	}
	return s.Store.ListConsumers(ctx, q)
}

func (s *store) key(id string) (apikey.Key, bool) {
	k, err := s.Store.GetKey(context.Background(), id)
	if err != nil {
		return apikey.Key{}, false
	}
	return *k, true
}

func (s *store) consumer(id string) (apikey.Consumer, bool) {
	c, err := s.Store.GetConsumer(context.Background(), id)
	if err != nil {
		return apikey.Consumer{}, false
	}
	return *c, true
}

type fixture struct {
	url    string
	client *http.Client
	store  *store
	logs   *observer.ObservedLogs
}

// newFixture serves the API with token (empty: off) over a store holding
// consumer c1 on plan free.
func newFixture(t *testing.T, token string) *fixture {
	t.Helper()
	catalog, err := plan.NewCatalog(
		&plan.Plan{Name: "free", Model: plan.Freemium},
		&plan.Plan{Name: "pro", Model: plan.Tiered},
	)
	if err != nil {
		t.Fatal(err)
	}
	store := newStore(t)
	if err := store.PutConsumer(context.Background(), &apikey.Consumer{ID: "c1", Plan: "free", StripeCustomerID: "cus_1"}); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h := admin.New(admin.Config{
		Store:   store,
		Catalog: func() *plan.Catalog { return catalog },
		Hasher:  func() apikey.Hasher { return hasher },
		Prefix:  func() string { return "levy_test" },
		Token:   token,
		Log:     zap.New(core),
		Clock:   func() time.Time { return now },
	})
	srv := httptest.NewServer(apitest.Handler(t, h))
	t.Cleanup(srv.Close)
	return &fixture{url: srv.URL, client: srv.Client(), store: store, logs: logs}
}

type response struct {
	status int
	header http.Header
	body   string
}

func (f *fixture) do(t *testing.T, method, path, auth, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

const bearer = "Bearer " + token

func TestRoutesAnswerWithStatusAndProblem(t *testing.T) {
	tests := []struct {
		name         string
		method, path string
		auth, body   string
		want         int
		wantType     string
		wantBody     []string
		wantHeader   map[string]string
	}{
		{name: "no token", method: "GET", path: "/v1/consumers/c1",
			want: 401, wantType: "application/problem+json", wantBody: []string{`"status":401`, "Bearer"},
			wantHeader: map[string]string{"WWW-Authenticate": `Bearer realm="levy-admin"`}},
		{name: "wrong token", method: "GET", path: "/v1/consumers/c1", auth: "Bearer nope",
			want: 401, wantType: "application/problem+json",
			wantHeader: map[string]string{"WWW-Authenticate": `Bearer realm="levy-admin"`}},
		{name: "token with a suffix", method: "GET", path: "/v1/consumers/c1", auth: bearer + "x",
			want: 401, wantType: "application/problem+json"},
		{name: "token without scheme", method: "GET", path: "/v1/consumers/c1", auth: token,
			want: 401, wantType: "application/problem+json"},
		{name: "right token", method: "GET", path: "/v1/consumers/c1", auth: bearer,
			want: 200, wantType: "application/json",
			wantBody: []string{`"id":"c1"`, `"plan":"free"`, `"status":"active"`, `"stripe_customer_id":"cus_1"`}},
		{name: "scheme is case-insensitive", method: "GET", path: "/v1/consumers/c1", auth: "bearer " + token,
			want: 200, wantType: "application/json"},
		{name: "get missing consumer", method: "GET", path: "/v1/consumers/nobody", auth: bearer,
			want: 404, wantType: "application/problem+json", wantBody: []string{"no consumer with id nobody"}},
		{name: "put creates", method: "PUT", path: "/v1/consumers/acme:team-1.x_y", auth: bearer,
			body: `{"plan":"pro","status":"suspended","stripe_customer_id":"cus_9","period_anchor":"2026-02-15T00:00:00Z"}`,
			want: 200, wantType: "application/json",
			wantBody: []string{`"id":"acme:team-1.x_y"`, `"plan":"pro"`, `"status":"suspended"`, `"period_anchor":"2026-02-15T00:00:00Z"`}},
		{name: "put unknown plan names the known ones", method: "PUT", path: "/v1/consumers/c2", auth: bearer,
			body: `{"plan":"gold"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{`unknown plan \"gold\"`, "known plans: free, pro"}},
		{name: "put without plan", method: "PUT", path: "/v1/consumers/c2", auth: bearer, body: `{}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"plan is required"}},
		{name: "put without body", method: "PUT", path: "/v1/consumers/c2", auth: bearer,
			want: 400, wantType: "application/problem+json", wantBody: []string{"body is required"}},
		{name: "put bad id", method: "PUT", path: "/v1/consumers/has%20space", auth: bearer, body: `{"plan":"pro"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"invalid-id", `consumer id \"has space\"`}},
		{name: "put id too long", method: "PUT", path: "/v1/consumers/" + strings.Repeat("a", 129), auth: bearer, body: `{"plan":"pro"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"129 bytes long"}},
		{name: "put id of 128", method: "PUT", path: "/v1/consumers/" + strings.Repeat("a", 128), auth: bearer, body: `{"plan":"pro"}`,
			want: 200, wantType: "application/json"},
		{name: "put unknown field", method: "PUT", path: "/v1/consumers/c2", auth: bearer, body: `{"plan":"pro","colour":"red"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"unknown-field", `unknown field \"colour\"`}},
		{name: "put bad status", method: "PUT", path: "/v1/consumers/c2", auth: bearer, body: `{"plan":"pro","status":"banned"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{`status \"banned\"`}},
		{name: "put bad anchor", method: "PUT", path: "/v1/consumers/c2", auth: bearer, body: `{"plan":"pro","period_anchor":"yesterday"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"period_anchor", "RFC 3339"}},
		{name: "put wrong type", method: "PUT", path: "/v1/consumers/c2", auth: bearer, body: `{"plan":7}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"invalid-json"}},
		{name: "put two values", method: "PUT", path: "/v1/consumers/c2", auth: bearer, body: `{"plan":"pro"}{}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"invalid-json"}},
		{name: "put two objects", method: "PUT", path: "/v1/consumers/c2", auth: bearer, body: `{"plan":"pro"} {"plan":"free"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"invalid-json", "more than one JSON value"}},
		{name: "put dot-dot id", method: "PUT", path: "/v1/consumers/%2e%2e", auth: bearer, body: `{"plan":"pro"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"invalid-id"}},
		{name: "put oversized body", method: "PUT", path: "/v1/consumers/c2", auth: bearer,
			body: `{"plan":"pro","stripe_customer_id":"` + strings.Repeat("x", admin.MaxBody) + `"}`,
			want: 413, wantType: "application/problem+json", wantBody: []string{"body-too-large"}},
		{name: "patch plan", method: "PATCH", path: "/v1/consumers/c1", auth: bearer, body: `{"plan":"pro"}`,
			want: 200, wantType: "application/json", wantBody: []string{`"plan":"pro"`, `"status":"active"`, `"stripe_customer_id":"cus_1"`}},
		{name: "patch suspends", method: "PATCH", path: "/v1/consumers/c1", auth: bearer, body: `{"status":"suspended"}`,
			want: 200, wantType: "application/json", wantBody: []string{`"plan":"free"`, `"status":"suspended"`}},
		{name: "patch missing consumer", method: "PATCH", path: "/v1/consumers/nobody", auth: bearer, body: `{"plan":"pro"}`,
			want: 404, wantType: "application/problem+json"},
		{name: "patch unknown plan", method: "PATCH", path: "/v1/consumers/c1", auth: bearer, body: `{"plan":"gold"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"known plans: free, pro"}},
		{name: "patch unknown field", method: "PATCH", path: "/v1/consumers/c1", auth: bearer, body: `{"tier":"pro"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{`unknown field \"tier\"`}},
		{name: "key for missing consumer", method: "POST", path: "/v1/consumers/nobody/keys", auth: bearer,
			want: 404, wantType: "application/problem+json", wantBody: []string{"no consumer with id nobody"}},
		{name: "key expiring in the past", method: "POST", path: "/v1/consumers/c1/keys", auth: bearer,
			body: `{"expires_at":"2026-03-01T11:59:59Z"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{"not in the future"}},
		{name: "key with bad id", method: "POST", path: "/v1/consumers/c1/keys", auth: bearer, body: `{"id":"a/b"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{`key id \"a/b\"`}},
		{name: "key unknown field", method: "POST", path: "/v1/consumers/c1/keys", auth: bearer, body: `{"expires":"x"}`,
			want: 400, wantType: "application/problem+json", wantBody: []string{`unknown field \"expires\"`}},
		{name: "revoke unknown key", method: "POST", path: "/v1/keys/key_nope/revoke", auth: bearer,
			want: 404, wantType: "application/problem+json", wantBody: []string{"no key with id key_nope"}},
		{name: "wrong method", method: "POST", path: "/v1/consumers/c1", auth: bearer,
			want: 405, wantType: "application/problem+json", wantBody: []string{"method-not-allowed"}},
		{name: "no such route", method: "GET", path: "/v1/usage", auth: bearer,
			want: 404, wantType: "application/problem+json", wantBody: []string{"no admin route GET /v1/usage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, token)
			got := f.do(t, tt.method, tt.path, tt.auth, tt.body)
			if got.status != tt.want {
				t.Fatalf("status = %d, want %d; body %s", got.status, tt.want, got.body)
			}
			if ct := got.header.Get("Content-Type"); ct != tt.wantType {
				t.Errorf("Content-Type = %q, want %q", ct, tt.wantType)
			}
			for _, s := range tt.wantBody {
				if !strings.Contains(got.body, s) {
					t.Errorf("body %s lacks %s", got.body, s)
				}
			}
			for k, v := range tt.wantHeader {
				if g := got.header.Get(k); g != v {
					t.Errorf("%s = %q, want %q", k, g, v)
				}
			}
		})
	}
}

func TestDisabledAPIAnswers404OnEveryRoute(t *testing.T) {
	f := newFixture(t, "")
	tests := []struct{ method, path, auth string }{
		{"GET", "/v1/consumers/c1", ""},
		{"GET", "/v1/consumers/c1", "Bearer "},
		{"PUT", "/v1/consumers/c1", "Bearer anything"},
		{"POST", "/v1/consumers/c1/keys", ""},
		{"POST", "/v1/keys/k/revoke", ""},
		{"GET", "/v1/elsewhere", ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			got := f.do(t, tt.method, tt.path, tt.auth, "")
			if got.status != 404 || got.header.Get("Content-Type") != "application/problem+json" ||
				!strings.Contains(got.body, "LEVY_ADMIN_TOKEN") {
				t.Fatalf("got %d %q %s, want a 404 problem naming LEVY_ADMIN_TOKEN", got.status, got.header.Get("Content-Type"), got.body)
			}
		})
	}
	if _, ok := f.store.consumer("c1"); !ok {
		t.Fatal("the disabled API changed the store")
	}
}

func TestProblemHasTypeTitleStatusDetail(t *testing.T) {
	f := newFixture(t, token)
	got := f.do(t, "PUT", "/v1/consumers/c2", bearer, `{"plan":"gold"}`)
	var p problem.Doc
	if err := json.Unmarshal([]byte(got.body), &p); err != nil {
		t.Fatal(err)
	}
	want := problem.Doc{Type: "https://levy.dev/problems/unknown-plan", Title: "Bad Request", Status: 400,
		Reason: "unknown_plan", Detail: `unknown plan "gold"; known plans: free, pro`}
	if p != want {
		t.Fatalf("problem = %+v, want %+v", p, want)
	}
}

func TestPutReplacesAndPatchAppliesUpgradeAndSuspension(t *testing.T) {
	f := newFixture(t, token)
	anchor := time.Date(2026, 2, 15, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		method, body string
		want         apikey.Consumer
	}{
		{"PUT", `{"plan":"free","period_anchor":"2026-02-15T00:00:00Z"}`,
			apikey.Consumer{ID: "c1", Plan: "free", PeriodAnchor: anchor}},
		{"PATCH", `{"plan":"pro","stripe_customer_id":"cus_2"}`,
			apikey.Consumer{ID: "c1", Plan: "pro", StripeCustomerID: "cus_2", PeriodAnchor: anchor}},
		{"PATCH", `{"status":"suspended"}`,
			apikey.Consumer{ID: "c1", Plan: "pro", Suspended: true, StripeCustomerID: "cus_2", PeriodAnchor: anchor}},
		{"PATCH", `{}`,
			apikey.Consumer{ID: "c1", Plan: "pro", Suspended: true, StripeCustomerID: "cus_2", PeriodAnchor: anchor}},
		{"PATCH", `{"status":"active","stripe_customer_id":""}`,
			apikey.Consumer{ID: "c1", Plan: "pro", PeriodAnchor: anchor}},
		{"PUT", `{"plan":"free"}`,
			apikey.Consumer{ID: "c1", Plan: "free"}},
	}
	for i, st := range steps {
		if got := f.do(t, st.method, "/v1/consumers/c1", bearer, st.body); got.status != 200 {
			t.Fatalf("step %d: %s = %d %s", i, st.method, got.status, got.body)
		}
		c, _ := f.store.consumer("c1")
		if !c.PeriodAnchor.Equal(st.want.PeriodAnchor) {
			t.Fatalf("step %d: anchor = %v, want %v", i, c.PeriodAnchor, st.want.PeriodAnchor)
		}
		c.PeriodAnchor = st.want.PeriodAnchor
		if !reflect.DeepEqual(c, st.want) {
			t.Fatalf("step %d: store has %+v, want %+v", i, c, st.want)
		}
	}
}

type keyResponse struct {
	ID        string `json:"id"`
	Key       string `json:"key"`
	Consumer  string `json:"consumer"`
	ExpiresAt string `json:"expires_at"`
}

func TestCreatedKeyIsWellFormedAndTheStoreGetsOnlyItsHashAndHint(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		wantID     func(hash string) string
		wantExpiry time.Time
	}{
		{name: "no body", wantID: apikey.IDFromHash},
		{name: "empty object", body: `{}`, wantID: apikey.IDFromHash},
		{name: "own id and expiry", body: `{"id":"ci-deploy","expires_at":"2026-04-01T00:00:00+02:00"}`,
			wantID:     func(string) string { return "ci-deploy" },
			wantExpiry: time.Date(2026, 3, 31, 22, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, token)
			got := f.do(t, "POST", "/v1/consumers/c1/keys", bearer, tt.body)
			if got.status != 201 {
				t.Fatalf("status = %d %s", got.status, got.body)
			}
			if cc := got.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q, want no-store", cc)
			}
			var resp keyResponse
			if err := json.Unmarshal([]byte(got.body), &resp); err != nil {
				t.Fatal(err)
			}
			if err := apikey.Check(resp.Key); err != nil || !strings.HasPrefix(resp.Key, "levy_test_") {
				t.Fatalf("key %q: Check = %v, want a well-formed levy_test_ key", resp.Key, err)
			}
			hash := hasher.Hash(resp.Key)
			if resp.ID != tt.wantID(hash) || resp.Consumer != "c1" {
				t.Fatalf("response %+v, want id %s for c1", resp, tt.wantID(hash))
			}
			stored, ok := f.store.key(resp.ID)
			// Of the key, its hash and its hint, the prefix and 4 random
			// characters.
			want := apikey.Key{ID: resp.ID, Hash: hash, ConsumerID: "c1", CreatedAt: now, Hint: resp.Key[:len("levy_test_")+4]}
			if !ok || !stored.ExpiresAt.Equal(tt.wantExpiry) {
				t.Fatalf("stored %+v (found %v), want expiry %v", stored, ok, tt.wantExpiry)
			}
			stored.ExpiresAt = time.Time{}
			if stored != want {
				t.Fatalf("stored %+v, want %+v", stored, want)
			}
			if want := formatExpiry(tt.wantExpiry); resp.ExpiresAt != want {
				t.Errorf("expires_at = %q, want %q", resp.ExpiresAt, want)
			}
			k, c, err := f.store.Lookup(context.Background(), hash)
			if err != nil || k.ID != resp.ID || c.ID != "c1" {
				t.Fatalf("Lookup = %v, %v, %v", k, c, err)
			}
		})
	}
}

func formatExpiry(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
}

func TestRevokeMarksTheKeyRevoked(t *testing.T) {
	f := newFixture(t, token)
	got := f.do(t, "POST", "/v1/consumers/c1/keys", bearer, "")
	var resp keyResponse
	if err := json.Unmarshal([]byte(got.body), &resp); err != nil {
		t.Fatal(err)
	}
	if got := f.do(t, "POST", "/v1/keys/"+resp.ID+"/revoke", bearer, ""); got.status != 204 || got.body != "" {
		t.Fatalf("revoke = %d %q, want 204 and no body", got.status, got.body)
	}
	k, _, err := f.store.Lookup(context.Background(), hasher.Hash(resp.Key))
	if err != nil || !k.Revoked {
		t.Fatalf("after revoke Lookup = %+v, %v; want a revoked key", k, err)
	}
}

func TestStoreFailureIs503AndLogged(t *testing.T) {
	f := newFixture(t, token)
	f.store.mu.Lock()
	f.store.err = errors.New("redis: connection refused")
	f.store.mu.Unlock()
	got := f.do(t, "GET", "/v1/consumers/c1", bearer, "")
	if got.status != 503 || !strings.Contains(got.body, "store-unavailable") || strings.Contains(got.body, "redis") {
		t.Fatalf("got %d %s, want a 503 problem that does not leak the store error", got.status, got.body)
	}
	if n := f.logs.FilterMessage("get consumer").FilterField(zap.String("consumer", "c1")).Len(); n != 1 {
		t.Fatalf("%d log entries for the failure, want 1", n)
	}
}

func TestMissingStoreIs503(t *testing.T) {
	srv := httptest.NewServer(apitest.Handler(t, admin.New(admin.Config{Token: token})))
	defer srv.Close()
	f := &fixture{url: srv.URL, client: srv.Client()}
	got := f.do(t, "GET", "/v1/consumers/c1", bearer, "")
	if got.status != 503 || !strings.Contains(got.body, "no store") {
		t.Fatalf("got %d %s, want a 503 problem", got.status, got.body)
	}
}

func TestKeysAndTokenNeverReachTheLogs(t *testing.T) {
	f := newFixture(t, token)
	var keys []keyResponse
	for _, body := range []string{"", `{"id":"named"}`} {
		got := f.do(t, "POST", "/v1/consumers/c1/keys", bearer, body)
		var resp keyResponse
		if err := json.Unmarshal([]byte(got.body), &resp); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, resp)
	}
	f.do(t, "POST", "/v1/keys/"+keys[0].ID+"/revoke", bearer, "")
	f.do(t, "GET", "/v1/consumers/c1", "Bearer "+keys[1].Key, "") // a key sent as the token

	secrets := []string{token, keys[0].Key, keys[1].Key}
	for _, e := range f.logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Fatalf("log entry %q contains a secret", line)
			}
		}
	}
	for _, k := range keys {
		if f.logs.FilterMessage("key created").FilterField(zap.String("key_id", k.ID)).Len() != 1 {
			t.Errorf("no 'key created' entry with key_id %s", k.ID)
		}
	}
	if f.logs.FilterMessage("key revoked").FilterField(zap.String("key_id", keys[0].ID)).Len() != 1 {
		t.Errorf("no 'key revoked' entry with key_id %s", keys[0].ID)
	}
}
