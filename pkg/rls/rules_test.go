package rls

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/levyhq/levy/test/compat"
)

func loadFiles(t *testing.T, merge bool, files ...string) (*Rules, error) {
	t.Helper()
	var sources []Source
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, Source{Name: f, Data: data})
	}
	return Load(sources, merge)
}

// Every upstream fixture loads, or fails as upstream's table says, naming
// the file (and the offending key or line).
func TestEnvoyproxyRatelimitFixtures(t *testing.T) {
	dir := filepath.Join(compat.Dir(t), "test-config")
	tests := []struct {
		files []string
		merge bool
		want  []string // empty: loads
	}{
		{[]string{"basic_config.yaml"}, false, nil},
		{[]string{"shadowmode_config.yaml"}, false, nil},
		{[]string{"share_threshold.yaml"}, false, nil},
		{[]string{"wildcard.yaml"}, false, nil},
		{[]string{"metadata.yaml"}, false, nil},
		{[]string{"merge_domain_key1.yaml", "merge_domain_key2.yaml"}, true, nil},
		{[]string{"merge_domain_key1.yaml", "merge_domain_key2.yaml"}, false, []string{"merge_domain_key2.yaml:2:", "duplicate domain 'test-domain' in config file"}},
		{[]string{"basic_config.yaml", "duplicate_domain.yaml"}, false, []string{"duplicate_domain.yaml:1:", "duplicate domain 'test-domain' in config file"}},
		{[]string{"empty_domain.yaml"}, false, []string{"empty_domain.yaml", "config file cannot have empty domain"}},
		{[]string{"empty_key.yaml"}, false, []string{"empty_key.yaml:3:", "descriptor has empty key"}},
		{[]string{"duplicate_key.yaml"}, false, []string{"duplicate_key.yaml:6:", "duplicate descriptor composite key 'test-domain.key1_value1'"}},
		{[]string{"bad_limit_unit.yaml"}, false, []string{"bad_limit_unit.yaml:6:", "invalid rate limit unit 'foo'"}},
		{[]string{"replaces_self.yaml"}, false, []string{"replaces_self.yaml:10:", "replaces should not contain name of same descriptor"}},
		{[]string{"replaces_empty.yaml"}, false, []string{"replaces_empty.yaml:10:", "should not have an empty replaces entry"}},
		{[]string{"misspelled_key.yaml"}, false, []string{"misspelled_key.yaml:5:", "unknown key 'ratelimit'"}},
		{[]string{"misspelled_key2.yaml"}, false, []string{"misspelled_key2.yaml:7:", "unknown key 'requestsperunit'"}},
		{[]string{"non_string_key.yaml"}, false, []string{"non_string_key.yaml:1:", "key is not of type string: 0.25"}},
		{[]string{"non_map_list.yaml"}, false, []string{"non_map_list.yaml:3:", "list of type other than map: a"}},
		{[]string{"bad_yaml.yaml"}, false, []string{"bad_yaml.yaml", "invalid YAML"}},
		{[]string{"unlimited_with_unit.yaml"}, false, []string{"unlimited_with_unit.yaml:6:", "should not specify rate limit unit when unlimited"}},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		t.Run(strings.Join(tt.files, "+"), func(t *testing.T) {
			var paths []string
			for _, f := range tt.files {
				paths = append(paths, filepath.Join(dir, f))
				covered[f] = true
			}
			_, err := loadFiles(t, tt.merge, paths...)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("want it to load: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("loaded without error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	all, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, f := range all {
		if !covered[filepath.Base(f)] {
			t.Errorf("fixture %s is not in the table", f)
		}
	}
}

func TestUpstreamRuntimeAndExampleConfigsLoad(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(compat.Dir(t), "integration-runtime", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no integration-runtime fixtures")
	}
	r, err := loadFiles(t, false, files...)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Domains(), ","); !strings.Contains(got, "basic") || !strings.Contains(got, "reload") {
		t.Fatalf("domains %s", got)
	}
	// example.yaml is a multi-document stream in upstream's docs; config.yaml
	// is one file per domain.
	if _, err := loadFiles(t, false, filepath.Join(compat.Dir(t), "examples", "config.yaml")); err != nil {
		t.Fatal(err)
	}
}

func TestShareThresholdNeedsAWildcard(t *testing.T) {
	src := "domain: d\ndescriptors:\n  - key: k\n    value: exact\n    share_threshold: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
	_, err := Load([]Source{{Name: "s.yaml", Data: []byte(src)}}, false)
	if err == nil || !strings.Contains(err.Error(), "s.yaml:5:") || !strings.Contains(err.Error(), "share_threshold can only be used with wildcard values") {
		t.Fatalf("err = %v", err)
	}
}

func TestLookupMatchesAsEnvoyproxyRatelimit(t *testing.T) {
	r, err := loadFiles(t, false, filepath.Join(compat.Dir(t), "test-config", "basic_config.yaml"), filepath.Join(compat.Dir(t), "test-config", "wildcard.yaml"))
	if err == nil {
		t.Fatal("both use test-domain: want a duplicate-domain error")
	}
	r, err = loadFiles(t, true, filepath.Join(compat.Dir(t), "test-config", "basic_config.yaml"), filepath.Join(compat.Dir(t), "test-config", "share_threshold.yaml"), filepath.Join(compat.Dir(t), "test-config", "wildcard.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e := func(kv ...string) []Entry {
		var out []Entry
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, Entry{kv[i], kv[i+1]})
		}
		return out
	}
	tests := []struct {
		name   string
		domain string
		give   []Entry
		rpu    uint32 // 0: no limit
		unit   RuleUnit
		key    string
	}{
		{"key only", "test-domain", e("key2", "anything"), 20, Minute, "test-domain.key2=anything"},
		{"exact value beats key only", "test-domain", e("key2", "value2"), 30, Minute, "test-domain.key2=value2"},
		{"value without limit whitelists", "test-domain", e("key2", "value3"), 0, "", ""},
		{"nested key only", "test-domain", e("key1", "value1", "subkey1", "x"), 5, Second, "test-domain.key1=value1.subkey1=x"},
		{"nested exact", "test-domain", e("key1", "value1", "subkey1", "subvalue1"), 10, Second, "test-domain.key1=value1.subkey1=subvalue1"},
		{"depth shorter than the rule", "test-domain", e("key1", "value1"), 0, "", ""},
		{"depth longer than the rule", "test-domain", e("key2", "value2", "extra", "x"), 0, "", ""},
		{"unknown key", "test-domain", e("nope", "x"), 0, "", ""},
		{"unknown domain", "other", e("key2", "x"), 0, "", ""},
		{"trailing wildcard", "test-domain", e("wild", "foobar"), 20, Minute, "test-domain.wild=foobar"},
		{"middle wildcard", "test-domain", e("midWild", "barxyzb"), 20, Minute, "test-domain.midWild=barxyzb"},
		{"middle wildcard needs both ends", "test-domain", e("midWild", "barxyz"), 0, "", ""},
		{"multi wildcard", "test-domain", e("multiWild", "foo1bar2baz"), 10, Minute, "test-domain.multiWild=foo1bar2baz"},
		{"explicit beats share_threshold wildcard", "test-domain", e("file", "test1"), 50, Minute, "test-domain.file=test1"},
		{"share_threshold shares one counter", "test-domain", e("file", "test2"), 100, Minute, "test-domain.file=test*"},
		{"share_threshold nested", "test-domain", e("nested", "parent", "files", "nested/a"), 200, Minute, "test-domain.nested=parent.files=nested/*"},
		{"unlimited", "test-domain", e("key6", "x"), 0, "", "test-domain.key6=x"},
		{"day unit", "test-domain", e("key4", "x"), 1, Day, "test-domain.key4=x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ok := r.Lookup(tt.domain, tt.give)
			if tt.key == "" {
				if ok {
					t.Fatalf("matched %+v, want no limit", m.Rule)
				}
				return
			}
			if !ok {
				t.Fatal("no match")
			}
			if m.Key != tt.key || m.Rule.RequestsPerUnit != tt.rpu || m.Rule.Unit != tt.unit {
				t.Fatalf("got key %q rpu %d unit %q, want %q %d %q", m.Key, m.Rule.RequestsPerUnit, m.Rule.Unit, tt.key, tt.rpu, tt.unit)
			}
		})
	}
}

// Rule files are read whether they end in .yaml or .yml, as
// envoyproxy/ratelimit reads them; other files are not.
func TestReadDirReadsYAMLAndYML(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"a.yaml": "domain: a\n", "b.yml": "domain: b\n", "notes.txt": "domain: c\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srcs, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range srcs {
		got = append(got, filepath.Base(s.Name))
	}
	if strings.Join(got, ",") != "a.yaml,b.yml" {
		t.Fatalf("read %v, want a.yaml and b.yml", got)
	}
}

