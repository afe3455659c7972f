package envoyclient

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3common "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// RateLimitFilterName is the ratelimit filter's name, the key of its typed_per_filter_config.
const RateLimitFilterName = "envoy.filters.http.ratelimit"

// ErrNotModelled is returned for a rate_limits action or option this package does not build
// as Envoy would: a caller fails loudly instead of testing something Envoy never sends.
var ErrNotModelled = errors.New("not modelled")

// RateLimitInput is what the actions of a route's rate_limits read of a request, as Envoy holds
// it when the ratelimit filter runs (after ext_authz).
type RateLimitInput struct {
	// Headers are the request headers the ratelimit filter sees, pseudo-headers included: after
	// ext_authz changed them ([Outcome].UpstreamHeaders).
	Headers Headers
	// RemoteAddress is the downstream remote address (the client, or the trusted X-Forwarded-For
	// address with use_remote_address), an IP without port; "" when it is not an IP (a pipe).
	RemoteAddress string
	// LocalServiceCluster is Envoy's --service-cluster (the source_cluster action).
	LocalServiceCluster string
	// RouteCluster is the cluster the route sends to (the destination_cluster action); "" when the
	// route has no route entry.
	RouteCluster string
	// DynamicMetadata is the stream's dynamic metadata: ext_authz's under [ExtAuthzNamespace].
	DynamicMetadata *corev3.Metadata
	// RouteMetadata is the route's metadata (metadata actions with source ROUTE_ENTRY).
	RouteMetadata *corev3.Metadata
}

// RateLimitRoute is where a request went, with the config the ratelimit filter reads there.
type RateLimitRoute struct {
	VirtualHost *routev3.VirtualHost
	Route       *routev3.Route
	// Filter is the ratelimit filter's own config (its stage and filter-level rate_limits).
	Filter *rlfilterv3.RateLimit
}

// RateLimitSource says where an applicable rate_limits entry is declared.
type RateLimitSource int

// Where rate_limits entries are declared.
const (
	FromRoute                      RateLimitSource = iota // the route action's rate_limits
	FromVirtualHost                                       // the virtual host's rate_limits
	FromFilter                                            // the ratelimit filter's own rate_limits
	FromRoutePerFilterConfig                              // the route's typed_per_filter_config RateLimitPerRoute
	FromVirtualHostPerFilterConfig                        // the virtual host's typed_per_filter_config RateLimitPerRoute
)

// AppliedRateLimit is one entry the ratelimit filter evaluates: the entry, where it is
// declared, and its index in that rate_limits list.
type AppliedRateLimit struct {
	Entry  *routev3.RateLimit
	Source RateLimitSource
	Index  int
}

