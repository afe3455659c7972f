package api_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/levyhq/levy/api"
	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/server"
)

// Every route levy's HTTP muxes are built from is described, and every
// described operation is a route levy serves.
func TestEveryRouteIsDescribedAndEveryDescriptionIsARoute(t *testing.T) {
	doc, err := apitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	var described []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			described = append(described, method+" "+path)
		}
	}
	served := server.HTTPRoutes()
	for _, r := range served {
		if !strings.Contains(r, " ") {
			t.Errorf("route %q has no method: describe each method, or give it one", r)
		}
	}
	for _, r := range served {
		if !slices.Contains(described, r) {
			t.Errorf("levy serves %s, which api/openapi.yaml does not describe", r)
		}
	}
	for _, d := range described {
		if !slices.Contains(served, d) {
			t.Errorf("api/openapi.yaml describes %s, which levy does not serve", d)
		}
	}
	if len(served) < 15 {
		t.Fatalf("only %d routes found: %v", len(served), served)
	}
}

// The embedded YAML converts to the JSON levy serves.
func TestOpenAPIConvertsToJSON(t *testing.T) {
	b, err := api.OpenAPIJSON()
	if err != nil || !strings.HasPrefix(string(b), "{") || !strings.Contains(string(b), `"openapi":"3.1.0"`) {
		t.Fatalf("OpenAPIJSON = %.100s, %v", b, err)
	}
}
