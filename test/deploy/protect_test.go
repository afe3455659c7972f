package deploy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rlfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/server"
)

// The shipped configs protect: every rate_limits entry of envoy/*.yaml and k8s/*.yaml, as
// Envoy builds its descriptor for a representative request, meets a rule in the levy config
// shipped beside it, and levy refuses it past that limit; the ext_authz metadata the entry
// reads is metadata levy's ext_authz sets.
func TestShippedRateLimitsAreEnforcedByShippedLevyConfig(t *testing.T) {
	envoyFiles, k8sFiles, _ := deployFiles(t)
	groups := []struct {
		name   string
		config func(t *testing.T) ([]byte, string) // the levy.yaml and its name
		sites  func(t *testing.T) ([]rateLimitSite, error)
		redis  bool // the config's store is Redis
	}{
		{"envoy/ with examples/levy.yaml", examplesConfig, func(t *testing.T) ([]rateLimitSite, error) {
			return envoySites(readFiles(t, envoyFiles))
		}, false},
		{"k8s/ with the ConfigMap's levy.yaml", configMapConfig, func(t *testing.T) ([]rateLimitSite, error) {
			return istioSites(readFiles(t, k8sFiles))
		}, true},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			sites, err := g.sites(t)
			if err != nil {
				t.Fatal(err)
			}
			if len(sites) == 0 {
				t.Fatal("no rate_limits entry found: nothing would be rate limited")
			}
			text, name := g.config(t)
			for _, err := range checkProtection(t, text, name, g.redis, sites, nil) {
				t.Error(err)
			}
		})
	}
}

// A rate_limits entry whose descriptor levy has no rule for fails the check, naming the file
// and the entry, wherever it is declared; so does one that reads ext_authz metadata levy never
// sets, and one that no route sends.
func TestProtectionCheckNamesEntriesLevyDoesNotLimit(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(repoRoot, "envoy", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const anchor = "              - match: {prefix: /}\n                route:\n                  cluster: app\n                  rate_limits:\n"
	tests := []struct {
		name string
		give string // a rate_limits entry added before the catch-all route's own
		old  string // and, when set, replaced once by neu
		neu  string
		want string
	}{
		{"domain levy has no rules for", "", "domain: levy", "domain: billing",
			`envoy/envoy.yaml: virtual_hosts[api].routes[1].route.rate_limits[0]: levy has no rule for [remote_address=198.51.100.1] in domain "billing"`},
		{"no rule", "                  - actions:\n                    - generic_key: {descriptor_key: tier, descriptor_value: gold}\n", "", "",
			`envoy/envoy.yaml: virtual_hosts[api].routes[1].route.rate_limits[0]: levy has no rule for [tier=gold] in domain "levy"`},
		{"metadata levy never sets", "                  - actions:\n                    - metadata:\n                        descriptor_key: consumer\n                        metadata_key: {key: envoy.filters.http.ext_authz, path: [{key: customer}]}\n                        default_value: anonymous\n                    - generic_key: {descriptor_key: route, descriptor_value: items}\n", "", "",
			"virtual_hosts[api].routes[1].route.rate_limits[0]: reads envoy.filters.http.ext_authz:customer, which levy's ext_authz does not set"},
		{"per-route rate_limits without a rule", "", "              - match: {prefix: /}\n                route:\n",
			"              - match: {prefix: /}\n                typed_per_filter_config:\n                  envoy.filters.http.ratelimit:\n" +
				"                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute\n" +
				"                    rate_limits:\n                    - actions:\n                      - generic_key: {descriptor_key: tier, descriptor_value: gold}\n                route:\n",
			`envoy/envoy.yaml: virtual_hosts[api].routes[1].typed_per_filter_config[envoy.filters.http.ratelimit].rate_limits[0]: levy has no rule for [tier=gold] in domain "levy"`},
		{"entry the per-route rate_limits shadow", "", "              - match: {prefix: /}\n                route:\n",
			"              - match: {prefix: /}\n                typed_per_filter_config:\n                  envoy.filters.http.ratelimit:\n" +
				"                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute\n" +
				"                    rate_limits:\n                    - actions:\n                      - remote_address: {}\n                route:\n",
			"envoy/envoy.yaml: virtual_hosts[api].routes[1].route.rate_limits[0]: no route sends this entry"},
		{"override levy never sets", "                  - actions:\n                    - remote_address: {}\n                    limit: {dynamic_metadata: {metadata_key: {key: envoy.filters.http.ext_authz, path: [{key: rate_limit}]}}}\n", "", "",
			"virtual_hosts[api].routes[1].route.rate_limits[0]: limit override reads envoy.filters.http.ext_authz:rate_limit, which levy's ext_authz does not set"},
	}
	text, name := examplesConfig(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(string(orig), anchor) {
				t.Fatalf("envoy/envoy.yaml no longer has the catch-all route this test edits")
			}
			broken := strings.Replace(string(orig), anchor, anchor+tt.give, 1)
			broken = strings.Replace(broken, tt.old, tt.neu, 1)
			sites, err := envoySites(map[string][]byte{"envoy/envoy.yaml": []byte(broken)})
			errs := []error{err} // an entry no route sends
			var mine []rateLimitSite
			for _, s := range sites {
				if strings.HasPrefix(s.where, "virtual_hosts[api].routes[1].") {
					mine = append(mine, s)
				}
			}
			errs = append(errs, checkProtection(t, text, name, false, mine, []string{"free"})...)
			if !slices.ContainsFunc(errs, func(err error) bool { return err != nil && strings.Contains(err.Error(), tt.want) }) {
				t.Errorf("checkProtection() = %v, want an error containing %q", errs, tt.want)
			}
		})
	}
}

