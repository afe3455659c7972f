package deploy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	rlfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// Names levy's configs must agree on.
const (
	levyDomain        = "levy"                         // ratelimit filter domain
	levyLogName       = "levy"                         // ALS log_name
	extAuthzNamespace = "envoy.filters.http.ext_authz" // dynamic metadata namespace of ext_authz
	consumerKey       = "consumer"                     // metadata key and descriptor key
	http2OptionsKey   = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// sensitiveHeaders carry credentials: no access log may record them.
var sensitiveHeaders = []string{"x-api-key", "authorization", "proxy-authorization", "cookie"}

// validateEnvoyFile decodes one Envoy bootstrap file and checks it; the error lists every
// problem found.
func validateEnvoyFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	b, err := loadBootstrap(data)
	if err != nil {
		return err
	}
	return checkBootstrap(b)
}

// loadBootstrap decodes YAML into a v3 Bootstrap: unknown fields, unknown enum values and
// unresolvable typed_config types are errors, and every message, including the ones
// packed in Any fields, passes its protoc-gen-validate rules.
func loadBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("decode Bootstrap: %w", err)
	}
	if err := validateDeep(b); err != nil {
		return nil, err
	}
	return b, nil
}

// decodeProtoJSON decodes JSON into m, rejecting unknown fields, and validates it deeply.
func decodeProtoJSON(js []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, m); err != nil {
		return fmt.Errorf("decode %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	return validateDeep(m)
}

type validator interface{ ValidateAll() error }

// validateDeep runs ValidateAll on m and on the content of every Any below it.
// ValidateAll itself recurses into sub-messages but stops at an Any.
func validateDeep(m proto.Message) error {
	var errs []error
	var check func(path string, m proto.Message)
	check = func(path string, m proto.Message) {
		if v, ok := m.(validator); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", path, err))
			}
		}
		eachAny(path, m.ProtoReflect(), func(path string, a *anypb.Any) {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", path, a.GetTypeUrl(), err))
				return
			}
			check(path+"<"+string(inner.ProtoReflect().Descriptor().Name())+">", inner)
		})
	}
	check(string(m.ProtoReflect().Descriptor().Name()), m)
	return errors.Join(errs...)
}

// eachAny calls fn for every Any field below m, without looking inside the Anys.
func eachAny(path string, m protoreflect.Message, fn func(path string, a *anypb.Any)) {
	visit := func(path string, v protoreflect.Message) {
		if a, ok := v.Interface().(*anypb.Any); ok {
			fn(path, a)
			return
		}
		eachAny(path, v, fn)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(fmt.Sprintf("%s[%s]", name, k.String()), mv.Message())
				return true
			})
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			for i := range v.List().Len() {
				visit(fmt.Sprintf("%s[%d]", name, i), v.List().Get(i).Message())
			}
		case fd.Message() != nil:
			visit(name, v.Message())
		}
		return true
	})
}

// visitAll calls fn for m and every message below it, including the content of Anys.
func visitAll(m proto.Message, fn func(proto.Message)) {
	fn(m)
	eachMessage(m.ProtoReflect(), func(v protoreflect.Message) {
		if a, ok := v.Interface().(*anypb.Any); ok {
			if inner, err := a.UnmarshalNew(); err == nil {
				visitAll(inner, fn)
			}
			return
		}
		visitAll(v.Interface(), fn)
	})
}

// eachMessage calls fn for every direct sub-message of m.
func eachMessage(m protoreflect.Message, fn func(protoreflect.Message)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					fn(mv.Message())
					return true
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := range v.List().Len() {
					fn(v.List().Get(i).Message())
				}
			}
		case fd.Message() != nil:
			fn(v.Message())
		}
		return true
	})
}

// collect returns every message of type T below m, including inside Anys.
func collect[T proto.Message](m proto.Message) []T {
	var out []T
	visitAll(m, func(v proto.Message) {
		if t, ok := v.(T); ok {
			out = append(out, t)
		}
	})
	return out
}

// problems gathers the findings of a check.
type problems []error

func (p *problems) addf(format string, args ...any) { *p = append(*p, fmt.Errorf(format, args...)) }
func (p *problems) add(errs ...error) {
	for _, err := range errs {
		if err != nil {
			*p = append(*p, err)
		}
	}
}
func (p problems) err() error { return errors.Join(p...) }

