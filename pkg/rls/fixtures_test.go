package rls

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// levy's own rule files (testdata/rules) load, or fail naming the file,
// the line and what is wrong, in every clone: the same cases as
// envoyproxy/ratelimit's fixtures (TestEnvoyproxyRatelimitFixtures, when
// they are beside the clone), written for levy.
func TestLevyRuleFixtures(t *testing.T) {
	tests := []struct {
		files []string // under testdata/rules
		merge bool
		want  []string // empty: loads
	}{
		{[]string{"storefront.yaml"}, false, nil},
		{[]string{"wildcards.yaml"}, false, nil},
		{[]string{"storefront.yaml", "wildcards.yaml"}, false, nil},
		{[]string{"merge_one.yaml", "merge_two.yaml"}, true, nil},
		{[]string{"merge_one.yaml", "merge_two.yaml"}, false, []string{"merge_two.yaml:1:", "duplicate domain 'merged' in config file"}},
		{[]string{"storefront.yaml", "bad/duplicate_domain.yaml"}, false, []string{"duplicate_domain.yaml:2:", "duplicate domain 'storefront' in config file"}},
		{[]string{"merge_one.yaml", "merge_one.yaml"}, true, []string{"merge_one.yaml:4:", "duplicate descriptor composite key 'merged.first'"}},
		{[]string{"bad/empty_domain.yaml"}, false, []string{"empty_domain.yaml:2:", "config file cannot have empty domain"}},
		{[]string{"bad/empty.yaml"}, false, []string{"empty.yaml:", "config file cannot have empty domain"}},
		{[]string{"bad/empty_key.yaml"}, false, []string{"empty_key.yaml:3:", "descriptor has empty key"}},
		{[]string{"bad/duplicate_key.yaml"}, false, []string{"duplicate_key.yaml:6:", "duplicate descriptor composite key 'shop.plan_gold'"}},
		{[]string{"bad/bad_unit.yaml"}, false, []string{"bad_unit.yaml:5:", "invalid rate limit unit 'fortnight'"}},
		{[]string{"bad/replaces_self.yaml"}, false, []string{"replaces_self.yaml:10:", "replaces should not contain name of same descriptor"}},
		{[]string{"bad/replaces_empty.yaml"}, false, []string{"replaces_empty.yaml:10:", "should not have an empty replaces entry"}},
		{[]string{"bad/unknown_key.yaml"}, false, []string{"unknown_key.yaml:5:", "config error, unknown key 'ratelimit'"}},
		{[]string{"bad/unknown_nested_key.yaml"}, false, []string{"unknown_nested_key.yaml:6:", "config error, unknown key 'requests_per_second'"}},
		{[]string{"bad/non_string_key.yaml"}, false, []string{"non_string_key.yaml:5:", "config error, key is not of type string: 1.5"}},
		{[]string{"bad/non_map_list.yaml"}, false, []string{"non_map_list.yaml:5:", "config error, yaml file contains list of type other than map: just a string"}},
		{[]string{"bad/bad_yaml.yaml"}, false, []string{"bad_yaml.yaml", "invalid YAML"}},
		{[]string{"bad/unlimited_with_unit.yaml"}, false, []string{"unlimited_with_unit.yaml:6:", "should not specify rate limit unit when unlimited"}},
		{[]string{"bad/share_threshold_without_wildcard.yaml"}, false, []string{"share_threshold_without_wildcard.yaml:5:", "share_threshold can only be used with wildcard values"}},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		t.Run(strings.Join(tt.files, "+"), func(t *testing.T) {
			var paths []string
			for _, f := range tt.files {
				paths = append(paths, filepath.Join("testdata", "rules", f))
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
	all, _ := filepath.Glob(filepath.Join("testdata", "rules", "*.yaml"))
	bad, _ := filepath.Glob(filepath.Join("testdata", "rules", "bad", "*.yaml"))
	for _, f := range append(all, bad...) {
		rel, _ := filepath.Rel(filepath.Join("testdata", "rules"), f)
		if !covered[rel] {
			t.Errorf("fixture %s is not in the table", f)
		}
	}
}

// Lookup on levy's own files matches as envoyproxy/ratelimit matches (the
// cases of TestLookupMatchesAsEnvoyproxyRatelimit, in every clone), and
// each rule carries what its file says.
func TestLookupOnLevyFixtures(t *testing.T) {
	r, err := loadFiles(t, false, filepath.Join("testdata", "rules", "storefront.yaml"), filepath.Join("testdata", "rules", "wildcards.yaml"))
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
		key    string // the counter's key; "": no match
	}{
		{"nested key only", "storefront", e("tenant", "acme", "cart", "c1"), 4, Second, "storefront.tenant=acme.cart=c1"},
		{"nested exact value wins", "storefront", e("tenant", "acme", "cart", "checkout"), 8, Second, "storefront.tenant=acme.cart=checkout"},
		{"nested under another value", "storefront", e("tenant", "other", "cart", "c1"), 0, "", ""},
		{"depth shorter than the rule", "storefront", e("tenant", "acme"), 0, "", ""},
		{"key only", "storefront", e("country", "de"), 60, Minute, "storefront.country=de"},
		{"exact value beats key only", "storefront", e("country", "ch"), 90, Minute, "storefront.country=ch"},
		{"value without limit is not limited", "storefront", e("country", "internal"), 0, "", ""},
		{"depth longer than the rule", "storefront", e("country", "ch", "city", "zurich"), 0, "", ""},
		{"hour unit", "storefront", e("export", "csv"), 3, Hour, "storefront.export=csv"},
		{"day unit", "storefront", e("report", "q3"), 2, Day, "storefront.report=q3"},
		{"unlimited", "storefront", e("healthcheck", "k8s"), 0, "", "storefront.healthcheck=k8s"},
		{"unknown key", "storefront", e("nope", "x"), 0, "", ""},
		{"unknown domain", "elsewhere", e("country", "de"), 0, "", ""},
		{"trailing wildcard", "paths", e("image", "thumb_small"), 40, Minute, "paths.image=thumb_small"},
		{"exact beats wildcard", "paths", e("image", "thumb_exact"), 41, Minute, "paths.image=thumb_exact"},
		{"middle wildcard", "paths", e("archive", "tar.v2.gz"), 42, Minute, "paths.archive=tar.v2.gz"},
		{"middle wildcard needs both ends", "paths", e("archive", "tar.v2.zip"), 0, "", ""},
		{"several wildcards", "paths", e("object", "a1b2c"), 43, Minute, "paths.object=a1b2c"},
		{"several wildcards in order", "paths", e("object", "c1b2a"), 0, "", ""},
		{"nested wildcard", "paths", e("bucket", "media", "image", "raw_001"), 44, Minute, "paths.bucket=media.image=raw_001"},
		{"share_threshold shares one counter", "paths", e("download", "/pub/a.iso"), 100, Minute, "paths.download=/pub/*"},
		{"exact value beats share_threshold", "paths", e("download", "/pub/special"), 7, Minute, "paths.download=/pub/special"},
		{"nested share_threshold", "paths", e("mirror", "eu", "download", "/eu/x"), 200, Minute, "paths.mirror=eu.download=/eu/*"},
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

	rule := func(kv ...string) *Rule {
		t.Helper()
		m, ok := r.Lookup("storefront", e(kv...))
		if !ok {
			t.Fatalf("no rule for %v", kv)
		}
		return m.Rule
	}
	if got := rule("healthcheck", "x"); !got.Unlimited {
		t.Errorf("healthcheck: %+v, want unlimited", got)
	}
	if got := rule("report", "x"); got.Name != "daily-report" {
		t.Errorf("report's name %q", got.Name)
	}
	if got := rule("partner", "p"); strings.Join(got.Replaces, ",") != "daily-report" {
		t.Errorf("partner replaces %v", got.Replaces)
	}
	if got := rule("beta_feature", "x"); !got.Shadow {
		t.Errorf("beta_feature is not in shadow mode")
	}
	if got := rule("client", "x"); !got.DetailedMetric {
		t.Errorf("client has no detailed_metric")
	}
	if got := rule("region", "eu", "shelf", "s"); !got.valueLabels {
		t.Errorf("region/shelf: value_to_metric labels nothing")
	}
	got := rule("service", "recommendations")
	if !got.QuotaMode || !got.Debit {
		t.Errorf("service: quota_mode %v debit %v, want a quota-mode debit", got.QuotaMode, got.Debit)
	}
	if pool := got.Metadata.GetFields()["backend"].GetStructValue().GetFields()["pool"].GetStringValue(); pool != "large" {
		t.Errorf("service metadata %v", got.Metadata)
	}
}

// levy's runtime directory and example (served by test/e2e) load, each
// file its own domain.
func TestLevyRuntimeAndExampleRulesLoad(t *testing.T) {
	for dir, want := range map[string]string{"runtime": "runtime,second", "example": "gateway"} {
		files, _ := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
		r, err := loadFiles(t, false, files...)
		if err != nil {
			t.Fatal(err)
		}
		domains := r.Domains()
		slices.Sort(domains)
		if got := strings.Join(domains, ","); got != want {
			t.Errorf("%s: domains %s, want %s", dir, got, want)
		}
	}
}
