package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/portal"
)

// levy portal link prints the URL alone, minted by the real portal behind
// the real admin API, with the flags' ttl and scopes.
func TestPortalLinkPrintsTheURLAlone(t *testing.T) {
	db, err := localstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := db.Directory()
	if err != nil {
		t.Fatal(err)
	}
	if err := store.PutConsumer(context.Background(), &apikey.Consumer{ID: "acme", Plan: "free"}); err != nil {
		t.Fatal(err)
	}
	catalog, err := plan.NewCatalog(&plan.Plan{Name: "free", Model: plan.Freemium})
	if err != nil {
		t.Fatal(err)
	}
	p := portal.New(portal.Config{Store: db.Portal(nil), Keys: store, Directory: func() apikey.Directory { return store },
		Catalog:  func() *plan.Catalog { return catalog },
		Settings: func() portal.Settings { return portal.Settings{Enabled: true, PublicURL: "https://api.example.com"} },
		Log:      zaptest.NewLogger(t)})
	linker := func(ctx context.Context, id string, ttl time.Duration, scopes []string) (admin.PortalLink, error) {
		// As pkg/server wires it.
		l, err := p.Mint(ctx, id, ttl, scopes)
		if errors.Is(err, portal.ErrInvalid) {
			err = fmt.Errorf("%w: %v", admin.ErrInvalid, err)
		}
		return admin.PortalLink{URL: l.URL, ExpiresAt: l.ExpiresAt}, err
	}
	srv := httptest.NewServer(admin.New(admin.Config{Store: store, Catalog: func() *plan.Catalog { return catalog },
		Hasher: func() apikey.Hasher { return apikey.NewHasher(nil) }, Token: "t", PortalLink: linker}))
	t.Cleanup(srv.Close)

	var out bytes.Buffer
	args := []string{"portal", "link", "acme", "--ttl", "1h", "--scope", "usage", "--admin-url", srv.URL, "--token", "t"}
	if err := run(context.Background(), args, &out, &out); err != nil {
		t.Fatalf("levy portal link: %v\n%s", err, out.String())
	}
	line := out.String()
	if !strings.HasPrefix(line, "https://api.example.com/portal/link/") || strings.Count(line, "\n") != 1 || len(strings.TrimSpace(line)) != len("https://api.example.com/portal/link/")+43 {
		t.Fatalf("printed %q, want the URL alone", line)
	}
	out.Reset()
	err = run(context.Background(), []string{"portal", "link", "nobody", "--admin-url", srv.URL, "--token", "t"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "no consumer") {
		t.Fatalf("unknown consumer: %v", err)
	}
	err = run(context.Background(), []string{"portal", "link", "acme", "--ttl", "48h", "--admin-url", srv.URL, "--token", "t"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "ttl") {
		t.Fatalf("ttl over a day: %v", err)
	}
}