// rateLimitSite is one rate_limits entry of a shipped file and a request that takes it.
type rateLimitSite struct {
	file   string // e.g. envoy/envoy.yaml
	where  string // the entry's place in the file
	entry  *routev3.RateLimit
	domain string // the ratelimit filter's domain for the route

	authority, path string // the representative request
	cluster         string // the route's cluster
}

func (s rateLimitSite) String() string { return s.file + ": " + s.where }

// examplesConfig is examples/levy.yaml, which envoy/ is written against.
func examplesConfig(t *testing.T) ([]byte, string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "examples", "levy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return data, "examples/levy.yaml"
}

// configMapConfig is the levy.yaml of k8s/levy.yaml's ConfigMap, which k8s/istio.yaml is
// written against.
func configMapConfig(t *testing.T) ([]byte, string) {
	t.Helper()
	text, ok := levyConfigs(t)["k8s/levy.yaml"]
	if !ok {
		t.Fatal("k8s/levy.yaml has no ConfigMap with a levy.yaml key")
	}
	return text, "k8s/levy.yaml (ConfigMap levy.yaml)"
}

// envoySites lists every rate_limits entry of the Envoy bootstraps, each with the first route
// on which the ratelimit filter would send it. An entry no route sends is an error.
func envoySites(files map[string][]byte) ([]rateLimitSite, error) {
	var out []rateLimitSite
	var p problems
	for _, file := range slices.Sorted(maps.Keys(files)) {
		b, err := loadBootstrap(files[file])
		if err != nil {
			p.addf("%s: %w", file, err)
			continue
		}
		for i, hcm := range collect[*hcmv3.HttpConnectionManager](b) {
			filter, err := rateLimitFilter(hcm.GetHttpFilters())
			if err != nil {
				p.addf("%s: http_connection_manager %d: %w", file, i, err)
				continue
			}
			rc := hcm.GetRouteConfig()
			if rc == nil {
				p.addf("%s: http_connection_manager %d: only an inline route_config is covered by test/deploy", file, i)
				continue
			}
			sites, err := routeSites(file, filter, rc.GetVirtualHosts(), nil)
			if err != nil {
				p.add(err)
			}
			out = append(out, sites...)
		}
	}
	return out, p.err()
}

