package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
)

// adminServer is the real admin API over a real local store.
func adminServer(t *testing.T) (*httptest.Server, apikey.Store) {
	t.Helper()
	db, err := localstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store, err := db.Directory()
	if err != nil {
		t.Fatal(err)
	}
	catalog, err := plan.NewCatalog(&plan.Plan{Name: "free", Model: plan.Freemium}, &plan.Plan{Name: "pro", Model: plan.Tiered})
	if err != nil {
		t.Fatal(err)
	}
	h := admin.New(admin.Config{Store: store, Catalog: func() *plan.Catalog { return catalog },
		Hasher: func() apikey.Hasher { return apikey.NewHasher(nil) }, Token: "t"})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, store
}

func TestConsumerAndKeyCommandsListLabelRotateAndDelete(t *testing.T) {
	srv, store := adminServer(t)
	levy := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		args = append(args, "--admin-url", srv.URL, "--token", "t")
		if err := run(context.Background(), args, &out, &out); err != nil {
			t.Fatalf("levy %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	for _, id := range []string{"acme", "globex", "initech"} {
		levy("consumers", "put", id, "--plan", "free")
	}
	if out := levy("consumers", "put", "initech", "--plan", "free", "--label", "team=ops"); !strings.Contains(out, "labels: team=ops") {
		t.Fatalf("put with a label:\n%s", out)
	}
	levy("consumers", "put", "initech", "--plan", "free")
	levy("consumers", "update", "globex", "--plan", "pro")
	if out := levy("consumers", "label", "acme", "team=search", "cost-center=CC-1"); !strings.Contains(out, "labels: cost-center=CC-1,team=search") {
		t.Fatalf("label:\n%s", out)
	}
	if out := levy("consumers", "label", "acme", "cost-center-"); !strings.Contains(out, "labels: team=search") || strings.Contains(out, "CC-1") {
		t.Fatalf("label removal:\n%s", out)
	}
	if out := levy("consumers", "get", "acme"); !strings.Contains(out, "labels: team=search") {
		t.Fatalf("get:\n%s", out)
	}

	out := levy("consumers", "list", "--limit", "2")
	if !regexp.MustCompile(`(?m)^acme\s+free\s+active\s+team=search$`).MatchString(out) || !strings.Contains(out, "globex") ||
		strings.Contains(out, "initech") || !strings.Contains(out, "next page: --cursor ") {
		t.Fatalf("first page:\n%s", out)
	}
	cursor := strings.TrimSpace(out[strings.Index(out, "--cursor ")+len("--cursor "):])
	if out := levy("consumers", "list", "--limit", "2", "--cursor", cursor); !strings.Contains(out, "initech") || strings.Contains(out, "acme") || strings.Contains(out, "next page") {
		t.Fatalf("second page:\n%s", out)
	}
	if out := levy("consumers", "list", "--limit", "1", "--all"); strings.Count(out, "free")+strings.Count(out, "pro ") != 3 {
		t.Fatalf("--all:\n%s", out)
	}
	if out := levy("consumers", "list", "--plan", "pro"); strings.Contains(out, "acme") || !strings.Contains(out, "globex") {
		t.Fatalf("--plan pro:\n%s", out)
	}

	created := levy("keys", "create", "--consumer", "acme", "--id", "k1")
	secret := regexp.MustCompile(`key: (\S+)`).FindStringSubmatch(created)[1]
	out = levy("keys", "rotate", "k1", "--grace", "1h", "--id", "k2")
	if !regexp.MustCompile(`key: levy_\S+`).MatchString(out) || !strings.Contains(out, "id:  k2") || !strings.Contains(out, "old key k1 works until 20") {
		t.Fatalf("rotate:\n%s", out)
	}
	out = levy("keys", "list", "--consumer", "acme")
	if !regexp.MustCompile(`(?m)^k1\s+`+regexp.QuoteMeta(secret[:len("levy_")+4])+`…\s+active\s+20\S+\s+20\S+\s+k2$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^k2\s+levy_\w{4}…\s+active\s+20\S+\s+-\s+-$`).MatchString(out) || strings.Contains(out, secret[:len("levy_")+5]) {
		t.Fatalf("keys list:\n%s", out)
	}
	levy("keys", "revoke", "k2")
	if out := levy("keys", "list", "--consumer", "acme"); !regexp.MustCompile(`(?m)^k2\s+\S+\s+revoked`).MatchString(out) {
		t.Fatalf("keys list after revoke:\n%s", out)
	}
	if out := levy("consumers", "delete", "acme"); !strings.Contains(out, "deleted acme and its keys") {
		t.Fatalf("delete:\n%s", out)
	}
	if _, _, err := store.Lookup(context.Background(), apikey.NewHasher(nil).Hash(secret)); err != apikey.ErrUnknown {
		t.Fatalf("key of the deleted consumer: %v", err)
	}
	var errOut bytes.Buffer
	err := run(context.Background(), []string{"consumers", "delete", "acme", "--admin-url", srv.URL, "--token", "t"}, &errOut, &errOut)
	if err == nil || !strings.Contains(err.Error(), "no consumer with id acme") {
		t.Fatalf("deleting twice: %v", err)
	}
	err = run(context.Background(), []string{"consumers", "label", "globex", "Team=x", "--admin-url", srv.URL, "--token", "t"}, &errOut, &errOut)
	if err == nil || !strings.Contains(err.Error(), `label key "Team"`) {
		t.Fatalf("a bad label: %v", err)
	}
}