// checkBootstrap asserts the properties platform teams rely on.
func checkBootstrap(b *bootstrapv3.Bootstrap) error {
	var p problems

	if addr := b.GetAdmin().GetAddress().GetSocketAddress().GetAddress(); addr != "" {
		if ip := net.ParseIP(addr); ip == nil || !ip.IsLoopback() {
			p.addf("admin: listens on %q; bind it to 127.0.0.1, it can change Envoy's state", addr)
		}
	}

	hcms := collect[*hcmv3.HttpConnectionManager](b)
	if len(hcms) == 0 {
		p.addf("no http_connection_manager: nothing sends requests to levy")
	}
	for i, hcm := range hcms {
		p.add(checkFilterOrder(fmt.Sprintf("http_connection_manager %d (%s)", i, hcm.GetStatPrefix()), hcm.GetHttpFilters()))
		if !hcm.GetNormalizePath().GetValue() || !hcm.GetMergeSlashes() {
			p.addf("http_connection_manager %d (%s): set normalize_path and merge_slashes, or //v1/x dodges a /v1/x route cost", i, hcm.GetStatPrefix())
		}
	}
	for _, ea := range collect[*extauthzv3.ExtAuthz](b) {
		p.add(checkExtAuthz(ea)...)
	}
	for _, rl := range collect[*rlfilterv3.RateLimit](b) {
		p.add(checkRateLimitFilter(rl)...)
	}
	p.add(checkAccessLogs(b)...)
	p.add(checkRateLimits(b)...)

	// Every cluster named anywhere exists; the gRPC ones speak HTTP/2.
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	checked := map[string]bool{}
	for _, g := range collect[*corev3.GrpcService_EnvoyGrpc](b) {
		if checked[g.GetClusterName()] {
			continue
		}
		checked[g.GetClusterName()] = true
		c, ok := clusters[g.GetClusterName()]
		if !ok {
			p.addf("gRPC service cluster %q is not defined in static_resources.clusters", g.GetClusterName())
			continue
		}
		if !speaksHTTP2(c) {
			p.addf("cluster %q serves gRPC but is not HTTP/2: add typed_extension_protocol_options %s with explicit_http_config.http2_protocol_options", c.GetName(), http2OptionsKey)
		}
	}
	for _, ra := range collect[*routev3.RouteAction](b) {
		names := []string{ra.GetCluster()}
		for _, wc := range ra.GetWeightedClusters().GetClusters() {
			names = append(names, wc.GetName())
		}
		for _, n := range names {
			if _, ok := clusters[n]; n != "" && !ok {
				p.addf("route cluster %q is not defined in static_resources.clusters", n)
			}
		}
	}
	return p.err()
}

// checkFilterOrder asserts ext_authz -> ratelimit -> router, router last: the ratelimit
// filter reads the metadata ext_authz produces, and filters after the router never run.
func checkFilterOrder(where string, filters []*hcmv3.HttpFilter) error {
	idx := map[string]int{}
	for i, f := range filters {
		if f.GetTypedConfig() == nil {
			continue
		}
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: http filter %q: %w", where, f.GetName(), err)
		}
		switch m.(type) {
		case *extauthzv3.ExtAuthz:
			idx["ext_authz"] = i
		case *rlfilterv3.RateLimit:
			idx["ratelimit"] = i
		case *routerv3.Router:
			idx["router"] = i
		}
	}
	var p problems
	for _, name := range []string{"ext_authz", "ratelimit", "router"} {
		if _, ok := idx[name]; !ok {
			p.addf("%s: no %s filter in http_filters", where, name)
		}
	}
	if len(p) > 0 {
		return p.err()
	}
	if !(idx["ext_authz"] < idx["ratelimit"] && idx["ratelimit"] < idx["router"]) {
		p.addf("%s: http_filters must run ext_authz, then ratelimit, then router; got ext_authz at %d, ratelimit at %d, router at %d",
			where, idx["ext_authz"], idx["ratelimit"], idx["router"])
	}
	if idx["router"] != len(filters)-1 {
		p.addf("%s: the router must be the last http filter", where)
	}
	return p.err()
}

// checkExtAuthz asserts ext_authz fails closed with 503 and talks gRPC to levy.
func checkExtAuthz(ea *extauthzv3.ExtAuthz) []error {
	var p problems
	if ea.GetFailureModeAllow() {
		p.addf("ext_authz: failure_mode_allow is true: when levy is unreachable every request goes through unauthenticated and unmetered")
	}
	if got := ea.GetStatusOnError().GetCode(); got != typev3.StatusCode_ServiceUnavailable {
		p.addf("ext_authz: status_on_error is %v, want ServiceUnavailable (503)", got)
	}
	if ea.GetGrpcService().GetEnvoyGrpc() == nil {
		p.addf("ext_authz: want grpc_service.envoy_grpc (levy serves ext_authz over gRPC)")
	}
	if ea.GetGrpcService().GetTimeout() == nil {
		p.addf("ext_authz: set grpc_service.timeout explicitly")
	}
	return p
}

// checkRateLimitFilter asserts the ratelimit filter asks levy about domain levy.
func checkRateLimitFilter(rl *rlfilterv3.RateLimit) []error {
	var p problems
	if rl.GetDomain() != levyDomain {
		p.addf("ratelimit filter: domain is %q, want %q (levy's rate-limit rules use it)", rl.GetDomain(), levyDomain)
	}
	rls := rl.GetRateLimitService()
	if rls.GetGrpcService() == nil {
		p.addf("ratelimit filter: no rate_limit_service.grpc_service: Envoy never calls levy")
	}
	if rls.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		p.addf("ratelimit filter: rate_limit_service.transport_api_version is %v, want V3", rls.GetTransportApiVersion())
	}
	// levy's RateLimitService leaves X-RateLimit-* to the filter, which
	// makes them from the statuses levy returns.
	if rl.GetEnableXRatelimitHeaders() != rlfilterv3.RateLimit_DRAFT_VERSION_03 {
		p.addf("ratelimit filter: enable_x_ratelimit_headers is %v, want DRAFT_VERSION_03 (clients get X-RateLimit-* from it)", rl.GetEnableXRatelimitHeaders())
	}
	return p
}