// ApplicableRateLimits returns the rate_limits entries the ratelimit filter evaluates for a
// request on r, in order, and the domain it sends them to, as ratelimit.cc's
// populateRateLimitDescriptors picks them: a RateLimitPerRoute with rate_limits (the route's,
// else the virtual host's) wins; then the filter's own rate_limits; else the route's entries and
// the virtual host's per vh_rate_limits (OVERRIDE by default: only when the route has none;
// include_vh_rate_limits means INCLUDE). Only entries of the filter's stage apply, and entries
// with a disable_key are skipped.
func ApplicableRateLimits(r RateLimitRoute) ([]AppliedRateLimit, string, error) {
	domain := r.Filter.GetDomain()
	perRoute, perRouteSource, err := mostSpecificPerRoute(r)
	if err != nil {
		return nil, "", err
	}
	if perRoute.GetDomain() != "" {
		domain = perRoute.GetDomain()
	}
	var entries []AppliedRateLimit
	add := func(src RateLimitSource, list []*routev3.RateLimit) {
		for i, e := range list {
			entries = append(entries, AppliedRateLimit{Entry: e, Source: src, Index: i})
		}
	}
	switch {
	case len(perRoute.GetRateLimits()) > 0:
		add(perRouteSource, perRoute.GetRateLimits())
	case len(r.Filter.GetRateLimits()) > 0:
		add(FromFilter, r.Filter.GetRateLimits())
	default:
		routeEntries := r.Route.GetRoute().GetRateLimits()
		vh := rlfilterv3.RateLimitPerRoute_OVERRIDE
		if perRoute != nil {
			vh = perRoute.GetVhRateLimits()
		}
		if r.Route.GetRoute().GetIncludeVhRateLimits().GetValue() {
			vh = rlfilterv3.RateLimitPerRoute_INCLUDE
		}
		add(FromRoute, routeEntries)
		switch {
		case vh == rlfilterv3.RateLimitPerRoute_INCLUDE,
			vh == rlfilterv3.RateLimitPerRoute_OVERRIDE && len(routeEntries) == 0:
			add(FromVirtualHost, r.VirtualHost.GetRateLimits())
		}
	}
	stage := r.Filter.GetStage()
	var out []AppliedRateLimit
	for _, e := range entries {
		if e.Entry.GetStage().GetValue() == stage && e.Entry.GetDisableKey() == "" {
			out = append(out, e)
		}
	}
	return out, domain, nil
}

// mostSpecificPerRoute is the ratelimit filter's typed_per_filter_config on the route, else on
// the virtual host (nil without one), and which of the two it is.
func mostSpecificPerRoute(r RateLimitRoute) (*rlfilterv3.RateLimitPerRoute, RateLimitSource, error) {
	for _, c := range []struct {
		cfgs map[string]*anypb.Any
		src  RateLimitSource
	}{{r.Route.GetTypedPerFilterConfig(), FromRoutePerFilterConfig}, {r.VirtualHost.GetTypedPerFilterConfig(), FromVirtualHostPerFilterConfig}} {
		a, ok := c.cfgs[RateLimitFilterName]
		if !ok {
			continue
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, 0, fmt.Errorf("typed_per_filter_config[%s]: %w", RateLimitFilterName, err)
		}
		pr, ok := m.(*rlfilterv3.RateLimitPerRoute)
		if !ok {
			return nil, 0, fmt.Errorf("typed_per_filter_config[%s] is %T: %w", RateLimitFilterName, m, ErrNotModelled)
		}
		return pr, c.src, nil
	}
	return nil, 0, nil
}

// RateLimitDescriptors builds the descriptors of entries in order, as the filter does: an entry
// that produces none is left out.
func RateLimitDescriptors(entries []*routev3.RateLimit, in *RateLimitInput) ([]Descriptor, error) {
	var out []Descriptor
	for i, e := range entries {
		d, ok, err := RateLimitDescriptor(e, in)
		if err != nil {
			return nil, fmt.Errorf("rate_limits[%d]: %w", i, err)
		}
		if ok {
			out = append(out, d)
		}
	}
	return out, nil
}

// RateLimitDescriptor builds one rate_limits entry's descriptor as router_ratelimit.cc does.
// Each action appends its entry; an action that cannot (a missing header without
// skip_if_absent, metadata that is absent or not a string without default_value, an address
// that is not an IP, a header_value_match that does not match) drops the whole descriptor, and
// ok is false. skip_if_absent leaves the action's entry out and goes on. A descriptor that ends
// with no entries is not sent either. A limit override is read from the dynamic metadata: a
// struct {requests_per_unit: <number>, unit: "<RateLimitUnit>"}, ignored if malformed.
func RateLimitDescriptor(rl *routev3.RateLimit, in *RateLimitInput) (d Descriptor, ok bool, err error) {
	if in == nil {
		in = &RateLimitInput{}
	}
	produced := true
	for i, a := range rl.GetActions() {
		key, value, produces, err := actionEntry(a, in)
		if err != nil {
			return Descriptor{}, false, fmt.Errorf("actions[%d]: %w", i, err)
		}
		if !produces {
			produced = false
			break
		}
		if key != "" {
			d.Entries = append(d.Entries, [2]string{key, value})
		}
	}
	if n := rl.GetHitsAddend(); n != nil {
		if n.GetFormat() != "" {
			return Descriptor{}, false, fmt.Errorf("hits_addend.format %q: %w", n.GetFormat(), ErrNotModelled)
		}
		v := n.GetNumber().GetValue()
		d.HitsAddend = &v
	}
	if ov := rl.GetLimit().GetDynamicMetadata(); ov != nil {
		d.Limit = limitOverride(metadataValue(in.DynamicMetadata, ov.GetMetadataKey()))
	}
	if !produced || len(d.Entries) == 0 {
		return Descriptor{}, false, nil
	}
	return d, true, nil
}

