package rls

import (
	"strings"
	"testing"
)

// FuzzLoadRules reads rule files of any content, as a ConfigMap or a
// migration from envoyproxy/ratelimit brings them: Load returns rules or
// an error naming the file, never a panic, and rules it returns answer
// any descriptor.
func FuzzLoadRules(f *testing.F) {
	f.Add([]byte("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n"), "k", "v")
	f.Add([]byte("domain: d\ndescriptors:\n  - key: k\n    value: a*\n    share_threshold: true\n    rate_limit: {unit: day, requests_per_unit: 1}\n    descriptors:\n      - key: n\n        rate_limit: {unlimited: true}\n"), "k", "abc")
	f.Add([]byte("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: a, unit: hour, requests_per_unit: 5, replaces: [{name: b}]}\n    quota_mode: true\n    metadata: {x: {y: 1}}\n"), "k", "")
	f.Add([]byte("domain: [\n"), "", "")
	f.Fuzz(func(t *testing.T, data []byte, key, value string) {
		r, err := Load([]Source{{Name: "rules.yaml", Data: data}}, false)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "rules.yaml") {
				t.Fatalf("an error that does not name the file: %v", err)
			}
			return
		}
		for domain := range r.domains {
			r.Lookup(domain, []Entry{{Key: key, Value: value}})
			r.Lookup(domain, []Entry{{Key: key, Value: value}, {Key: value, Value: key}})
		}
	})
}