// istioSites lists every rate_limits entry of the EnvoyFilters' VIRTUAL_HOST patches. Istio
// makes the gateway's routes, which carry no rate_limits of their own: the request takes a
// catch-all route on the patched virtual host, with the ratelimit filter of the EnvoyFilter's
// HTTP_FILTER patch.
func istioSites(files map[string][]byte) ([]rateLimitSite, error) {
	m, err := decodeManifests(files)
	if err != nil {
		return nil, err
	}
	var out []rateLimitSite
	var p problems
	for _, ef := range m.envoyFilters {
		file := m.files[ef.spec]
		var filter *rlfilterv3.RateLimit
		for _, cp := range ef.spec.GetConfigPatches() {
			if cp.GetApplyTo() != networkingv1alpha3.EnvoyFilter_HTTP_FILTER {
				continue
			}
			f, err := patchValue(cp, &hcmv3.HttpFilter{})
			if err != nil {
				p.addf("%s: %w", file, err)
				continue
			}
			if rl, err := rateLimitFilter([]*hcmv3.HttpFilter{f}); err == nil {
				filter = rl
			}
		}
		for i, cp := range ef.spec.GetConfigPatches() {
			if cp.GetApplyTo() != networkingv1alpha3.EnvoyFilter_VIRTUAL_HOST {
				continue
			}
			where := fmt.Sprintf("EnvoyFilter %s/%s configPatches[%d]", ef.meta.Namespace, ef.meta.Name, i)
			if filter == nil {
				p.addf("%s: %s: no ratelimit filter in the same EnvoyFilter: its rate_limits are never sent", file, where)
				continue
			}
			vh, err := patchValue(cp, &routev3.VirtualHost{})
			if err != nil {
				p.addf("%s: %s: %w", file, where, err)
				continue
			}
			name := cp.GetMatch().GetRouteConfiguration().GetVhost().GetName()
			vh.Name = name
			vh.Domains = []string{strings.Split(name, ":")[0]}
			vh.Routes = []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "istio-generated"}}},
			}}
			sites, err := routeSites(file, filter, []*routev3.VirtualHost{vh}, func(s string) string { return where + " " + s })
			if err != nil {
				p.add(err)
			}
			out = append(out, sites...)
		}
	}
	return out, p.err()
}

// patchValue decodes an EnvoyFilter patch value into m.
func patchValue[T proto.Message](cp *networkingv1alpha3.EnvoyFilter_EnvoyConfigObjectPatch, m T) (T, error) {
	js, err := protojson.Marshal(cp.GetPatch().GetValue())
	if err != nil {
		return m, err
	}
	return m, protojson.Unmarshal(js, m)
}

// rateLimitFilter is the ratelimit filter's config among filters.
func rateLimitFilter(filters []*hcmv3.HttpFilter) (*rlfilterv3.RateLimit, error) {
	for _, f := range filters {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("http filter %q: %w", f.GetName(), err)
		}
		if rl, ok := m.(*rlfilterv3.RateLimit); ok {
			return rl, nil
		}
	}
	return nil, errors.New("no ratelimit filter")
}

