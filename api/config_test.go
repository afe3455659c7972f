package api_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/levyhq/levy/api"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/server"
)

// configPaths lists every setting of t's yaml fields: a.b for a field,
// a.* for a map's values, a[] for a list's items.
func configPaths(t reflect.Type, at string, out map[string]bool) {
	unmarshaler := reflect.TypeFor[yaml.Unmarshaler]()
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if at != "" {
		out[at] = true
	}
	if reflect.PointerTo(t).Implements(unmarshaler) || t == reflect.TypeFor[time.Time]() || t == reflect.TypeFor[yaml.Node]() {
		return // a scalar as written in the file
	}
	switch t.Kind() {
	case reflect.Struct:
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "-" || name == "" {
				continue
			}
			configPaths(f.Type, join(at, name), out)
		}
	case reflect.Map:
		configPaths(t.Elem(), join(at, "*"), out)
	case reflect.Slice:
		configPaths(t.Elem(), at+"[]", out)
	}
}

func join(at, name string) string {
	if at == "" {
		return name
	}
	return at + "." + name
}

// schemaPaths lists the same from the schema, down to stop.
func schemaPaths(root, s map[string]any, at string, stop map[string]bool, out map[string]bool) {
	if ref, ok := s["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/$defs/")
		schemaPaths(root, root["$defs"].(map[string]any)[name].(map[string]any), at, stop, out)
	}
	if at != "" {
		out[at] = true
	}
	if stop[at] {
		return
	}
	if props, ok := s["properties"].(map[string]any); ok {
		for name, p := range props {
			schemaPaths(root, p.(map[string]any), join(at, name), stop, out)
		}
	}
	if ap, ok := s["additionalProperties"].(map[string]any); ok {
		schemaPaths(root, ap, join(at, "*"), stop, out)
	}
	if items, ok := s["items"].(map[string]any); ok {
		schemaPaths(root, items, at+"[]", stop, out)
	}
}

// Every yaml field of the config types is in the schema, and every
// setting the schema describes is a field.
func TestConfigSchemaHasExactlyTheConfigFields(t *testing.T) {
	fields := map[string]bool{}
	configPaths(reflect.TypeFor[config.Config](), "", fields)
	var schema map[string]any
	if err := json.Unmarshal(api.ConfigSchema, &schema); err != nil {
		t.Fatal(err)
	}
	described := map[string]bool{}
	// Rule domains are yaml.Nodes that pkg/rls reads: the schema goes on.
	schemaPaths(schema, schema, "", map[string]bool{"ratelimit.domains[]": true}, described)
	for _, f := range sortedKeys(fields) {
		if !described[f] {
			t.Errorf("config field %s is not in api/levy.schema.json", f)
		}
	}
	for _, d := range sortedKeys(described) {
		if !fields[d] {
			t.Errorf("api/levy.schema.json describes %s, which is no config field", d)
		}
	}
	if len(fields) < 80 {
		t.Fatalf("only %d config fields found", len(fields))
	}
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// The files levy ships and loads validate against the schema.
func TestShippedConfigsValidate(t *testing.T) {
	files, _ := filepath.Glob("../examples/*.yaml")
	files = append(files, "../pkg/config/testdata/base.yaml")
	if len(files) < 2 {
		t.Fatalf("found %v", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(f)
		if err == nil {
			_, err = server.RateLimitRules(cfg)
		}
		if err != nil {
			t.Fatalf("%s does not load: %v", f, err)
		}
		errs, err := api.ValidateConfig(data)
		if err != nil || len(errs) > 0 {
			t.Errorf("%s: %v %v", f, errs, err)
		}
	}
}

// A bad file the schema can tell is refused naming the setting and its
// line, as levy's own check does; the rest need levy's rules.
func TestBadConfigsFailTheSchemaWhereItCanTell(t *testing.T) {
	tests := []struct {
		file     string
		wantPath string // "": the schema cannot tell
		wantLine int
	}{
		{"unknown_key.yaml", "plans.free.ratelimit", 4},
		{"unknown_top_key.yaml", "listen.htp", 3},
		{"bad_duration.yaml", "plans.free.rate.per", 4},
		{"wrong_type.yaml", "plans.free.rate.requests", 5},
		{"unknown_model.yaml", "plans.gold.model", 3},
		{"bad_hash.yaml", "consumers[0].keys[0].sha256", 7},
		{"bad_period.yaml", "plans.pro.quota.period", 4},
		{"no_plans.yaml", "", 0},
		{"bad_listen.yaml", "listen.grpc", 2},
		{"inline_secret.yaml", "keys.hash_secret", 2},
		{"bad_store_type.yaml", "store.type", 2},
		{"negative_max_counters.yaml", "store.max_counters", 2},
		{"uppercase_key_header.yaml", "keys.headers[0]", 2},
		{"bad_cost.yaml", "plans.pro.costs.v1/search", 5},
		{"limit_too_large.yaml", "plans.pro.quota.requests", 4},
		{"bad_near_limit_ratio.yaml", "ratelimit.near_limit_ratio", 2},
		{"bad_alert_threshold.yaml", "plans.pro.alerts[1]", 5},
		{"bad_price.yaml", "plans.pro.pricing.fixed", 6},
		{"bad_currency.yaml", "plans.pro.pricing.currency", 4},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("../pkg/config/testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			errs, err := api.ValidateConfig(data)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantPath == "" {
				if len(errs) == 0 {
					t.Fatal("the schema lets it pass")
				}
				return
			}
			for _, e := range errs {
				if e.Path == tt.wantPath && e.Line == tt.wantLine {
					return
				}
			}
			t.Fatalf("errors %v, want one at %s line %d", errs, tt.wantPath, tt.wantLine)
		})
	}
}
