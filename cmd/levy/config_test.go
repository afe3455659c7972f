package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// levy config validate --ratelimit-dir checks rule files alone, as
// envoyproxy/ratelimit's config_check does: .yaml and .yml, errors with
// file and line.
func TestConfigValidateChecksRuleFilesAlone(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		wantErr string // "" for success
		wantOut []string
	}{
		{name: "good", files: map[string]string{
			"a.yaml": "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
			"b.yml":  "domain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
		}, wantOut: []string{"a.yaml: ok", "b.yml: ok"}},
		{name: "bad unit", files: map[string]string{
			"a.yml": "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
		}, wantErr: "a.yml:4"},
		{name: "no rule files", files: map[string]string{"notes.txt": "x"}, wantErr: "no *.yaml or *.yml rule files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, text := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			var out bytes.Buffer
			err := run(context.Background(), []string{"config", "validate", "--ratelimit-dir", dir}, &out, &out)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q\n%s", err, tt.wantErr, out.String())
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}