// routeSites gives each rate_limits entry of the virtual hosts (on the host, on its routes, in
// their typed_per_filter_config, and the filter's own) the first route that sends it, as
// envoyclient.ApplicableRateLimits picks them. An entry no route sends is an error.
func routeSites(file string, filter *rlfilterv3.RateLimit, vhosts []*routev3.VirtualHost, label func(string) string) ([]rateLimitSite, error) {
	if label == nil {
		label = func(s string) string { return s }
	}
	// Every declared entry, by where it is: its virtual host and route (-1 for none), its
	// source and index.
	type place struct {
		vh, route int
		src       envoyclient.RateLimitSource
		index     int
	}
	var order []place
	where := map[place]string{}
	var p problems
	declare := func(at string, vh, route int, src envoyclient.RateLimitSource, entries []*routev3.RateLimit) {
		for j := range entries {
			pl := place{vh, route, src, j}
			where[pl] = label(fmt.Sprintf("%s.rate_limits[%d]", at, j))
			order = append(order, pl)
		}
	}
	perRoute := func(at string, vh, route int, src envoyclient.RateLimitSource, cfg map[string]*anypb.Any) {
		a, ok := cfg[envoyclient.RateLimitFilterName]
		if !ok {
			return
		}
		pr := &rlfilterv3.RateLimitPerRoute{}
		if err := a.UnmarshalTo(pr); err != nil {
			p.addf("%s: %s: typed_per_filter_config[%s]: %w", file, at, envoyclient.RateLimitFilterName, err)
			return
		}
		declare(at+".typed_per_filter_config["+envoyclient.RateLimitFilterName+"]", vh, route, src, pr.GetRateLimits())
	}
	declare("http_filters[ratelimit]", -1, -1, envoyclient.FromFilter, filter.GetRateLimits())
	for i, vh := range vhosts {
		vw := fmt.Sprintf("virtual_hosts[%s]", vh.GetName())
		declare(vw, i, -1, envoyclient.FromVirtualHost, vh.GetRateLimits())
		perRoute(vw, i, -1, envoyclient.FromVirtualHostPerFilterConfig, vh.GetTypedPerFilterConfig())
		for k, r := range vh.GetRoutes() {
			rw := fmt.Sprintf("%s.routes[%d]", vw, k)
			declare(rw+".route", i, k, envoyclient.FromRoute, r.GetRoute().GetRateLimits())
			perRoute(rw, i, k, envoyclient.FromRoutePerFilterConfig, r.GetTypedPerFilterConfig())
		}
	}

	var out []rateLimitSite
	sent := map[place]bool{}
	for i, vh := range vhosts {
		authority := "localhost"
		if d := vh.GetDomains(); len(d) > 0 && !strings.Contains(d[0], "*") {
			authority = d[0]
		}
		for k, r := range vh.GetRoutes() {
			path, ok := representativePath(r.GetMatch())
			if !ok {
				p.addf("%s: virtual_hosts[%s].routes[%d]: its match is not covered by test/deploy (prefix or path)", file, vh.GetName(), k)
				continue
			}
			applied, domain, err := envoyclient.ApplicableRateLimits(envoyclient.RateLimitRoute{VirtualHost: vh, Route: r, Filter: filter})
			if err != nil {
				p.addf("%s: virtual_hosts[%s].routes[%d]: %w", file, vh.GetName(), k, err)
				continue
			}
			for _, a := range applied {
				pl := place{i, k, a.Source, a.Index}
				switch a.Source {
				case envoyclient.FromFilter:
					pl.vh, pl.route = -1, -1
				case envoyclient.FromVirtualHost, envoyclient.FromVirtualHostPerFilterConfig:
					pl.route = -1
				}
				if sent[pl] {
					continue
				}
				sent[pl] = true
				out = append(out, rateLimitSite{file: file, where: where[pl], entry: a.Entry, domain: domain,
					authority: authority, path: path, cluster: r.GetRoute().GetCluster()})
			}
		}
	}
	for _, pl := range order {
		if !sent[pl] {
			p.addf("%s: %s: no route sends this entry (the route's own entries override the virtual host's, per-route rate_limits override both, or its stage or disable_key keeps it out)", file, where[pl])
		}
	}
	return out, p.err()
}

// representativePath is a request path the route match takes.
func representativePath(m *routev3.RouteMatch) (string, bool) {
	switch {
	case m.GetPrefix() != "":
		return m.GetPrefix(), true
	case m.GetPath() != "":
		return m.GetPath(), true
	case m.GetPathSeparatedPrefix() != "":
		return m.GetPathSeparatedPrefix(), true
	}
	return "", false
}

