package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/levyhq/levy/test/compat"
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

// levy config validate --ratelimit-dir takes envoyproxy/ratelimit's
// example and runtime directories as they are, and loads or rejects each
// of its test configs as its config_test.go expects, naming the file.
func TestConfigValidateJudgesEnvoyproxyRatelimitsConfigsAsItDoes(t *testing.T) {
	upstream := compat.Dir(t)
	validate := func(t *testing.T, dir string, merge bool) (string, error) {
		t.Helper()
		args := []string{"config", "validate", "--ratelimit-dir", dir}
		if merge {
			args = append(args, "--merge-domains")
		}
		var out bytes.Buffer
		err := run(context.Background(), args, &out, &out)
		return out.String(), err
	}
	for _, dir := range []string{"examples", "integration-runtime"} {
		t.Run(dir, func(t *testing.T) {
			if out, err := validate(t, filepath.Join(upstream, dir), false); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
	fixtures := filepath.Join(upstream, "test-config")
	tests := []struct {
		files   []string // copied into one directory, as named
		merge   bool
		wantErr string // "" when it loads
	}{
		{files: []string{"basic_config.yaml"}},
		{files: []string{"shadowmode_config.yaml"}},
		{files: []string{"share_threshold.yaml"}},
		{files: []string{"wildcard.yaml"}},
		{files: []string{"metadata.yaml"}},
		{files: []string{"merge_domain_key1.yaml", "merge_domain_key2.yaml"}, merge: true},
		{files: []string{"merge_domain_key1.yaml", "merge_domain_key2.yaml"}, wantErr: "merge_domain_key2.yaml:2: duplicate domain 'test-domain' in config file"},
		{files: []string{"basic_config.yaml", "duplicate_domain.yaml"}, wantErr: "duplicate_domain.yaml:1: duplicate domain 'test-domain' in config file"},
		{files: []string{"merge_domain_key1.yaml", "merge_domain_key1.yaml"}, merge: true, wantErr: "duplicate descriptor composite key 'test-domain.key1_value1'"},
		{files: []string{"empty_domain.yaml"}, wantErr: "empty_domain.yaml:1: config file cannot have empty domain"},
		{files: []string{"empty_key.yaml"}, wantErr: "empty_key.yaml:3: descriptor has empty key"},
		{files: []string{"duplicate_key.yaml"}, wantErr: "duplicate_key.yaml:6: duplicate descriptor composite key 'test-domain.key1_value1'"},
		{files: []string{"bad_limit_unit.yaml"}, wantErr: "bad_limit_unit.yaml:6: invalid rate limit unit 'foo'"},
		{files: []string{"replaces_self.yaml"}, wantErr: "replaces_self.yaml:10: replaces should not contain name of same descriptor"},
		{files: []string{"replaces_empty.yaml"}, wantErr: "replaces_empty.yaml:10: should not have an empty replaces entry"},
		{files: []string{"misspelled_key.yaml"}, wantErr: "misspelled_key.yaml:5: config error, unknown key 'ratelimit'"},
		{files: []string{"misspelled_key2.yaml"}, wantErr: "misspelled_key2.yaml:7: config error, unknown key 'requestsperunit'"},
		{files: []string{"non_string_key.yaml"}, wantErr: "non_string_key.yaml:1: config error, key is not of type string: 0.25"},
		{files: []string{"non_map_list.yaml"}, wantErr: "non_map_list.yaml:3: config error, yaml file contains list of type other than map: a"},
		{files: []string{"bad_yaml.yaml"}, wantErr: "bad_yaml.yaml: invalid YAML"},
		{files: []string{"unlimited_with_unit.yaml"}, wantErr: "unlimited_with_unit.yaml:6: should not specify rate limit unit when unlimited"},
		{files: []string{"empty.yaml"}, wantErr: "empty.yaml: config file cannot have empty domain"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.files, "+"), func(t *testing.T) {
			dir := t.TempDir()
			for i, f := range tt.files {
				data, err := os.ReadFile(filepath.Join(fixtures, f))
				if f == "empty.yaml" { // upstream reads an empty file as one without a domain
					data, err = []byte("# nothing yet\n"), nil
				}
				if err != nil {
					t.Fatal(err)
				}
				name := f
				if i > 0 && f == tt.files[0] {
					name = "z_" + f // the same file twice
				}
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			out, err := validate(t, dir, tt.merge)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q\n%s", err, tt.wantErr, out)
			}
		})
	}
}

// levy config validate --ratelimit-dir judges levy's own rule files
// (pkg/rls/testdata/rules), in every clone, as envoyproxy/ratelimit's
// config_check judges the same cases: good directories pass, each bad
// file fails naming file and line.
func TestConfigValidateJudgesLevysRuleFixtures(t *testing.T) {
	fixtures := filepath.Join("..", "..", "pkg", "rls", "testdata", "rules")
	tests := []struct {
		files   []string // copied into one directory
		merge   bool
		wantErr string // "" when it loads
	}{
		{files: []string{"storefront.yaml", "wildcards.yaml"}},
		{files: []string{"merge_one.yaml", "merge_two.yaml"}, merge: true},
		{files: []string{"merge_one.yaml", "merge_two.yaml"}, wantErr: "merge_two.yaml:1: duplicate domain 'merged' in config file"},
		{files: []string{"storefront.yaml", "bad/duplicate_domain.yaml"}, wantErr: "storefront.yaml:4: duplicate domain 'storefront' in config file"}, // read in name order
		{files: []string{"bad/empty_domain.yaml"}, wantErr: "empty_domain.yaml:2: config file cannot have empty domain"},
		{files: []string{"bad/empty.yaml"}, wantErr: "empty.yaml: config file cannot have empty domain"},
		{files: []string{"bad/empty_key.yaml"}, wantErr: "empty_key.yaml:3: descriptor has empty key"},
		{files: []string{"bad/duplicate_key.yaml"}, wantErr: "duplicate_key.yaml:6: duplicate descriptor composite key 'shop.plan_gold'"},
		{files: []string{"bad/bad_unit.yaml"}, wantErr: "bad_unit.yaml:5: invalid rate limit unit 'fortnight'"},
		{files: []string{"bad/replaces_self.yaml"}, wantErr: "replaces_self.yaml:10: replaces should not contain name of same descriptor"},
		{files: []string{"bad/replaces_empty.yaml"}, wantErr: "replaces_empty.yaml:10: should not have an empty replaces entry"},
		{files: []string{"bad/unknown_key.yaml"}, wantErr: "unknown_key.yaml:5: config error, unknown key 'ratelimit'"},
		{files: []string{"bad/unknown_nested_key.yaml"}, wantErr: "unknown_nested_key.yaml:6: config error, unknown key 'requests_per_second'"},
		{files: []string{"bad/non_string_key.yaml"}, wantErr: "non_string_key.yaml:5: config error, key is not of type string: 1.5"},
		{files: []string{"bad/non_map_list.yaml"}, wantErr: "non_map_list.yaml:5: config error, yaml file contains list of type other than map: just a string"},
		{files: []string{"bad/bad_yaml.yaml"}, wantErr: "bad_yaml.yaml: invalid YAML"},
		{files: []string{"bad/unlimited_with_unit.yaml"}, wantErr: "unlimited_with_unit.yaml:6: should not specify rate limit unit when unlimited"},
		{files: []string{"bad/share_threshold_without_wildcard.yaml"}, wantErr: "share_threshold_without_wildcard.yaml:5: share_threshold can only be used with wildcard values"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.files, "+"), func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				data, err := os.ReadFile(filepath.Join(fixtures, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			args := []string{"config", "validate", "--ratelimit-dir", dir}
			if tt.merge {
				args = append(args, "--merge-domains")
			}
			var out bytes.Buffer
			err := run(context.Background(), args, &out, &out)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q\n%s", err, tt.wantErr, out.String())
			}
		})
	}
}
