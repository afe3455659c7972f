package rls

import (
	"strings"
	"testing"
)

// A key is refused where it has no effect (envoyproxy/ratelimit accepts
// it and ignores it there), naming the file, the line and where it goes;
// so is a rule the stores would refuse on every request. The keys where
// they belong, and a key that is nowhere valid, are as before.
func TestRulesRefuseKeysWhereTheyHaveNoEffect(t *testing.T) {
	const head = "domain: d\ndescriptors:\n  - key: k\n"
	tests := []struct {
		name    string
		give    string // after head
		wantErr string // "" when it loads
	}{
		{name: "every key in its place",
			give: "    value: v\n    shadow_mode: true\n    quota_mode: true\n    detailed_metric: true\n    value_to_metric: true\n    metadata: {a: {domain: 1}}\n" +
				"    rate_limit: {unit: minute, requests_per_unit: 2, name: n, burst: 4, from_plan: true, debit: true}\n" +
				"    descriptors:\n      - key: j\n        rate_limit: {unlimited: true, replaces: [{name: m}]}\n"},
		{name: "debit beside quota_mode", give: "    quota_mode: true\n    debit: true\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
			wantErr: "s.yaml:5: config error, key 'debit' goes in rate_limit, not in a descriptor"},
		{name: "burst outside rate_limit", give: "    burst: 10\n    rate_limit: {unit: second, requests_per_unit: 2}\n",
			wantErr: "s.yaml:4: config error, key 'burst' goes in rate_limit"},
		{name: "from_plan outside rate_limit", give: "    from_plan: true\n    rate_limit: {unit: second, requests_per_unit: 2}\n",
			wantErr: "s.yaml:4: config error, key 'from_plan' goes in rate_limit"},
		{name: "unit outside rate_limit", give: "    unit: second\n    rate_limit: {requests_per_unit: 2}\n",
			wantErr: "s.yaml:4: config error, key 'unit' goes in rate_limit"},
		{name: "shadow_mode in rate_limit", give: "    rate_limit: {unit: second, requests_per_unit: 2, shadow_mode: true}\n",
			wantErr: "s.yaml:4: config error, key 'shadow_mode' goes in a descriptor, not in rate_limit"},
		{name: "quota_mode in rate_limit", give: "    rate_limit: {unit: second, requests_per_unit: 2, quota_mode: true}\n",
			wantErr: "s.yaml:4: config error, key 'quota_mode' goes in a descriptor"},
		{name: "descriptors in rate_limit", give: "    rate_limit: {unit: second, requests_per_unit: 2, descriptors: [{key: j}]}\n",
			wantErr: "s.yaml:4: config error, key 'descriptors' goes in the top level or a descriptor, not in rate_limit"},
		{name: "domain in a descriptor", give: "    domain: e\n", wantErr: "s.yaml:4: config error, key 'domain' goes in the top level, not in a descriptor"},
		{name: "name beside the rule", give: "    name: n\n    rate_limit: {unit: second, requests_per_unit: 2}\n",
			wantErr: "s.yaml:4: config error, key 'name' goes in rate_limit or a replaces entry, not in a descriptor"},
		{name: "a replaces entry's unit", give: "    rate_limit: {unlimited: true, replaces: [{name: m, unit: second}]}\n",
			wantErr: "s.yaml:4: config error, key 'unit' goes in rate_limit, not in a replaces entry"},
		{name: "an unknown key", give: "    ratelimit: {unit: second}\n", wantErr: "s.yaml:4: config error, unknown key 'ratelimit'"},
		{name: "a bucket over 71 years to fill", give: "    rate_limit: {unit: hour, requests_per_unit: 1, burst: 1000000}\n",
			wantErr: `s.yaml:4: bad limit "d.k": a bucket that takes over`},
		{name: "the largest bucket that fills within them", give: "    rate_limit: {unit: hour, requests_per_unit: 1, burst: 625499}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load([]Source{{Name: "s.yaml", Data: []byte(head + tt.give)}}, false)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}
