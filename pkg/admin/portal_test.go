package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// POST /v1/consumers/{id}/portal-links passes the ttl and scopes to the
// portal and maps its refusals onto problems, as api/openapi.yaml says.
func TestPortalLinksAreMintedAndRefusalsAreProblems(t *testing.T) {
	catalog, err := plan.NewCatalog(&plan.Plan{Name: "free", Model: plan.Freemium})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ttl    time.Duration
		scopes []string
	}
	linker := func(_ context.Context, id string, ttl time.Duration, scopes []string) (admin.PortalLink, error) {
		got.ttl, got.scopes = ttl, scopes
		switch id {
		case "gone":
			return admin.PortalLink{}, apikey.ErrNotFound
		case "bad":
			return admin.PortalLink{}, fmt.Errorf("%w: unknown scope", admin.ErrInvalid)
		case "off":
			return admin.PortalLink{}, fmt.Errorf("%w: the portal is off", admin.ErrUnavailable)
		}
		return admin.PortalLink{URL: "https://api.example.com/portal/link/tok", ExpiresAt: now.Add(ttl)}, nil
	}
	h := admin.New(admin.Config{Store: newStore(t), Catalog: func() *plan.Catalog { return catalog },
		Hasher: func() apikey.Hasher { return hasher }, Token: token, PortalLink: linker, Clock: func() time.Time { return now }})
	srv := httptest.NewServer(apitest.Handler(t, h))
	t.Cleanup(srv.Close)
	f := &fixture{url: srv.URL, client: srv.Client()}
	auth := "Bearer " + token

	r := f.do(t, "POST", "/v1/consumers/c1/portal-links", auth, `{"ttl":"1h","scopes":["usage","keys"]}`)
	if r.status != 201 || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("mint: %d %v %s", r.status, r.header, r.body)
	}
	var body struct {
		URL       string `json:"url"`
		ExpiresAt string `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(r.body), &body); err != nil || body.URL == "" || body.ExpiresAt != "2026-03-01T13:00:00Z" {
		t.Fatalf("body %s: %v", r.body, err)
	}
	if got.ttl != time.Hour || strings.Join(got.scopes, ",") != "usage,keys" {
		t.Fatalf("passed ttl %v scopes %v", got.ttl, got.scopes)
	}
	if r := f.do(t, "POST", "/v1/consumers/c1/portal-links", auth, ""); r.status != 201 || got.ttl != 0 || got.scopes != nil {
		t.Fatalf("defaults: %d ttl %v scopes %v", r.status, got.ttl, got.scopes)
	}
	tests := []struct {
		name, path, body string
		want             int
	}{
		{"bad ttl", "/v1/consumers/c1/portal-links", `{"ttl":"soon"}`, 400},
		{"negative ttl", "/v1/consumers/c1/portal-links", `{"ttl":"-1m"}`, 400},
		{"unknown field", "/v1/consumers/c1/portal-links", `{"ttl":"1m","admin":true}`, 400},
		{"unknown consumer", "/v1/consumers/gone/portal-links", `{}`, 404},
		{"refused by the portal", "/v1/consumers/bad/portal-links", `{}`, 400},
		{"portal off", "/v1/consumers/off/portal-links", `{}`, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := f.do(t, "POST", tt.path, auth, tt.body); r.status != tt.want {
				t.Fatalf("%d, want %d: %s", r.status, tt.want, r.body)
			}
		})
	}
	if r := f.do(t, "POST", "/v1/consumers/c1/portal-links", "", `{}`); r.status != 401 {
		t.Fatalf("without the token: %d", r.status)
	}
}
