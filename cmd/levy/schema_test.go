package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// levy config validate checks the file against the JSON Schema first,
// naming the line and setting of each disagreement; a good file is ok.
func TestConfigValidateReportsSchemaErrorsWithLineAndPath(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("store:\n  type: memcached\nplans:\n  pro:\n    model: tiered\n    quota: {requests: 10, period: fortnight}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"config", "validate", bad}, &out, &out)
	if err == nil {
		t.Fatal("a bad file validated")
	}
	for _, want := range []string{"levy's config schema", bad + ":2: store.type: ", "local", bad + ":6: plans.pro.quota.period: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"config", "validate", "../../examples/levy.yaml"}, &out, &out); err != nil || !strings.Contains(out.String(), "ok") {
		t.Fatalf("examples/levy.yaml: %v\n%s", err, out.String())
	}
}