// actionEntry is one action's entry. produces false drops the descriptor; an empty key with
// produces true (skip_if_absent) adds nothing.
func actionEntry(a *routev3.RateLimit_Action, in *RateLimitInput) (key, value string, produces bool, err error) {
	switch {
	case a.GetSourceCluster() != nil:
		return "source_cluster", in.LocalServiceCluster, true, nil
	case a.GetDestinationCluster() != nil:
		if in.RouteCluster == "" {
			return "", "", false, nil
		}
		return "destination_cluster", in.RouteCluster, true, nil
	case a.GetRequestHeaders() != nil:
		h := a.GetRequestHeaders()
		vs := in.Headers.Values(h.GetHeaderName())
		if len(vs) == 0 {
			return "", "", h.GetSkipIfAbsent(), nil
		}
		return h.GetDescriptorKey(), vs[0], true, nil // the first value only (envoy#13454)
	case a.GetRemoteAddress() != nil:
		ip, err := netip.ParseAddr(in.RemoteAddress)
		if err != nil {
			return "", "", false, nil
		}
		return "remote_address", ip.String(), true, nil
	case a.GetMaskedRemoteAddress() != nil:
		m := a.GetMaskedRemoteAddress()
		ip, err := netip.ParseAddr(in.RemoteAddress)
		if err != nil {
			return "", "", false, nil
		}
		bits := 32
		if m.GetV4PrefixMaskLen() != nil {
			bits = int(m.GetV4PrefixMaskLen().GetValue())
		}
		if ip.Is6() {
			bits = 128
			if m.GetV6PrefixMaskLen() != nil {
				bits = int(m.GetV6PrefixMaskLen().GetValue())
			}
		}
		p, err := ip.Prefix(bits)
		if err != nil {
			return "", "", false, err
		}
		return "masked_remote_address", p.String(), true, nil
	case a.GetGenericKey() != nil:
		g := a.GetGenericKey()
		if strings.Contains(g.GetDescriptorValue(), "%") {
			return "", "", false, fmt.Errorf("generic_key descriptor_value %q: formatter substitution: %w", g.GetDescriptorValue(), ErrNotModelled)
		}
		return withDefault(g.GetDescriptorKey(), "generic_key"), g.GetDescriptorValue(), true, nil
	case a.GetMetadata() != nil:
		m := a.GetMetadata()
		md := in.DynamicMetadata
		switch m.GetSource() {
		case routev3.RateLimit_Action_MetaData_DYNAMIC:
		case routev3.RateLimit_Action_MetaData_ROUTE_ENTRY:
			md = in.RouteMetadata
		default:
			return "", "", false, fmt.Errorf("metadata source %v: %w", m.GetSource(), ErrNotModelled)
		}
		return metadataEntry(m.GetDescriptorKey(), m.GetDefaultValue(), m.GetSkipIfAbsent(), metadataValue(md, m.GetMetadataKey()))
	case a.GetDynamicMetadata() != nil: // deprecated: always DYNAMIC, never skip_if_absent
		m := a.GetDynamicMetadata()
		return metadataEntry(m.GetDescriptorKey(), m.GetDefaultValue(), false, metadataValue(in.DynamicMetadata, m.GetMetadataKey()))
	case a.GetHeaderValueMatch() != nil:
		h := a.GetHeaderValueMatch()
		if h.GetDefaultValue() != "" {
			return "", "", false, fmt.Errorf("header_value_match default_value: %w", ErrNotModelled)
		}
		matched, err := matchHeaders(in.Headers, h.GetHeaders())
		if err != nil {
			return "", "", false, err
		}
		expect := h.GetExpectMatch() == nil || h.GetExpectMatch().GetValue()
		if matched != expect {
			return "", "", false, nil
		}
		return withDefault(h.GetDescriptorKey(), "header_match"), h.GetDescriptorValue(), true, nil
	case a.GetQueryParameters() != nil:
		q := a.GetQueryParameters()
		v, ok := firstQueryValue(in.Headers.Get(":path"), q.GetQueryParameterName())
		if !ok {
			return "", "", q.GetSkipIfAbsent(), nil
		}
		return q.GetDescriptorKey(), v, true, nil
	case a.GetQueryParameterValueMatch() != nil:
		q := a.GetQueryParameterValueMatch()
		if q.GetDefaultValue() != "" {
			return "", "", false, fmt.Errorf("query_parameter_value_match default_value: %w", ErrNotModelled)
		}
		matched := true
		for _, m := range q.GetQueryParameters() {
			ok, err := matchQueryParameter(in.Headers.Get(":path"), m)
			if err != nil {
				return "", "", false, err
			}
			matched = matched && ok
		}
		if matched != (q.GetExpectMatch() == nil || q.GetExpectMatch().GetValue()) {
			return "", "", false, nil
		}
		return withDefault(q.GetDescriptorKey(), "query_match"), q.GetDescriptorValue(), true, nil
	default:
		return "", "", false, fmt.Errorf("action %T: %w", a.GetActionSpecifier(), ErrNotModelled)
	}
}

