package envoyclient

import (
	"errors"
	"reflect"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rlfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"
)

// rateLimit decodes one rate_limits entry written in Envoy's YAML.
func rateLimit(t *testing.T, text string) *routev3.RateLimit {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	rl := &routev3.RateLimit{}
	if err := protojson.Unmarshal(js, rl); err != nil {
		t.Fatal(err)
	}
	if err := rl.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	return rl
}

func TestRateLimitDescriptorDropsWhatAnActionCannotProduce(t *testing.T) {
	md, err := structpb.NewStruct(map[string]any{"consumer": "acme", "num": 3.0, "nested": map[string]any{"plan": "pro"},
		"override": map[string]any{"requests_per_unit": 7.0, "unit": "MINUTE"}})
	if err != nil {
		t.Fatal(err)
	}
	in := &RateLimitInput{
		Headers:             Headers{{":path", "/items?a=1"}, {"x-tenant", "t1"}, {"x-multi", "a"}, {"x-multi", "b"}},
		RemoteAddress:       "192.0.2.17",
		LocalServiceCluster: "front",
		RouteCluster:        "app",
		DynamicMetadata:     &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{ExtAuthzNamespace: md}},
	}
	meta := func(path, extra string) string {
		return "actions: [{metadata: {descriptor_key: k, metadata_key: {key: " + ExtAuthzNamespace + ", path: [" + path + "]}" + extra + "}}]"
	}
	tests := []struct {
		name   string
		give   string
		in     *RateLimitInput
		want   [][2]string // nil: no descriptor
		wantOv bool
	}{
		{"generic_key default key", "actions: [{generic_key: {descriptor_value: v}}]", in, [][2]string{{"generic_key", "v"}}, false},
		{"remote_address", "actions: [{remote_address: {}}]", in, [][2]string{{"remote_address", "192.0.2.17"}}, false},
		{"remote_address not an IP", "actions: [{remote_address: {}}]", &RateLimitInput{}, nil, false},
		{"masked_remote_address", "actions: [{masked_remote_address: {v4_prefix_mask_len: 24}}]", in, [][2]string{{"masked_remote_address", "192.0.2.0/24"}}, false},
		{"source and destination cluster", "actions: [{source_cluster: {}}, {destination_cluster: {}}]", in, [][2]string{{"source_cluster", "front"}, {"destination_cluster", "app"}}, false},
		{"destination_cluster without a route entry", "actions: [{destination_cluster: {}}]", &RateLimitInput{}, nil, false},
		{"request_headers first value", "actions: [{request_headers: {header_name: x-multi, descriptor_key: m}}]", in, [][2]string{{"m", "a"}}, false},
		{"request_headers missing drops", "actions: [{generic_key: {descriptor_value: v}}, {request_headers: {header_name: x-none, descriptor_key: nothing}}]", in, nil, false},
		{"request_headers missing skipped", "actions: [{generic_key: {descriptor_value: v}}, {request_headers: {header_name: x-none, descriptor_key: nothing, skip_if_absent: true}}]", in, [][2]string{{"generic_key", "v"}}, false},
		{"metadata string", meta("{key: consumer}", ""), in, [][2]string{{"k", "acme"}}, false},
		{"metadata nested", meta("{key: nested}, {key: plan}", ""), in, [][2]string{{"k", "pro"}}, false},
		{"metadata not a string drops", meta("{key: num}", ""), in, nil, false},
		{"metadata absent drops", meta("{key: nope}", ""), in, nil, false},
		{"metadata absent takes default", meta("{key: nope}", ", default_value: anonymous"), in, [][2]string{{"k", "anonymous"}}, false},
		{"metadata absent skipped", "actions: [{generic_key: {descriptor_value: v}}, " + meta("{key: nope}", ", skip_if_absent: true")[10:], in, [][2]string{{"generic_key", "v"}}, false},
		{"only skipped entries: no descriptor", meta("{key: nope}", ", skip_if_absent: true"), in, nil, false},
		{"header_value_match", "actions: [{header_value_match: {descriptor_value: t, headers: [{name: x-tenant, string_match: {exact: t1}}]}}]", in, [][2]string{{"header_match", "t"}}, false},
		{"header_value_match joined values", "actions: [{header_value_match: {descriptor_value: t, headers: [{name: x-multi, string_match: {exact: 'a,b'}}]}}]", in, [][2]string{{"header_match", "t"}}, false},
		{"header_value_match no match drops", "actions: [{header_value_match: {descriptor_value: t, headers: [{name: x-tenant, prefix_match: t2}]}}]", in, nil, false},
		{"header_value_match expect_match false", "actions: [{header_value_match: {descriptor_value: t, expect_match: false, headers: [{name: x-none, present_match: true}]}}]", in, [][2]string{{"header_match", "t"}}, false},
		{"query_parameters", "actions: [{query_parameters: {query_parameter_name: a, descriptor_key: q}}]", in, [][2]string{{"q", "1"}}, false},
		{"query_parameters missing drops", "actions: [{query_parameters: {query_parameter_name: b, descriptor_key: q}}]", in, nil, false},
		{"query_parameter_value_match", "actions: [{query_parameter_value_match: {descriptor_value: qm, query_parameters: [{name: a, string_match: {exact: '1'}}]}}]", in, [][2]string{{"query_match", "qm"}}, false},
		{"query_parameter_value_match absent drops", "actions: [{query_parameter_value_match: {descriptor_value: qm, query_parameters: [{name: b, present_match: true}]}}]", in, nil, false},
		{"override from metadata", "actions: [{generic_key: {descriptor_value: v}}]\nlimit: {dynamic_metadata: {metadata_key: {key: " + ExtAuthzNamespace + ", path: [{key: override}]}}}", in, [][2]string{{"generic_key", "v"}}, true},
		{"override absent", "actions: [{generic_key: {descriptor_value: v}}]\nlimit: {dynamic_metadata: {metadata_key: {key: " + ExtAuthzNamespace + ", path: [{key: nope}]}}}", in, [][2]string{{"generic_key", "v"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, ok, err := RateLimitDescriptor(rateLimit(t, tt.give), tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if ok != (tt.want != nil) || !reflect.DeepEqual(d.Entries, tt.want) {
				t.Errorf("got %v (ok %v), want %v", d.Entries, ok, tt.want)
			}
			if (d.Limit != nil) != tt.wantOv {
				t.Errorf("limit override %v, want one: %v", d.Limit, tt.wantOv)
			}
		})
	}
}

func TestRateLimitOverrideIsReadAsEnvoyReadsIt(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{"rl": map[string]any{"requests_per_unit": 7.0, "unit": "MINUTE"}})
	in := &RateLimitInput{DynamicMetadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{ExtAuthzNamespace: md}}}
	d, ok, err := RateLimitDescriptor(rateLimit(t, "actions: [{generic_key: {descriptor_value: v}}]\nlimit: {dynamic_metadata: {metadata_key: {key: "+ExtAuthzNamespace+", path: [{key: rl}]}}}"), in)
	if err != nil || !ok {
		t.Fatalf("ok %v, err %v", ok, err)
	}
	if d.Limit.GetRequestsPerUnit() != 7 || d.Limit.GetUnit() != typev3.RateLimitUnit_MINUTE {
		t.Errorf("limit = %v, want 7 a MINUTE", d.Limit)
	}
}