// checkProtection starts levy on the config text (its store on a fresh data dir, or on a
// fresh Redis), with one consumer per site and plan (all plans when plans is nil), and sends
// each site's descriptor as Envoy would after levy's ext_authz allowed the request. It returns
// one error per failing site, naming the file and the entry.
func checkProtection(t *testing.T, text []byte, name string, redis bool, sites []rateLimitSite, plans []string) []error {
	t.Helper()
	cfg, err := config.Parse(text, name)
	if err != nil {
		t.Fatal(err)
	}
	if redis { // as the shipped Deployment runs it, on a Redis of the test's own
		env := levyEnv(t)
		env["LEVY_REDIS_ADDR"] = redistest.Start(t).Addr
		cfg.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	cfg.Source = "" // nothing to watch
	cfg.Listen = config.Listen{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0"}
	cfg.Store.DataDir = t.TempDir()
	if plans == nil {
		plans = slices.Sorted(maps.Keys(cfg.Plans))
	}
	type run struct {
		site       rateLimitSite
		plan, key  string
		consumer   string
		remoteAddr string
	}
	var runs []run
	for i, s := range sites {
		for j, pl := range plans {
			key, err := apikey.Generate(cfg.Keys.Prefix)
			if err != nil {
				t.Fatal(err)
			}
			id := fmt.Sprintf("protect-%d-%s", i, pl)
			cfg.Consumers = append(cfg.Consumers, config.ConsumerSpec{ID: id, Plan: pl,
				Keys: []config.KeySpec{{ID: id, SHA256: cfg.Hasher().Hash(key)}}})
			n := i*len(plans) + j
			runs = append(runs, run{site: s, plan: pl, key: key, consumer: id,
				remoteAddr: fmt.Sprintf("198.51.%d.%d", 100+n/250, 1+n%250)})
		}
	}
	if err := server.Validate(cfg); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	srv, err := server.New(cfg, server.Options{Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), ReloadEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	authz := envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: 10 * time.Second})

	var errs []error
	for _, r := range runs {
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s: %s: %s (consumer on plan %s)", r.site.file, r.site.where, fmt.Sprintf(format, args...), r.plan))
		}
		out, err := authz.Check(ctx, &envoyclient.Request{Authority: r.site.authority, Path: r.site.path,
			Headers: []envoyclient.Header{{Name: "x-api-key", Value: r.key}}, SourceAddress: net.JoinHostPort(r.remoteAddr, "40000")})
		if err != nil {
			t.Fatal(err)
		}
		if !out.Allowed {
			fail("levy's ext_authz did not allow the representative request: %d %s", out.Status, out.Body)
			continue
		}
		md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{envoyclient.ExtAuthzNamespace: out.DynamicMetadata}}
		for _, e := range readsOfExtAuthz(r.site.entry) {
			set := slices.Sorted(maps.Keys(out.DynamicMetadata.GetFields()))
			if e.override && !envoyclient.MetadataStruct(md, e.key) {
				fail("limit override reads %s, which levy's ext_authz does not set (it sets %v): the override is never sent", metadataPath(e.key), set)
			}
			if !e.override && envoyclient.MetadataString(md, e.key) == "" {
				fail("reads %s, which levy's ext_authz does not set as a string (it sets %v): every request counts under the default", metadataPath(e.key), set)
			}
		}
		in := &envoyclient.RateLimitInput{Headers: out.UpstreamHeaders, RemoteAddress: r.remoteAddr, RouteCluster: r.site.cluster, DynamicMetadata: md}
		d, ok, err := envoyclient.RateLimitDescriptor(r.site.entry, in)
		if err != nil {
			fail("%v", err)
			continue
		}
		if !ok {
			fail("Envoy builds no descriptor for a request levy allowed: the entry limits nothing")
			continue
		}
		rl := envoyclient.NewRateLimitClient(conn, envoyclient.RateLimitConfig{Domain: r.site.domain, Timeout: 10 * time.Second})
		first, err := rl.ShouldRateLimit(ctx, []envoyclient.Descriptor{d}, 0)
		if err != nil || first.RPCError != nil {
			fail("ShouldRateLimit: %v %v", err, first.RPCError)
			continue
		}
		cur := first.Response.GetStatuses()[0].GetCurrentLimit()
		if cur == nil {
			fail("levy has no rule for %s in domain %q: the limit always answers OK", entries(d), r.site.domain)
			continue
		}
		if want, ok := planRoute(cfg, r.plan, d); ok && (cur.GetRequestsPerUnit() != want.rpu || cur.GetUnit() != want.unit) {
			fail("%s: levy applies %d per %v, want the plan's routes.%s: %d per %v", entries(d), cur.GetRequestsPerUnit(), cur.GetUnit(), want.route, want.rpu, want.unit)
		}
		n, ok := overLimit(ctx, rl, d, first, cur.GetRequestsPerUnit())
		if !ok {
			fail("%s: levy never answered OVER_LIMIT in %d calls against %d per %v", entries(d), n, cur.GetRequestsPerUnit(), cur.GetUnit())
			continue
		}
		t.Logf("%s (plan %s): %s in domain %q: OVER_LIMIT after %d calls against %d per %v", r.site, r.plan, entries(d), r.site.domain, n, cur.GetRequestsPerUnit(), cur.GetUnit())
		// Without levy's metadata (ext_authz off for a route), a descriptor Envoy still
		// builds, from a default_value, must meet a rule too.
		bare := *in
		bare.DynamicMetadata = nil
		if d, ok, err := envoyclient.RateLimitDescriptor(r.site.entry, &bare); err == nil && ok {
			o, err := rl.ShouldRateLimit(ctx, []envoyclient.Descriptor{d}, 0)
			if err != nil || o.RPCError != nil || o.Response.GetStatuses()[0].GetCurrentLimit() == nil {
				fail("without ext_authz metadata Envoy sends %s, and levy has no rule for it", entries(d))
			}
		}
	}
	return errs
}