// firstQueryValue is the first value of the query parameter name in path, decoded as
// Utility::QueryParamsMulti::parseAndDecodeQueryString does (a parameter without "=" has the
// value "").
func firstQueryValue(path, name string) (string, bool) {
	_, query, ok := strings.Cut(path, "?")
	if !ok {
		return "", false
	}
	query, _, _ = strings.Cut(query, "#")
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if k != name {
			continue
		}
		if dv, err := url.QueryUnescape(v); err == nil {
			v = dv
		}
		return v, true
	}
	return "", false
}

// matchQueryParameter is ConfigUtility::QueryParameterMatcher::matches: the parameter's first
// value must be present and, with a string_match, match it.
func matchQueryParameter(path string, m *routev3.QueryParameterMatcher) (bool, error) {
	v, ok := firstQueryValue(path, m.GetName())
	if !ok {
		return false, nil
	}
	if m.GetStringMatch() == nil {
		return true, nil // present_match
	}
	return matchString(m.GetStringMatch(), v)
}

// metadataEntry is MetaDataAction: a non-empty string value, else default_value, else
// skip_if_absent decides.
func metadataEntry(key, def string, skip bool, v *structpb.Value) (string, string, bool, error) {
	if s := v.GetStringValue(); s != "" {
		return key, s, true, nil
	}
	if def != "" {
		return key, def, true, nil
	}
	return "", "", skip, nil
}

// metadataValue is Config::Metadata::metadataValue: the value at key's path in the namespace
// key.Key, or nil.
func metadataValue(md *corev3.Metadata, key *metadatav3.MetadataKey) *structpb.Value {
	s := md.GetFilterMetadata()[key.GetKey()]
	if s == nil || len(key.GetPath()) == 0 {
		return nil
	}
	var v *structpb.Value
	for i, seg := range key.GetPath() {
		v = s.GetFields()[seg.GetKey()]
		if i < len(key.GetPath())-1 {
			s = v.GetStructValue()
			if s == nil {
				return nil
			}
		}
	}
	return v
}