func TestRateLimitDescriptorRefusesWhatItDoesNotModel(t *testing.T) {
	for _, give := range []string{
		"actions: [{generic_key: {descriptor_value: '%REQ(x-a)%'}}]",
		"actions: [{query_parameter_value_match: {descriptor_value: q, default_value: d, query_parameters: [{name: a, present_match: true}]}}]",
	} {
		if _, _, err := RateLimitDescriptor(rateLimit(t, give), &RateLimitInput{}); !errors.Is(err, ErrNotModelled) {
			t.Errorf("%s: err = %v, want ErrNotModelled", give, err)
		}
	}
}

func TestApplicableRateLimitsPicksAsTheFilterDoes(t *testing.T) {
	entry := func(v string) *routev3.RateLimit {
		return &routev3.RateLimit{Actions: []*routev3.RateLimit_Action{{ActionSpecifier: &routev3.RateLimit_Action_GenericKey_{
			GenericKey: &routev3.RateLimit_Action_GenericKey{DescriptorValue: v}}}}}
	}
	perRoute := func(pr *rlfilterv3.RateLimitPerRoute) map[string]*anypb.Any {
		a, err := anypb.New(pr)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]*anypb.Any{RateLimitFilterName: a}
	}
	vh := &routev3.VirtualHost{RateLimits: []*routev3.RateLimit{entry("vh")}}
	route := func(rls ...*routev3.RateLimit) *routev3.Route {
		return &routev3.Route{Action: &routev3.Route_Route{Route: &routev3.RouteAction{RateLimits: rls}}}
	}
	tests := []struct {
		name       string
		give       RateLimitRoute
		want       []string
		wantDomain string
	}{
		{"route entries override the virtual host's", RateLimitRoute{VirtualHost: vh, Route: route(entry("r"))}, []string{"r"}, "d"},
		{"virtual host's when the route has none", RateLimitRoute{VirtualHost: vh, Route: route()}, []string{"vh"}, "d"},
		{"include_vh_rate_limits", RateLimitRoute{VirtualHost: vh, Route: func() *routev3.Route {
			r := route(entry("r"))
			r.GetRoute().IncludeVhRateLimits = wrapperspb.Bool(true)
			return r
		}()}, []string{"r", "vh"}, "d"},
		{"per-route rate_limits win", RateLimitRoute{VirtualHost: vh, Route: func() *routev3.Route {
			r := route(entry("r"))
			r.TypedPerFilterConfig = perRoute(&rlfilterv3.RateLimitPerRoute{RateLimits: []*routev3.RateLimit{entry("per")}, Domain: "other"})
			return r
		}()}, []string{"per"}, "other"},
		{"per-route IGNORE", RateLimitRoute{VirtualHost: vh, Route: func() *routev3.Route {
			r := route()
			r.TypedPerFilterConfig = perRoute(&rlfilterv3.RateLimitPerRoute{VhRateLimits: rlfilterv3.RateLimitPerRoute_IGNORE})
			return r
		}()}, nil, "d"},
		{"disable_key skipped", RateLimitRoute{VirtualHost: vh, Route: route(&routev3.RateLimit{DisableKey: "x", Actions: entry("x").Actions})}, nil, "d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.give.Filter = &rlfilterv3.RateLimit{Domain: "d"}
			got, domain, err := ApplicableRateLimits(tt.give)
			if err != nil {
				t.Fatal(err)
			}
			var values []string
			for _, e := range got {
				values = append(values, e.Entry.GetActions()[0].GetGenericKey().GetDescriptorValue())
			}
			if !reflect.DeepEqual(values, tt.want) || domain != tt.wantDomain {
				t.Errorf("got %v in %q, want %v in %q", values, domain, tt.want, tt.wantDomain)
			}
		})
	}
}