// checkAccessLogs asserts every access logger keeps credentials out of the log, and that
// the gRPC logger to levy uses log_name levy.
func checkAccessLogs(m proto.Message) []error {
	var p problems
	for _, al := range collect[*grpcalsv3.HttpGrpcAccessLogConfig](m) {
		if got := al.GetCommonConfig().GetLogName(); got != levyLogName {
			p.addf("http_grpc access log: log_name is %q, want %q", got, levyLogName)
		}
		p.add(checkLoggedHeaders("http_grpc access log", al.GetAdditionalRequestHeadersToLog(),
			al.GetAdditionalResponseHeadersToLog(), al.GetAdditionalResponseTrailersToLog())...)
	}
	// Any other logger (file, stdout, OpenTelemetry): its config must not mention a
	// credential header at all, e.g. in a %REQ(x-api-key)% format.
	for _, al := range collect[*accesslogv3.AccessLog](m) {
		js, err := protojson.Marshal(al)
		if err != nil {
			p.add(err)
			continue
		}
		text := strings.ToLower(string(js))
		for _, h := range sensitiveHeaders {
			if strings.Contains(text, h) {
				p.addf("access log %q mentions %q: credentials must never be logged", al.GetName(), h)
			}
		}
	}
	return p
}

// checkLoggedHeaders rejects credential headers in access-log header lists.
func checkLoggedHeaders(where string, lists ...[]string) []error {
	var p problems
	for _, list := range lists {
		for _, h := range list {
			if slices.Contains(sensitiveHeaders, strings.ToLower(h)) {
				p.addf("%s: logs header %q: credentials must never be logged", where, h)
			}
		}
	}
	return p
}

// checkRateLimits asserts that route rate_limits cannot be bypassed and that one of them
// is plan-aware: it produces the ("consumer", <ext_authz metadata consumer>) entry.
func checkRateLimits(m proto.Message) []error {
	var p problems
	planAware := false
	for _, rl := range collect[*routev3.RateLimit](m) {
		for _, a := range rl.GetActions() {
			switch {
			case a.GetMetadata() != nil:
				md := a.GetMetadata()
				key := md.GetMetadataKey()
				if md.GetDefaultValue() == "" {
					p.addf("rate_limits: metadata action %q (%s) has no default_value: a request without that metadata skips the limit (quota bypass)",
						md.GetDescriptorKey(), metadataPath(key))
				}
				if md.GetDescriptorKey() == consumerKey && key.GetKey() == extAuthzNamespace &&
					metadataPath(key) == extAuthzNamespace+":"+consumerKey && md.GetSource() == routev3.RateLimit_Action_MetaData_DYNAMIC {
					planAware = true
				}
			case a.GetDynamicMetadata() != nil:
				p.addf("rate_limits: dynamic_metadata action %q is deprecated and has no skip_if_absent: use metadata with default_value", a.GetDynamicMetadata().GetDescriptorKey())
			case a.GetRequestHeaders() != nil && !a.GetRequestHeaders().GetSkipIfAbsent():
				p.addf("rate_limits: request_headers action %q without skip_if_absent: a client that omits %q skips the whole limit",
					a.GetRequestHeaders().GetDescriptorKey(), a.GetRequestHeaders().GetHeaderName())
			case a.GetQueryParameters() != nil && !a.GetQueryParameters().GetSkipIfAbsent():
				p.addf("rate_limits: query_parameters action %q without skip_if_absent: a client that omits %q skips the whole limit",
					a.GetQueryParameters().GetDescriptorKey(), a.GetQueryParameters().GetQueryParameterName())
			}
		}
	}
	if !planAware {
		p.addf("rate_limits: no entry produces the plan-aware descriptor (%q from %s:%s dynamic metadata)", consumerKey, extAuthzNamespace, consumerKey)
	}
	return p
}

// metadataPath renders a metadata key as namespace:key:key.
func metadataPath(k *metadatav3.MetadataKey) string {
	parts := []string{k.GetKey()}
	for _, s := range k.GetPath() {
		parts = append(parts, s.GetKey())
	}
	return strings.Join(parts, ":")
}

// speaksHTTP2 reports whether Envoy uses HTTP/2 to the cluster, as gRPC requires.
func speaksHTTP2(c *clusterv3.Cluster) bool {
	if c.GetHttp2ProtocolOptions() != nil { // deprecated, but Envoy still honours it
		return true
	}
	a, ok := c.GetTypedExtensionProtocolOptions()[http2OptionsKey]
	if !ok {
		return false
	}
	opts := &upstreamhttpv3.HttpProtocolOptions{}
	if err := a.UnmarshalTo(opts); err != nil {
		return false
	}
	return opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}