// MetadataString is what a metadata action reads at key: the string there, or "" when it is
// absent or not a string.
func MetadataString(md *corev3.Metadata, key *metadatav3.MetadataKey) string {
	return metadataValue(md, key).GetStringValue()
}

// MetadataStruct reports whether key names a struct in md, as a limit override needs.
func MetadataStruct(md *corev3.Metadata, key *metadatav3.MetadataKey) bool {
	return metadataValue(md, key).GetStructValue() != nil
}

// limitOverride is DynamicMetadataRateLimitOverride::populateOverride.
func limitOverride(v *structpb.Value) *ratelimitv3common.RateLimitDescriptor_RateLimitOverride {
	f := v.GetStructValue().GetFields()
	rpu, ok := f["requests_per_unit"].GetKind().(*structpb.Value_NumberValue)
	if !ok {
		return nil
	}
	unitName, ok := f["unit"].GetKind().(*structpb.Value_StringValue)
	if !ok {
		return nil
	}
	unit, ok := typev3.RateLimitUnit_value[unitName.StringValue]
	if !ok {
		return nil
	}
	return &ratelimitv3common.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: uint32(rpu.NumberValue), Unit: typev3.RateLimitUnit(unit)}
}

// matchHeaders is HeaderUtility::matchHeaders: every matcher must match. A header with several
// values is matched on its values joined with ",".
func matchHeaders(h Headers, matchers []*routev3.HeaderMatcher) (bool, error) {
	for _, m := range matchers {
		ok, err := matchHeader(h, m)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func matchHeader(h Headers, m *routev3.HeaderMatcher) (bool, error) {
	value, present := h.joined(m.GetName())
	if p, ok := m.GetHeaderMatchSpecifier().(*routev3.HeaderMatcher_PresentMatch); ok {
		return (p.PresentMatch == present) != m.GetInvertMatch(), nil
	}
	if !present {
		if !m.GetTreatMissingHeaderAsEmpty() {
			return false, nil
		}
		value = ""
	}
	var ok bool
	switch s := m.GetHeaderMatchSpecifier().(type) {
	case nil:
		ok = present // no specifier: the header is present
	case *routev3.HeaderMatcher_ExactMatch:
		ok = s.ExactMatch == "" || value == s.ExactMatch
	case *routev3.HeaderMatcher_PrefixMatch:
		ok = strings.HasPrefix(value, s.PrefixMatch)
	case *routev3.HeaderMatcher_SuffixMatch:
		ok = strings.HasSuffix(value, s.SuffixMatch)
	case *routev3.HeaderMatcher_ContainsMatch:
		ok = strings.Contains(value, s.ContainsMatch)
	case *routev3.HeaderMatcher_StringMatch:
		var err error
		if ok, err = matchString(s.StringMatch, value); err != nil {
			return false, err
		}
	default:
		return false, fmt.Errorf("header matcher %T: %w", s, ErrNotModelled)
	}
	return ok != m.GetInvertMatch(), nil
}

// matchString is StringMatcherImpl for exact, prefix, suffix, contains and safe_regex (RE2,
// which Go's regexp implements, matched against the whole value).
func matchString(m *matcherv3.StringMatcher, value string) (bool, error) {
	fold := func(s string) string { return s }
	if m.GetIgnoreCase() {
		fold = strings.ToLower
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return fold(value) == fold(p.Exact), nil
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(fold(value), fold(p.Prefix)), nil
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(fold(value), fold(p.Suffix)), nil
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(fold(value), fold(p.Contains)), nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
		if err != nil {
			return false, err
		}
		return re.MatchString(value), nil
	default:
		return false, fmt.Errorf("string matcher %T: %w", p, ErrNotModelled)
	}
}
