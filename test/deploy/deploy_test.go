package deploy

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"sigs.k8s.io/yaml"

	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/server"
)

// repoRoot is the repository root, seen from this package's folder (where go test runs).
const repoRoot = "../.."

// requiredFiles are the deployable configs levy ships: removing one fails the tests.
var requiredFiles = []string{
	"envoy/envoy.yaml",
	"envoy/envoy-sidecar.yaml",
	"k8s/hpa.yaml",
	"k8s/istio-mesh.yaml",
	"k8s/istio.yaml",
	"k8s/levy.yaml",
	"k8s/redis.yaml",
}

// deployFiles lists every file under envoy/ and k8s/ (relative to the repo root, with
// forward slashes), sorted by the validator that covers it. Markdown is documentation;
// any other file is uncovered.
func deployFiles(t *testing.T) (envoyFiles, k8sFiles, uncovered []string) {
	t.Helper()
	for _, dir := range []string{"envoy", "k8s"} {
		err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, err := filepath.Rel(repoRoot, p)
			if err != nil {
				return err
			}
			rel = filepath.ToSlash(rel)
			switch {
			case strings.HasPrefix(rel, "k8s/chart/"):
				// Helm templates, not manifests: chart_test.go renders and validates them.
			case strings.HasSuffix(rel, ".md"):
			case dir == "envoy" && strings.HasSuffix(rel, ".yaml"):
				envoyFiles = append(envoyFiles, rel)
			case dir == "k8s" && strings.HasSuffix(rel, ".yaml"):
				k8sFiles = append(k8sFiles, rel)
			default:
				uncovered = append(uncovered, rel)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("list %s/: %v", dir, err)
		}
	}
	return envoyFiles, k8sFiles, uncovered
}

// readFiles reads files relative to the repo root, keyed by their relative names.
func readFiles(t *testing.T, files []string) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte, len(files))
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(f)))
		if err != nil {
			t.Fatal(err)
		}
		out[f] = data
	}
	return out
}

// levyConfigs returns the levy.yaml config files embedded in ConfigMaps under k8s/ (the
// data key levy.yaml), keyed by the manifest file that holds them, e.g. "k8s/levy.yaml".
// Use it to run them through levy's config loader.
func levyConfigs(t *testing.T) map[string][]byte {
	t.Helper()
	_, k8sFiles, _ := deployFiles(t)
	m, err := decodeManifests(readFiles(t, k8sFiles))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, cm := range m.configMaps {
		text, ok := cm.Data["levy.yaml"]
		if !ok {
			continue
		}
		file := m.files[cm]
		if _, dup := out[file]; dup {
			t.Fatalf("%s: more than one ConfigMap holds levy.yaml", file)
		}
		out[file] = []byte(text)
	}
	return out
}

func TestEveryDeployFileIsValidated(t *testing.T) {
	envoyFiles, k8sFiles, uncovered := deployFiles(t)
	for _, f := range uncovered {
		t.Errorf("%s: no validator covers this file: name it *.yaml (envoy/: Envoy bootstrap, k8s/: manifests) or add one in test/deploy", f)
	}
	covered := append(slices.Clone(envoyFiles), k8sFiles...)
	for _, f := range requiredFiles {
		if !slices.Contains(covered, f) {
			t.Errorf("%s is missing", f)
		}
	}
}

func TestEnvoyBootstrapsAreValid(t *testing.T) {
	envoyFiles, _, _ := deployFiles(t)
	for _, f := range envoyFiles {
		t.Run(f, func(t *testing.T) {
			if err := validateEnvoyFile(filepath.Join(repoRoot, filepath.FromSlash(f))); err != nil {
				t.Errorf("%s:\n%v", f, err)
			}
		})
	}
}

func TestKubernetesManifestsAreValid(t *testing.T) {
	_, k8sFiles, _ := deployFiles(t)
	if err := validateManifests(readFiles(t, k8sFiles)); err != nil {
		t.Errorf("k8s/:\n%v", err)
	}
}

func TestLevyConfigMapHoldsYAML(t *testing.T) {
	cfgs := levyConfigs(t)
	if _, ok := cfgs["k8s/levy.yaml"]; !ok {
		t.Fatalf("k8s/levy.yaml has no ConfigMap with a levy.yaml key; got %d configs", len(cfgs))
	}
	for file, text := range cfgs {
		var v map[string]any
		if err := yaml.UnmarshalStrict(text, &v); err != nil {
			t.Errorf("%s: levy.yaml: %v", file, err)
		}
	}
}

