package deploy

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/strvals"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/server"
)

// chartDir is levy's Helm chart, seen from this package's folder.
var chartDir = filepath.Join(repoRoot, "k8s", "chart", "levy")

// The release every test renders: named and placed as the plain manifests in k8s/ are, so
// that the chart's objects and k8s/istio-mesh.yaml's providers refer to each other.
const (
	releaseName      = "levy"
	releaseNamespace = "levy"
)

// rendered is one rendering of the chart: its manifests, decoded, and its NOTES.
type rendered struct {
	*manifests
	notes string
}

// renderChart renders the chart with vals over its values.yaml as `helm template` would,
// in process (Helm's Go SDK: no helm binary, no cluster), and decodes every object
// strictly into its Kubernetes, Istio or prometheus-operator type.
func renderChart(vals map[string]any) (*rendered, error) {
	return renderRelease(releaseName, releaseNamespace, vals)
}

// renderRelease renders the chart as release name in namespace ns.
func renderRelease(name, ns string, vals map[string]any) (*rendered, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: name, Namespace: ns, Revision: 1, IsInstall: true,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	// Strict: a template that reads a value the chart does not define fails.
	out, err := engine.Engine{Strict: true}.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	var notes string
	for name, text := range out {
		switch {
		case strings.HasSuffix(name, "NOTES.txt"):
			notes = text
		case strings.HasSuffix(name, ".yaml"):
			files[name] = []byte(text)
		}
		// Whitespace at a line's end is a template's {{ }} trimming gone wrong.
		for i, line := range strings.Split(text, "\n") {
			if strings.TrimRight(line, " \t") != line && strings.TrimSpace(line) != "" {
				return nil, fmt.Errorf("%s:%d: whitespace at the end of %q", name, i+1, line)
			}
		}
	}
	m, err := decodeManifests(files)
	if err != nil {
		return nil, err
	}
	return &rendered{manifests: m, notes: notes}, nil
}

// checkChart runs test/deploy's checks of single objects and of the references between
// them over a rendering (the checks that assume k8s/'s plain layout are left out).
func (r *rendered) checkChart() error {
	var p problems
	p.add(r.checkConfigMaps()...)
	p.add(r.checkDeployments()...)
	p.add(r.checkServices()...)
	p.add(r.checkPDBs()...)
	p.add(r.checkHPAs()...)
	p.add(r.checkChartExtras()...)
	return p.err()
}

// redisValues are the values of a production release: Redis Cluster with AUTH and TLS,
// every secret from an existing Secret, HPA, NetworkPolicy, ServiceMonitor, Istio.
var redisValues = map[string]any{
	"store": map[string]any{
		"type": "redis",
		"redis": map[string]any{
			"cluster":  []any{"redis-0.redis:6379", "redis-1.redis:6379", "redis-2.redis:6379"},
			"username": "levy",
			"password": map[string]any{"existingSecret": "levy-redis", "key": "password"},
			"tls":      map[string]any{"enabled": true, "serverName": "redis.example.internal", "caSecret": map[string]any{"name": "redis-ca", "key": "ca.crt"}},
		},
	},
	"secrets": map[string]any{
		"adminToken":          map[string]any{"existingSecret": "levy-secrets"},
		"stripeApiKey":        map[string]any{"existingSecret": "levy-secrets"},
		"stripeWebhookSecret": map[string]any{"existingSecret": "levy-stripe", "key": "whsec"},
		"keyHashSecret":       map[string]any{"existingSecret": "levy-secrets"},
	},
	"autoscaling":    map[string]any{"enabled": true, "minReplicas": 3, "maxReplicas": 12},
	"networkPolicy":  map[string]any{"enabled": true},
	"serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
	"prometheusRule": map[string]any{"enabled": true, "groups": []any{map[string]any{
		"name":  "levy",
		"rules": []any{map[string]any{"alert": "LevyStoreDown", "expr": "min(levy_store_up) == 0", "for": "1m"}},
	}}},
	"grafanaDashboards": map[string]any{"enabled": true, "dashboards": map[string]any{"levy": `{"title": "levy"}`}},
	"istio":             map[string]any{"enabled": true, "hosts": []any{"api.example.com", "api.example.org"}},
	"resources":         map[string]any{"limits": map[string]any{"memory": "1.5Gi"}},
	"rateLimitRules": map[string]any{
		"edge.yaml": "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: second, requests_per_unit: 10}\n",
	},
	"extraObjects": []any{
		map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "{{ .Release.Name }}-extra", "namespace": "{{ .Release.Namespace }}"},
			"data": map[string]any{"note": "rendered with the release"}},
	},
	"config": map[string]any{
		"plans": map[string]any{"team": map[string]any{"model": "tiered", "rate": map[string]any{"requests": 50, "per": "1s", "burst": 100}}},
	},
}