func loadText(t *testing.T, text string) *Rules {
	t.Helper()
	r, err := Load([]Source{{Name: "r.yaml", Data: []byte(text)}}, false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func lookup(t *testing.T, r *Rules, domain string, kv ...string) *Rule {
	t.Helper()
	var entries []Entry
	for i := 0; i+1 < len(kv); i += 2 {
		entries = append(entries, Entry{kv[i], kv[i+1]})
	}
	m, ok := r.Lookup(domain, entries)
	if !ok {
		t.Fatalf("%v: no rule", kv)
	}
	return m.Rule
}

// debit: true makes a rule a debit, and nothing else does: quota_mode
// does not (upstream's quota.sh sends its hits up front). YAML 1.1
// booleans read as upstream's YAML library reads them.
func TestQuotaModeAndDebitFlags(t *testing.T) {
	r := loadText(t, `domain: d
descriptors:
  - {key: plain, rate_limit: {unit: minute, requests_per_unit: 1}}
  - {key: quota, quota_mode: true, rate_limit: {unit: minute, requests_per_unit: 1}}
  - {key: checked, quota_mode: yes, rate_limit: {unit: minute, requests_per_unit: 1, debit: false}}
  - {key: metered, rate_limit: {unit: minute, requests_per_unit: 1, debit: on}}
`)
	tests := []struct {
		key          string
		quota, debit bool
	}{{"plain", false, false}, {"quota", true, false}, {"checked", true, false}, {"metered", false, true}}
	for _, tt := range tests {
		if rule := lookup(t, r, "d", tt.key, "x"); rule.QuotaMode != tt.quota || rule.Debit != tt.debit {
			t.Errorf("%s: quota_mode %v debit %v, want %v %v", tt.key, rule.QuotaMode, rule.Debit, tt.quota, tt.debit)
		}
	}
	_, err := Load([]Source{{Name: "r.yaml", Data: []byte("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1, debit: sometimes}\n")}}, false)
	if err == nil || !strings.Contains(err.Error(), "r.yaml:4:") || !strings.Contains(err.Error(), "debit must be true or false") {
		t.Fatalf("debit: sometimes: %v", err)
	}
}

// metadata is read as envoyproxy/ratelimit reads it (test/config/
// metadata.yaml); one that is not a mapping is an error with its line.
func TestMetadataIsReadAsAStruct(t *testing.T) {
	r := loadText(t, `domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 1}
    metadata:
      name: a
      n: 3
      ratio: 0.5
      on: true
      none: null
      since: 2024-01-02
      list: [1, two, {three: 3}]
      nested: {deeper: {deepest: x}}
  - key: bare
    rate_limit: {unit: minute, requests_per_unit: 1}
`)
	got, err := json.Marshal(lookup(t, r, "d", "k", "x").Metadata.AsMap())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"list":[1,"two",{"three":3}],"n":3,"name":"a","nested":{"deeper":{"deepest":"x"}},"none":null,"on":true,"ratio":0.5,"since":"2024-01-02"}`
	if string(got) != want {
		t.Fatalf("metadata\n got %s\nwant %s", got, want)
	}
	if lookup(t, r, "d", "bare", "x").Metadata != nil {
		t.Fatal("a rule without metadata has some")
	}
	_, err = Load([]Source{{Name: "r.yaml", Data: []byte("domain: d\ndescriptors:\n  - key: k\n    metadata: [a]\n    rate_limit: {unit: minute, requests_per_unit: 1}\n")}}, false)
	if err == nil || !strings.Contains(err.Error(), "r.yaml:4:") || !strings.Contains(err.Error(), "error parsing metadata") {
		t.Fatalf("metadata as a list: %v", err)
	}
}

// The labels of detailed_metric and value_to_metric are envoyproxy/
// ratelimit's stats keys (its config_test.go TestDetailedMetric and
// TestValueToMetric_*).
func TestMetricLabelsAreEnvoyproxyRatelimitsStatsKeys(t *testing.T) {
	r := loadText(t, `domain: d
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: {unit: minute, requests_per_unit: 60}
      - key: http_method
        value: GET
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: {unit: minute, requests_per_unit: 60}
      - key: action
        value: read*
        value_to_metric: true
        descriptors:
          - key: resource
            rate_limit: {unit: minute, requests_per_unit: 100}
      - key: detailed
        descriptors:
          - key: id
            detailed_metric: true
            rate_limit: {unit: minute, requests_per_unit: 100}
  - key: k1
    descriptors:
      - key: k2
        value_to_metric: true
        descriptors:
          - key: k3
            rate_limit: {unit: second, requests_per_unit: 1}
  - key: plain
    descriptors:
      - key: k2
        rate_limit: {unit: second, requests_per_unit: 1}
  - key: wild
    value: foo*
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: unspec
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: files
    value: a/*
    share_threshold: true
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 2}
`)
	tests := []struct {
		give       []string
		want       string
		withValues bool
	}{
		{[]string{"route", "draw", "http_method", "POST", "subject_id", "123"}, "d.route_draw.http_method_POST.subject_id", true},
		{[]string{"route", "api", "http_method", "GET", "subject_id", "u1"}, "d.route_api.http_method_GET.subject_id", true},
		{[]string{"route", "", "http_method", "GET", "subject_id", "1"}, "d.route.http_method_GET.subject_id", true},
		{[]string{"route", "u", "action", "readfile", "resource", "docs"}, "d.route_u.action_readfile.resource", true},
		{[]string{"route", "draw", "detailed", "x", "id", "123"}, "d.route_draw.detailed_x.id_123", true},
		{[]string{"k1", "X", "k2", "Y", "k3", "Z"}, "d.k1.k2_Y.k3", true},
		{[]string{"plain", "X", "k2", "Y"}, "d.plain.k2", false},
		{[]string{"wild", "foobar"}, "d.wild_foo*", false},
		{[]string{"unspec", "v"}, "d.unspec_v", true},
		{[]string{"files", "a/b.pdf"}, "d.files_a/*", true},
	}
	for _, tt := range tests {
		rule := lookup(t, r, "d", tt.give...)
		var entries []Entry
		for i := 0; i+1 < len(tt.give); i += 2 {
			entries = append(entries, Entry{tt.give[i], tt.give[i+1]})
		}
		if got, values := rule.metricLabel("d", entries); got != tt.want || values != tt.withValues {
			t.Errorf("%v: label %q (values %v), want %q (%v)", tt.give, got, values, tt.want, tt.withValues)
		}
	}
}
