package rls_test

import (
	"encoding/json"
	"testing"

	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/rls"
)

const metadataYAML = `
plans:
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}
ratelimit:
  domains:
    - domain: api
      descriptors:
        - key: generic_key
          value: a
          rate_limit: {unit: minute, requests_per_unit: 100}
          metadata:
            route: {cluster: a, weight: 1}
            tier: gold
            tags: [x, y]
        - key: generic_key
          value: b
          rate_limit: {unit: minute, requests_per_unit: 100}
          metadata:
            route: {cluster: b, zone: eu}
            tier: silver
            retries: 3
        - key: generic_key
          value: plain
          rate_limit: {unit: minute, requests_per_unit: 100}
        - key: generic_key
          value: once
          rate_limit: {unit: minute, requests_per_unit: 1}
          metadata: {once: true}
        - key: generic_key
          value: free
          rate_limit: {unlimited: true}
          metadata: {free: true}
`

// asJSON writes s with encoding/json, whose key order is stable
// (protojson's spacing is not).
func asJSON(t *testing.T, s *structpb.Struct) string {
	t.Helper()
	if s == nil {
		return "null"
	}
	b, err := json.Marshal(s.AsMap())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A rule's metadata reaches Envoy without a switch, in
// envoyproxy/ratelimit's shape: the metadata of the descriptors that
// passed, merged in request order (the first wins; structs merge).
func TestRuleMetadataIsReturnedInEnvoyproxyRatelimitsShape(t *testing.T) {
	f := start(t, newContract().factory, metadataYAML)
	a, b := d("generic_key", "a"), d("generic_key", "b")
	tests := []struct {
		name       string
		hitsAddend uint32
		give       []envoyclient.Descriptor
		want       string
	}{
		{"merged, first wins", 0, []envoyclient.Descriptor{a, b},
			`{"descriptors":[{"entries":["generic_key=a"]},{"entries":["generic_key=b"]}],"domain":"api",` +
				`"metadata":{"retries":3,"route":{"cluster":"a","weight":1,"zone":"eu"},"tags":["x","y"],"tier":"gold"}}`},
		{"the other order", 0, []envoyclient.Descriptor{b, a},
			`{"descriptors":[{"entries":["generic_key=b"]},{"entries":["generic_key=a"]}],"domain":"api",` +
				`"metadata":{"retries":3,"route":{"cluster":"b","weight":1,"zone":"eu"},"tags":["x","y"],"tier":"silver"}}`},
		{"a rule's metadata is not changed by merging into it", 0, []envoyclient.Descriptor{a},
			`{"descriptors":[{"entries":["generic_key=a"]}],"domain":"api","metadata":{"route":{"cluster":"a","weight":1},"tags":["x","y"],"tier":"gold"}}`},
		{"hits_addend of the request and of a descriptor", 3, []envoyclient.Descriptor{hits(2, b), d("unknown", "x")},
			`{"descriptors":[{"entries":["generic_key=b"],"hitsAddend":2},{"entries":["unknown=x"]}],"domain":"api","hitsAddend":3,` +
				`"metadata":{"retries":3,"route":{"cluster":"b","zone":"eu"},"tier":"silver"}}`},
		{"no rule with metadata: none", 0, []envoyclient.Descriptor{d("generic_key", "plain")}, "null"},
		{"an unlimited rule's is not returned, as upstream", 0, []envoyclient.Descriptor{d("generic_key", "free")}, "null"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := f.call(t, tt.hitsAddend, tt.give...)
			if got := asJSON(t, o.Response.DynamicMetadata); got != tt.want {
				t.Fatalf("dynamic_metadata\n got %s\nwant %s", got, tt.want)
			}
			if o.DynamicMetadata != nil && asJSON(t, o.DynamicMetadata) != tt.want {
				t.Fatal("Envoy's view of the metadata differs from the response's")
			}
		})
	}
}

// A descriptor over its limit did not pass: its metadata is left out.
func TestOverDescriptorsMetadataIsLeftOut(t *testing.T) {
	f := start(t, newContract().factory, metadataYAML)
	once, a := d("generic_key", "once"), d("generic_key", "a")
	if got := asJSON(t, f.call(t, 0, once, a).Response.DynamicMetadata.GetFields()["metadata"].GetStructValue()); got != `{"once":true,"route":{"cluster":"a","weight":1},"tags":["x","y"],"tier":"gold"}` {
		t.Fatalf("first request: %s", got)
	}
	o := f.call(t, 0, once, a)
	if !o.Limited || statusCodes(o) != "OVER_LIMIT,OK" {
		t.Fatalf("second request: %s", statusCodes(o))
	}
	if got := asJSON(t, o.Response.DynamicMetadata.GetFields()["metadata"].GetStructValue()); got != `{"route":{"cluster":"a","weight":1},"tags":["x","y"],"tier":"gold"}` {
		t.Fatalf("second request: %s, want a's metadata alone", got)
	}
}

// With ratelimit.response_dynamic_metadata, every response has the shape
// (upstream's RESPONSE_DYNAMIC_METADATA), an override written as
// upstream writes it.
func TestResponseDynamicMetadataSwitchAlwaysReturnsTheRequest(t *testing.T) {
	f := start(t, newContract().factory, metadataYAML+"  response_dynamic_metadata: true\n")
	over := d("generic_key", "plain")
	over.Limit = &rlv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit_MINUTE}
	want := `{"descriptors":[{"entries":["generic_key=plain"],"limit":"requests_per_unit:5 unit:MINUTE"},{"entries":["k=v","k2="]}],"domain":"api"}`
	if got := asJSON(t, f.call(t, 0, over, d("k", "v", "k2", "")).Response.DynamicMetadata); got != want {
		t.Fatalf("\n got %s\nwant %s", got, want)
	}
	if got := asJSON(t, f.call(t, 0, d("unknown", "x")).Response.DynamicMetadata); got != `{"descriptors":[{"entries":["unknown=x"]}],"domain":"api"}` {
		t.Fatalf("no descriptor decided: %s", got)
	}
}

// levy's own codec writes every response without metadata itself; those
// with it go to protobuf (and come out the same).
func TestResponsesWithoutMetadataKeepTheFastEncoder(t *testing.T) {
	f := start(t, newContract().factory, metadataYAML)
	plain := f.call(t, 0, d("generic_key", "plain"), d("remote_address", "10.0.0.1")).Response
	if _, ok := rls.Encode(plain); !ok {
		t.Fatal("a response without metadata went to protobuf")
	}
	if withMeta := f.call(t, 0, d("generic_key", "a")).Response; withMeta.DynamicMetadata == nil {
		t.Fatal("no metadata")
	}
}