// overLimit sends d from a few callers at once, as a busy client would, until levy answers
// OVER_LIMIT; it gives up after far more calls than the limit allows, or a deadline. It
// returns the calls made and whether one was refused.
func overLimit(ctx context.Context, rl *envoyclient.RateLimitClient, d envoyclient.Descriptor, first *envoyclient.RateLimitOutcome, rpu uint32) (int64, bool) {
	if first.Limited {
		return 1, true
	}
	budget := int64(20*rpu + 1000)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var calls atomic.Int64
	var limited atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !limited.Load() && calls.Add(1) <= budget && ctx.Err() == nil {
				o, err := rl.ShouldRateLimit(ctx, []envoyclient.Descriptor{d}, 0)
				if err == nil && o.Limited {
					limited.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return min(calls.Load(), budget), limited.Load()
}

// extAuthzRead is a place in ext_authz's metadata that an entry reads.
type extAuthzRead struct {
	key      *metadatav3.MetadataKey
	override bool // a limit override (a struct), not an action (a string)
}

// readsOfExtAuthz lists the ext_authz metadata an entry's actions and limit override read.
func readsOfExtAuthz(e *routev3.RateLimit) []extAuthzRead {
	var out []extAuthzRead
	for _, a := range e.GetActions() {
		switch {
		case a.GetMetadata() != nil && a.GetMetadata().GetSource() == routev3.RateLimit_Action_MetaData_DYNAMIC:
			if k := a.GetMetadata().GetMetadataKey(); k.GetKey() == envoyclient.ExtAuthzNamespace {
				out = append(out, extAuthzRead{key: k})
			}
		case a.GetDynamicMetadata() != nil:
			if k := a.GetDynamicMetadata().GetMetadataKey(); k.GetKey() == envoyclient.ExtAuthzNamespace {
				out = append(out, extAuthzRead{key: k})
			}
		}
	}
	if k := e.GetLimit().GetDynamicMetadata().GetMetadataKey(); k.GetKey() == envoyclient.ExtAuthzNamespace {
		out = append(out, extAuthzRead{key: k, override: true})
	}
	return out
}

// routeLimit is a plan's limit for one route, as levy reports it to Envoy.
type routeLimit struct {
	route string
	rpu   uint32
	unit  rlsv3.RateLimitResponse_RateLimit_Unit
}

// planRoute is plan's routes.<route> for a descriptor naming a consumer and a route, when the
// plan has one with a rate (what a from_plan rule then applies).
func planRoute(cfg *config.Config, plan string, d envoyclient.Descriptor) (routeLimit, bool) {
	var consumer, route bool
	var value string
	for _, e := range d.Entries {
		switch e[0] {
		case "consumer":
			consumer = true
		case "route":
			route, value = true, e[1]
		}
	}
	rs, ok := cfg.Plans[plan].Routes[value]
	if !consumer || !route || !ok || rs.Rate == nil {
		return routeLimit{}, false
	}
	units := map[time.Duration]rlsv3.RateLimitResponse_RateLimit_Unit{time.Second: rlsv3.RateLimitResponse_RateLimit_SECOND,
		time.Minute: rlsv3.RateLimitResponse_RateLimit_MINUTE, time.Hour: rlsv3.RateLimitResponse_RateLimit_HOUR,
		24 * time.Hour: rlsv3.RateLimitResponse_RateLimit_DAY}
	return routeLimit{route: value, rpu: uint32(rs.Rate.Requests), unit: units[time.Duration(rs.Rate.Per)]}, true
}

// entries renders a descriptor as [key=value, ...].
func entries(d envoyclient.Descriptor) string {
	parts := make([]string, len(d.Entries))
	for i, e := range d.Entries {
		parts[i] = e[0] + "=" + e[1]
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