func TestValidatorRejectsBrokenEnvoyConfig(t *testing.T) {
	orig, err := os.ReadFile(filepath.Join(repoRoot, "envoy", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		old  string // replaced once in envoy/envoy.yaml
		give string
		want string
	}{
		{"misspelled field", "failure_mode_allow: false", "failure_mode_alow: false", `unknown field "failure_mode_alow"`},
		{"misspelled field inside typed_config", "enable_x_ratelimit_headers:", "enable_x_rate_limit_headers:", `unknown field "enable_x_rate_limit_headers"`},
		{"wrong @type", "envoy.extensions.filters.http.ratelimit.v3.RateLimit\n", "envoy.extensions.filters.http.ratelimit.v3.RateLimiter\n", "unable to resolve"},
		{"unknown enum value", "enable_x_ratelimit_headers: DRAFT_VERSION_03", "enable_x_ratelimit_headers: DRAFT_03", "invalid value for enum"},
		{"no X-RateLimit headers", "enable_x_ratelimit_headers: DRAFT_VERSION_03", "enable_x_ratelimit_headers: \"OFF\"", "want DRAFT_VERSION_03"},
		{"rule violated inside an Any", "domain: levy", `domain: ""`, "RateLimit.Domain"},
		{"fails open", "failure_mode_allow: false", "failure_mode_allow: true", "failure_mode_allow is true"},
		{"wrong status on error", "status_on_error: {code: ServiceUnavailable}", "status_on_error: {code: Forbidden}", "want ServiceUnavailable"},
		{"wrong domain", "domain: levy", "domain: billing", `want "levy"`},
		{"api key logged", "additional_request_headers_to_log: [x-consumer-id, x-request-id]", "additional_request_headers_to_log: [x-consumer-id, X-Api-Key]", `logs header "X-Api-Key"`},
		{"descriptor without default", "default_value: anonymous", "skip_if_absent: false", "quota bypass"},
		{"undefined cluster", "envoy_grpc: {cluster_name: levy}", "envoy_grpc: {cluster_name: levi}", `cluster "levi" is not defined`},
		{"undefined route cluster", "cluster: app", "cluster: api", `route cluster "api" is not defined`},
		{"gRPC cluster without HTTP/2", "http2_protocol_options: {}", "http_protocol_options: {}", "is not HTTP/2"},
		{"admin on all interfaces", "address: 127.0.0.1, port_value: 9901", "address: 0.0.0.0, port_value: 9901", "admin: listens on"},
		{"duplicate key", "domain: levy", "domain: levy\n              domain: levy", "already set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(string(orig), tt.old) {
				t.Fatalf("envoy/envoy.yaml no longer contains %q: update this case", tt.old)
			}
			file := filepath.Join(t.TempDir(), "envoy.yaml")
			broken := strings.Replace(string(orig), tt.old, tt.give, 1)
			if err := os.WriteFile(file, []byte(broken), 0o600); err != nil {
				t.Fatal(err)
			}
			err := validateEnvoyFile(file)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("validateEnvoyFile() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestValidatorRejectsRateLimitBeforeExtAuthz(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "envoy", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadBootstrap(data)
	if err != nil {
		t.Fatal(err)
	}
	hcms := collect[*hcmv3.HttpConnectionManager](b)
	if len(hcms) == 0 {
		t.Fatal("no http_connection_manager")
	}
	f := hcms[0].GetHttpFilters()
	f[0], f[1] = f[1], f[0]
	err = checkFilterOrder("swapped", f)
	if err == nil || !strings.Contains(err.Error(), "ext_authz, then ratelimit, then router") {
		t.Errorf("checkFilterOrder() = %v, want the order error", err)
	}
}

func TestValidatorRejectsBrokenManifests(t *testing.T) {
	_, k8sFiles, _ := deployFiles(t)
	orig := readFiles(t, k8sFiles)
	tests := []struct {
		name string
		file string
		old  string // replaced once in file
		give string
		want string
	}{
		{"misspelled Deployment field", "k8s/levy.yaml", "  replicas: 2", "  replica: 2", `unknown field "replica"`},
		{"wrong case in Deployment field", "k8s/levy.yaml", "  replicas: 2", "  Replicas: 2", `unknown field "spec.Replicas"`},
		{"misspelled Istio field", "k8s/istio.yaml", "action: CUSTOM", "acton: CUSTOM", `unknown field "acton"`},
		{"misspelled mesh config field", "k8s/istio-mesh.yaml", "        failOpen: false", "        failopen: false", `unknown field "failopen"`},
		{"misspelled field in EnvoyFilter value", "k8s/istio.yaml", "failure_mode_deny: false", "failure_mode_denied: false", `unknown field "failure_mode_denied"`},
		{"wrong @type in EnvoyFilter value", "k8s/istio.yaml", "ratelimit.v3.RateLimit\n", "ratelimit.v2.RateLimit\n", "unable to resolve"},
		{"unknown kind", "k8s/redis.yaml", "kind: Service", "kind: Servise", "not covered by test/deploy"},
		{"readiness on wrong path", "k8s/levy.yaml", "path: /readyz", "path: /ready", `want "/readyz"`},
		{"probe on undeclared port", "k8s/levy.yaml", "httpGet: {path: /healthz, port: http}", "httpGet: {path: /healthz, port: metrics}", "port metrics is not one of its ports"},
		{"grpc port not marked grpc", "k8s/levy.yaml", "  - name: grpc\n    port: 8081\n    targetPort: grpc\n    protocol: TCP\n    appProtocol: grpc\n", "  - name: tcp\n    port: 8081\n    targetPort: grpc\n    protocol: TCP\n", "istio#50881"},
		{"selector misses pods", "k8s/redis.yaml", "  selector:\n    app.kubernetes.io/name: redis\n", "  selector:\n    app.kubernetes.io/name: rediss\n", "matches no Deployment"},
		{"redis address wrong", "k8s/levy.yaml", "value: redis.levy.svc:6379", "value: redis.levy.svc:6380", "LEVY_REDIS_ADDR"},
		{"authz fails open", "k8s/istio-mesh.yaml", "        failOpen: false", "        failOpen: true", "failOpen is true"},
		{"unknown provider", "k8s/istio.yaml", "    name: levy-authz\n  rules:", "    name: levy-auth\n  rules:", `CUSTOM provider "levy-auth"`},
		{"vhost descriptor without default", "k8s/istio.yaml", "default_value: anonymous", "skip_if_absent: true", "quota bypass"},
		{"rate limit cluster not the levy Service", "k8s/istio.yaml", "outbound|8081||levy.levy.svc.cluster.local", "outbound|8080||levy.levy.svc.cluster.local", "is not grpc"},
		{"unsupported IstioOperator field", "k8s/istio-mesh.yaml", "spec:\n", "spec:\n  profile: default\n", "only spec.meshConfig is validated"},
		{"no namespace", "k8s/hpa.yaml", "  namespace: levy\n", "", "set metadata.namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(string(orig[tt.file]), tt.old) {
				t.Fatalf("%s no longer contains %q: update this case", tt.file, tt.old)
			}
			files := make(map[string][]byte, len(orig))
			for f, data := range orig {
				files[f] = data
			}
			files[tt.file] = []byte(strings.Replace(string(orig[tt.file]), tt.old, tt.give, 1))
			err := validateManifests(files)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("validateManifests() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// The levy.yaml shipped in a ConfigMap must load in levy itself.
func TestShippedLevyConfigsLoad(t *testing.T) {
	cfgs := levyConfigs(t)
	env := levyEnv(t)
	if len(cfgs) == 0 {
		t.Fatal("no ConfigMap ships a levy.yaml")
	}
	for file, text := range cfgs {
		cfg, err := config.Parse(text, file+" (ConfigMap levy.yaml)")
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		cfg.ApplyEnv(func(name string) (string, bool) { v, ok := env[name]; return v, ok })
		if err := server.Validate(cfg); err != nil {
			t.Errorf("%v", err)
		}
	}
}

// levyEnv is the LEVY_* environment the shipped Deployments give levy.
func levyEnv(t *testing.T) map[string]string {
	t.Helper()
	_, k8sFiles, _ := deployFiles(t)
	m, err := decodeManifests(readFiles(t, k8sFiles))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, d := range m.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				if strings.HasPrefix(e.Name, "LEVY_") && e.ValueFrom == nil {
					env[e.Name] = e.Value
				}
			}
		}
	}
	return env
}