// secretEnv are the env vars the chart sets from Secrets, with the values that set them.
var secretEnv = map[string]string{
	"LEVY_ADMIN_TOKEN":      "levy-secrets/admin-token",
	"STRIPE_API_KEY":        "levy-secrets/stripe-api-key",
	"STRIPE_WEBHOOK_SECRET": "levy-stripe/whsec",
	"LEVY_KEY_HASH_SECRET":  "levy-secrets/key-hash-secret",
	"LEVY_REDIS_PASSWORD":   "levy-redis/password",
}

func TestChartRendersValidObjects(t *testing.T) {
	tests := []struct {
		name string
		give map[string]any
	}{
		{"default values", nil},
		{"redis cluster, HPA, NetworkPolicy, ServiceMonitor, Istio, secrets", redisValues},
		{"standalone redis, no public listener", map[string]any{
			"store":  map[string]any{"type": "redis", "redis": map[string]any{"addr": "redis.levy.svc:6379"}},
			"public": map[string]any{"enabled": false}, "networkPolicy": map[string]any{"enabled": true},
		}},
		{"local store on an existing claim", map[string]any{
			"store": map[string]any{"local": map[string]any{"persistence": map[string]any{"existingClaim": "levy-data-old"}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := renderChart(tt.give)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.checkChart(); err != nil {
				t.Error(err)
			}
		})
	}
}

// updateChartConfig copies k8s/levy.yaml's levy.yaml into the chart:
//
//	go test ./test/deploy/ -run TestChartConfigIsThePlainManifests -update-chart-config
var updateChartConfig = flag.Bool("update-chart-config", false, "write k8s/levy.yaml's ConfigMap levy.yaml to k8s/chart/levy/files/levy.yaml")

// The chart's default levy.yaml is the plain manifest's: one file to keep in step.
func TestChartConfigIsThePlainManifests(t *testing.T) {
	plain := levyConfigs(t)["k8s/levy.yaml"]
	if *updateChartConfig {
		if err := os.WriteFile(filepath.Join(chartDir, "files", "levy.yaml"), plain, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file, err := os.ReadFile(filepath.Join(chartDir, "files", "levy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(file) != string(plain) {
		t.Errorf("k8s/chart/levy/files/levy.yaml differs from the levy.yaml in k8s/levy.yaml's ConfigMap: make them the same file (-update-chart-config copies it)\n--- chart\n%s\n--- k8s/levy.yaml\n%s", file, plain)
	}
	r, err := renderChart(nil)
	if err != nil {
		t.Fatal(err)
	}
	cm := r.configMap(releaseNamespace, "levy-config")
	if cm == nil {
		t.Fatal("no ConfigMap levy-config")
	}
	if got := cm.Data["levy.yaml"]; got != string(file) {
		t.Errorf("the default ConfigMap's levy.yaml is not files/levy.yaml as it is:\n%s", got)
	}
}

// What the chart renders must start levy: the config, with the env the Deployment sets,
// loads and validates in levy itself.
func TestChartConfigLoadsInLevy(t *testing.T) {
	for name, vals := range map[string]map[string]any{"default": nil, "redis": redisValues} {
		t.Run(name, func(t *testing.T) {
			r, err := renderChart(vals)
			if err != nil {
				t.Fatal(err)
			}
			d := r.deployment(releaseNamespace, "levy")
			cm := r.configMap(releaseNamespace, "levy-config")
			if d == nil || cm == nil {
				t.Fatal("no Deployment or ConfigMap levy")
			}
			env := map[string]string{}
			for _, e := range container(d, "levy").Env {
				env[e.Name] = e.Value
				if e.ValueFrom != nil {
					env[e.Name] = "from-a-secret"
				}
			}
			// The rule files, where the Deployment mounts them.
			if env["LEVY_RATELIMIT_DIR"] != "" {
				rules := r.configMap(releaseNamespace, "levy-ratelimit")
				if rules == nil || !r.mountsConfigMapAt(d, container(d, "levy"), env["LEVY_RATELIMIT_DIR"], rules.Name) {
					t.Fatalf("LEVY_RATELIMIT_DIR %s is not the mounted ConfigMap levy-ratelimit", env["LEVY_RATELIMIT_DIR"])
				}
				dir := t.TempDir()
				for name, text := range rules.Data {
					if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				env["LEVY_RATELIMIT_DIR"] = dir
			}
			for k, v := range env {
				t.Setenv(k, v) // Secret refs resolve from the process environment
			}
			if err := loadLevyConfig(cm.Data["levy.yaml"], env); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestChartDeploymentIsHardened(t *testing.T) {
	for name, vals := range map[string]map[string]any{"default": nil, "redis": redisValues} {
		t.Run(name, func(t *testing.T) {
			r, err := renderChart(vals)
			if err != nil {
				t.Fatal(err)
			}
			d := r.deployment(releaseNamespace, "levy")
			if d == nil {
				t.Fatal("no Deployment levy")
			}
			pod := d.Spec.Template.Spec
			c := container(d, "levy")
			psc, sc := pod.SecurityContext, c.SecurityContext
			switch {
			case psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532:
				t.Errorf("pod securityContext %+v: want runAsNonRoot as user 65532", psc)
			case sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
				t.Errorf("container securityContext %+v: want readOnlyRootFilesystem", sc)
			case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
				t.Error("allowPrivilegeEscalation is not false")
			case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
				t.Errorf("capabilities %+v: want drop [ALL], add none", sc.Capabilities)
			}
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Error("the pod mounts a service account token; levy never calls the Kubernetes API")
			}
			// Probes on the internal HTTP port, never the public one.
			http := containerPort(c, intstr.FromString("http"))
			for name, tt := range map[string]struct {
				probe *corev1.Probe
				path  string
			}{"readinessProbe": {c.ReadinessProbe, "/readyz"}, "livenessProbe": {c.LivenessProbe, "/healthz"}} {
				if tt.probe == nil || tt.probe.HTTPGet == nil || tt.probe.HTTPGet.Path != tt.path {
					t.Errorf("%s: want httpGet %s", name, tt.path)
					continue
				}
				if cp := containerPort(c, tt.probe.HTTPGet.Port); cp == nil || http == nil || cp.ContainerPort != http.ContainerPort {
					t.Errorf("%s on port %s: want the internal http port", name, tt.probe.HTTPGet.Port.String())
				}
			}
			if env := envValue(c, "LEVY_HTTP_ADDR"); http == nil || env != "0.0.0.0:"+strconv.Itoa(int(http.ContainerPort)) {
				t.Errorf("LEVY_HTTP_ADDR %q does not listen on the http container port", env)
			}
			// GOMEMLIMIT below the memory limit, and not far below it.
			limit := c.Resources.Limits.Memory()
			gml, err := strconv.ParseInt(envValue(c, "GOMEMLIMIT"), 10, 64)
			if err != nil || limit.IsZero() {
				t.Fatalf("GOMEMLIMIT %q (%v) with memory limit %s: want bytes below the limit", envValue(c, "GOMEMLIMIT"), err, limit)
			}
			if lim := limit.Value(); gml >= lim || gml < lim*8/10 {
				t.Errorf("GOMEMLIMIT %d with a memory limit of %d: want 80%% to 100%% of it", gml, lim)
			}
		})
	}
}

func TestChartGoMemLimitFollowsTheMemoryLimit(t *testing.T) {
	tests := []struct {
		give    string
		percent int
		want    int64
	}{
		{"512Mi", 90, 483183820},
		{"1Gi", 90, 966367641},
		{"1.5Gi", 90, 1449551462},
		{"1G", 80, 800000000},
		{"268435456", 100, 268435456},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			r, err := renderChart(map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": tt.give}}, "goMemLimitPercent": tt.percent})
			if err != nil {
				t.Fatal(err)
			}
			c := container(r.deployment(releaseNamespace, "levy"), "levy")
			q := resource.MustParse(tt.give)
			want := q.Value() * int64(tt.percent) / 100
			if got := envValue(c, "GOMEMLIMIT"); got != strconv.FormatInt(want, 10) || want != tt.want {
				t.Errorf("GOMEMLIMIT = %s, want %d (table says %d)", got, want, tt.want)
			}
		})
	}
}

func TestChartReferencesSecretsWithoutHoldingThem(t *testing.T) {
	r, err := renderChart(redisValues)
	if err != nil {
		t.Fatal(err)
	}
	c := container(r.deployment(releaseNamespace, "levy"), "levy")
	got := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			got[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		}
		if _, secret := secretEnv[e.Name]; secret && e.Value != "" {
			t.Errorf("env %s holds a value; it must come from a Secret", e.Name)
		}
	}
	if !maps.Equal(got, secretEnv) {
		t.Errorf("env from Secrets = %v, want %v", got, secretEnv)
	}
	if len(r.secrets) > 0 {
		t.Errorf("the chart renders %d Secrets; it must only reference existing ones", len(r.secrets))
	}
	// The key hash secret reaches levy through its config, as an env: reference.
	cfg := r.configMap(releaseNamespace, "levy-config").Data["levy.yaml"]
	var v struct {
		Keys struct {
			HashSecret string `json:"hash_secret"`
		} `json:"keys"`
	}
	if err := yaml.Unmarshal([]byte(cfg), &v); err != nil || v.Keys.HashSecret != "env:LEVY_KEY_HASH_SECRET" {
		t.Errorf("keys.hash_secret = %q (%v), want env:LEVY_KEY_HASH_SECRET", v.Keys.HashSecret, err)
	}
	// The Redis CA is a mounted file from its Secret.
	if ca := envValue(c, "LEVY_REDIS_TLS_CA"); !r.mountsSecretFile(r.deployment(releaseNamespace, "levy"), c, ca, "redis-ca") {
		t.Errorf("LEVY_REDIS_TLS_CA %q is not a file of the mounted Secret redis-ca", ca)
	}
}

func TestChartExposesOnlyTheWebhookPublicly(t *testing.T) {
	r, err := renderChart(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := r.deployment(releaseNamespace, "levy")
	c := container(d, "levy")
	pub := r.service(releaseNamespace, "levy-public")
	if pub == nil {
		t.Fatal("no Service levy-public")
	}
	public := containerPort(c, intstr.FromString("public"))
	if public == nil || envValue(c, "LEVY_PUBLIC_ADDR") != "0.0.0.0:"+strconv.Itoa(int(public.ContainerPort)) {
		t.Fatalf("LEVY_PUBLIC_ADDR %q does not listen on the public container port", envValue(c, "LEVY_PUBLIC_ADDR"))
	}
	if len(pub.Spec.Ports) != 1 {
		t.Fatalf("levy-public has %d ports, want the webhook's alone", len(pub.Spec.Ports))
	}
	if cp := podPort(d, pub.Spec.Ports[0].TargetPort); cp == nil || cp.ContainerPort != public.ContainerPort {
		t.Errorf("levy-public targets %s, want the public container port %d", pub.Spec.Ports[0].TargetPort.String(), public.ContainerPort)
	}
	// The internal Service carries gRPC and HTTP, never the public port, and stays in-cluster.
	in := r.service(releaseNamespace, "levy")
	if in == nil {
		t.Fatal("no Service levy")
	}
	if in.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service levy is %s, want ClusterIP: the admin API and metrics stay in the cluster", in.Spec.Type)
	}
	var names []string
	for _, sp := range in.Spec.Ports {
		names = append(names, sp.TargetPort.String())
	}
	if !slices.Equal(names, []string{"grpc", "http"}) {
		t.Errorf("Service levy targets %v, want [grpc http]", names)
	}

	// Without the public listener, there is no public Service and no public port.
	r, err = renderChart(map[string]any{"public": map[string]any{"enabled": false}})
	if err != nil {
		t.Fatal(err)
	}
	c = container(r.deployment(releaseNamespace, "levy"), "levy")
	if r.service(releaseNamespace, "levy-public") != nil || containerPort(c, intstr.FromString("public")) != nil || envValue(c, "LEVY_PUBLIC_ADDR") != "" {
		t.Error("public.enabled false still renders the public listener or its Service")
	}
}

func TestChartStoreSettings(t *testing.T) {
	local, err := renderChart(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := local.deployment(releaseNamespace, "levy")
	c := container(d, "levy")
	switch {
	case envValue(c, "LEVY_STORE") != "local":
		t.Errorf("default LEVY_STORE %q, want local", envValue(c, "LEVY_STORE"))
	case d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType:
		t.Error("the local store must run one replica, replaced with Recreate")
	case len(local.pdbs) > 0:
		t.Error("a PodDisruptionBudget on the local store's one replica blocks every drain")
	case len(local.pvcs) != 1 || !local.mountsClaim(d, c, "/var/lib/levy", local.pvcs[0].Name):
		t.Error("the local store's data dir is not on the chart's PersistentVolumeClaim")
	}

	r, err := renderChart(redisValues)
	if err != nil {
		t.Fatal(err)
	}
	d = r.deployment(releaseNamespace, "levy")
	c = container(d, "levy")
	if got := envValue(c, "LEVY_REDIS_CLUSTER"); got != "redis-0.redis:6379,redis-1.redis:6379,redis-2.redis:6379" {
		t.Errorf("LEVY_REDIS_CLUSTER = %q", got)
	}
	if envValue(c, "LEVY_REDIS_TLS") != "true" || envValue(c, "LEVY_REDIS_TLS_SERVER_NAME") != "redis.example.internal" {
		t.Error("Redis TLS settings missing")
	}
	if d.Spec.Replicas != nil {
		t.Error("with the HPA on, the Deployment must leave replicas to it")
	}
	if cm := r.configMap(releaseNamespace, "levy-extra"); cm == nil || cm.Data["note"] != "rendered with the release" {
		t.Error("extraObjects: the templated ConfigMap levy-extra is missing")
	}
	if len(r.hpas) != 1 || len(r.pdbs) != 1 || len(r.pvcs) != 0 {
		t.Errorf("redis with autoscaling: %d HPAs, %d PDBs, %d PVCs; want 1, 1, 0", len(r.hpas), len(r.pdbs), len(r.pvcs))
	}
}

func TestChartRefusesValuesThatCannotWork(t *testing.T) {
	tests := []struct {
		name string
		give map[string]any
		want string
	}{
		{"redis without address", map[string]any{"store": map[string]any{"type": "redis"}}, "set store.redis.addr"},
		{"unknown store", map[string]any{"store": map[string]any{"type": "etcd"}}, "'/store/type': value must be one of 'local', 'redis'"},
		{"misspelled value", map[string]any{"store": map[string]any{"type": "redis", "redis": map[string]any{"adress": "r:6379"}}}, "'adress' not allowed"},
		{"misspelled top-level value", map[string]any{"replicas": 3}, "'replicas' not allowed"},
		{"autoscaling the local store", map[string]any{"autoscaling": map[string]any{"enabled": true}}, "autoscaling needs store.type redis"},
		{"HPA of one", map[string]any{"store": map[string]any{"type": "redis", "redis": map[string]any{"addr": "r:6379"}},
			"autoscaling": map[string]any{"enabled": true, "minReplicas": 1}}, "'/autoscaling/minReplicas': minimum: got 1, want 2"},
		{"memory limit in an unknown unit", map[string]any{"resources": map[string]any{"limits": map[string]any{"memory": "1GB"}}}, `"1GB"`},
		{"on_store_error misspelled", map[string]any{"store": map[string]any{"onStoreError": "open"}}, "'/store/onStoreError': value must be one of"},
		{"GOMEMLIMIT above the limit", map[string]any{"goMemLimitPercent": 120}, "'/goMemLimitPercent': maximum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderChart(tt.give)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("renderChart() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// With Istio on, the chart's policies, telemetry and EnvoyFilter pass the checks the plain
// k8s/istio.yaml passes, against the providers k8s/istio-mesh.yaml declares and the
// providers the chart's NOTES tell the operator to add.
func TestChartIstioWiring(t *testing.T) {
	r, err := renderChart(redisValues)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.authzPolicies) != 1 || len(r.telemetries) != 1 || len(r.envoyFilters) != 1 {
		t.Fatalf("istio on: %d AuthorizationPolicies, %d Telemetries, %d EnvoyFilters; want 1 each", len(r.authzPolicies), len(r.telemetries), len(r.envoyFilters))
	}
	// One VIRTUAL_HOST patch per host.
	if n := len(r.envoyFilters[0].spec.GetConfigPatches()); n != 3 {
		t.Errorf("EnvoyFilter has %d patches, want the filter and one per host (3)", n)
	}
	mesh := notesMeshConfig(t, r.notes)
	plain := readFiles(t, []string{"k8s/istio-mesh.yaml"})
	for name, src := range map[string]map[string][]byte{"NOTES": {"NOTES mesh config": mesh}, "k8s/istio-mesh.yaml": plain} {
		t.Run(name, func(t *testing.T) {
			m, err := decodeManifests(src)
			if err != nil {
				t.Fatal(err)
			}
			r.meshConfigs = m.meshConfigs
			for _, mc := range m.meshConfigs {
				r.where[mc.spec] = m.where[mc.spec]
			}
			var p problems
			p.add(r.checkIstio()...)
			if err := p.err(); err != nil {
				t.Error(err)
			}
		})
	}
	// Off by default.
	r, err = renderChart(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.authzPolicies)+len(r.telemetries)+len(r.envoyFilters) > 0 || strings.Contains(r.notes, "extensionProviders") {
		t.Error("the default values render Istio objects")
	}
}

// Under another release name and namespace, every name the objects use for each other
// follows: Services, the ConfigMap, the Istio cluster, the mesh providers the NOTES print.
func TestChartFollowsTheReleaseName(t *testing.T) {
	r, err := renderRelease("billing", "payments", redisValues)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.checkChart(); err != nil {
		t.Error(err)
	}
	if r.deployment("payments", "billing-levy") == nil || r.service("payments", "billing-levy") == nil || r.service("payments", "billing-levy-public") == nil {
		t.Fatal("want Deployment and Services billing-levy, billing-levy-public in payments")
	}
	m, err := decodeManifests(map[string][]byte{"NOTES": notesMeshConfig(t, r.notes)})
	if err != nil {
		t.Fatal(err)
	}
	r.meshConfigs = m.meshConfigs
	for _, mc := range m.meshConfigs {
		r.where[mc.spec] = m.where[mc.spec]
	}
	if err := errorsOf(r.checkIstio()); err != nil {
		t.Error(err)
	}
}

func errorsOf(errs []error) error {
	var p problems
	p.add(errs...)
	return p.err()
}

// notesMeshConfig cuts the mesh config the NOTES print into an IstioOperator document.
func notesMeshConfig(t *testing.T, notes string) []byte {
	t.Helper()
	_, mesh, ok := strings.Cut(notes, "\nmeshConfig:\n")
	if !ok {
		t.Fatalf("the NOTES print no meshConfig:\n%s", notes)
	}
	return []byte("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: levy, namespace: istio-system}\nspec:\n  meshConfig:\n" +
		indent(mesh, "  "))
}

func indent(s, by string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = by + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

func TestChartPassesHelmLint(t *testing.T) {
	for name, vals := range map[string]map[string]any{"default": nil, "redis": redisValues} {
		t.Run(name, func(t *testing.T) {
			res := lint.All(chartDir, vals, releaseNamespace, true)
			for _, m := range res.Messages {
				if m.Severity > support.InfoSev { // infos (an icon is recommended) are advice
					t.Errorf("helm lint: %s", m)
				}
			}
		})
	}
}

// checkChartExtras checks the kinds only the chart renders: NetworkPolicy, PVCs,
// ServiceMonitor, PrometheusRule.
func (m *manifests) checkChartExtras() []error {
	var p problems
	for _, np := range m.networkPolicies {
		w := m.where[np]
		backends := m.selectedDeployments(np.Namespace, np.Spec.PodSelector.MatchLabels)
		if len(backends) == 0 {
			p.addf("%s: podSelector %v matches no Deployment", w, np.Spec.PodSelector.MatchLabels)
		}
		for _, rule := range np.Spec.Ingress {
			for _, port := range rule.Ports {
				for _, d := range backends {
					if port.Port == nil || podPort(d, *port.Port) == nil {
						p.addf("%s: port %v is not a port of Deployment %s", w, port.Port, d.Name)
					}
				}
			}
		}
		// Every container port has a rule: a port left out is closed.
		for _, d := range backends {
			for _, c := range d.Spec.Template.Spec.Containers {
				for _, cp := range c.Ports {
					if !slices.ContainsFunc(np.Spec.Ingress, func(r networkingv1.NetworkPolicyIngressRule) bool {
						return slices.ContainsFunc(r.Ports, func(pp networkingv1.NetworkPolicyPort) bool { return pp.Port != nil && pp.Port.String() == cp.Name })
					}) {
						p.addf("%s: container port %s has no ingress rule: nothing can reach it", w, cp.Name)
					}
				}
			}
		}
	}
	for _, sm := range m.serviceMonitors {
		w := m.where[sm]
		var matched []*corev1.Service
		for _, s := range m.services {
			if s.Namespace == sm.Namespace && selects(sm.Spec.Selector.MatchLabels, s.Labels) {
				matched = append(matched, s)
			}
		}
		if len(matched) != 1 {
			p.addf("%s: selector matches %d Services, want the internal one", w, len(matched))
		}
		for _, ep := range sm.Spec.Endpoints {
			for _, s := range matched {
				if !slices.ContainsFunc(s.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == ep.Port && sp.TargetPort.String() == "http" }) {
					p.addf("%s: endpoint port %q is not Service %s's http port", w, ep.Port, s.Name)
				}
			}
			if ep.Path != "/metrics" {
				p.addf("%s: endpoint path %q, want /metrics", w, ep.Path)
			}
		}
	}
	for _, pr := range m.prometheusRules {
		if len(pr.Spec.Groups) == 0 {
			p.addf("%s: no rule groups", m.where[pr])
		}
	}
	return p
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// mountsSecretFile reports whether file is the key of Secret secret mounted into c.
func (m *manifests) mountsSecretFile(d *appsv1.Deployment, c *corev1.Container, file, secret string) bool {
	dir, key := filepath.Dir(file), filepath.Base(file)
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != dir {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == vm.Name && v.Secret != nil && v.Secret.SecretName == secret &&
				slices.ContainsFunc(v.Secret.Items, func(k corev1.KeyToPath) bool { return k.Path == key }) {
				return true
			}
		}
	}
	return false
}

// mountsConfigMapAt reports whether ConfigMap name is mounted whole into c at dir.
func (m *manifests) mountsConfigMapAt(d *appsv1.Deployment, c *corev1.Container, dir, name string) bool {
	for _, vm := range c.VolumeMounts {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if vm.MountPath == dir && v.Name == vm.Name && v.ConfigMap != nil && v.ConfigMap.Name == name && len(v.ConfigMap.Items) == 0 {
				return true
			}
		}
	}
	return false
}

// mountsClaim reports whether the PVC claim is mounted into c at dir.
func (m *manifests) mountsClaim(d *appsv1.Deployment, c *corev1.Container, dir, claim string) bool {
	for _, vm := range c.VolumeMounts {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if vm.MountPath == dir && v.Name == vm.Name && v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
				return true
			}
		}
	}
	return false
}

// loadLevyConfig loads text as levy does, with env as its LEVY_* environment.
func loadLevyConfig(text string, env map[string]string) error {
	cfg, err := config.Parse([]byte(text), "chart ConfigMap levy.yaml")
	if err != nil {
		return err
	}
	cfg.ApplyEnv(func(name string) (string, bool) { v, ok := env[name]; return v, ok })
	if err := server.Validate(cfg); err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	return nil
}

// helmInstall finds the documented `helm install <release> k8s/chart/levy ...` commands,
// continued over backslash-newlines.
var helmInstall = regexp.MustCompile(`helm install \S+ k8s/chart/levy((?:[^\n\\]|\\\n)*)`)

// The helm install commands README.md documents render, with what they promise.
func TestReadmeHelmCommandsRender(t *testing.T) {
	text, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	matches := helmInstall.FindAllStringSubmatch(string(text), -1)
	if len(matches) < 2 {
		t.Fatalf("README.md documents %d helm install commands, want the try-it and the production one", len(matches))
	}
	for _, match := range matches {
		args := strings.Fields(strings.ReplaceAll(match[1], "\\\n", " "))
		vals := map[string]any{}
		for i, a := range args {
			if a == "--set" && i+1 < len(args) {
				if err := strvals.ParseInto(args[i+1], vals); err != nil {
					t.Fatalf("%q: %v", args[i+1], err)
				}
			}
		}
		r, err := renderChart(vals)
		if err != nil {
			t.Errorf("%s: %v", match[0], err)
			continue
		}
		if err := r.checkChart(); err != nil {
			t.Errorf("%s: %v", match[0], err)
		}
	}
}

// With tls.existingSecret, levy serves TLS from the mounted Secret, and what talks to its
// HTTP port (the probes, Prometheus) speaks HTTPS.
func TestChartListenerTLS(t *testing.T) {
	r, err := renderChart(map[string]any{
		"tls":            map[string]any{"existingSecret": "levy-tls", "clientCA": true},
		"serviceMonitor": map[string]any{"enabled": true, "tlsConfig": map[string]any{"serverName": "levy.levy.svc"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.checkChart(); err != nil {
		t.Error(err)
	}
	d := r.deployment(releaseNamespace, "levy")
	c := container(d, "levy")
	for name, pr := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("%s is not HTTPS", name)
		}
	}
	var v struct {
		Listen struct {
			TLS map[string]string `json:"tls"`
		} `json:"listen"`
	}
	if err := yaml.Unmarshal([]byte(r.configMap(releaseNamespace, "levy-config").Data["levy.yaml"]), &v); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"cert_file": "tls.crt", "key_file": "tls.key", "client_ca_file": "ca.crt"}
	for setting, key := range want {
		file := v.Listen.TLS[setting]
		if filepath.Base(file) != key || !r.mountsSecretAt(d, c, filepath.Dir(file), "levy-tls") {
			t.Errorf("listen.tls.%s = %q: want %s of the Secret levy-tls, mounted", setting, file, key)
		}
	}
	if len(r.serviceMonitors) != 1 || r.serviceMonitors[0].Spec.Endpoints[0].Scheme == nil || *r.serviceMonitors[0].Spec.Endpoints[0].Scheme != "https" {
		t.Error("the ServiceMonitor does not scrape over HTTPS")
	}
}

// mountsSecretAt reports whether Secret name is mounted whole into c at dir.
func (m *manifests) mountsSecretAt(d *appsv1.Deployment, c *corev1.Container, dir, name string) bool {
	for _, vm := range c.VolumeMounts {
		for _, v := range d.Spec.Template.Spec.Volumes {
			if vm.MountPath == dir && v.Name == vm.Name && v.Secret != nil && v.Secret.SecretName == name && len(v.Secret.Items) == 0 {
				return true
			}
		}
	}
	return false
}
