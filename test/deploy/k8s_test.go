package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rlfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	securityv1beta1 "istio.io/api/security/v1beta1"
	telemetryv1alpha1 "istio.io/api/telemetry/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// header is what every manifest document starts with.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// istioObject is an Istio custom resource whose spec is an istio.io/api proto.
type istioObject struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            json.RawMessage   `json:"spec"`
}

// istioDoc is a decoded Istio resource.
type istioDoc[T proto.Message] struct {
	meta metav1.ObjectMeta
	spec T
}

// manifests holds every decoded document of a set of files, by kind.
type manifests struct {
	namespaces    []*corev1.Namespace
	configMaps    []*corev1.ConfigMap
	deployments   []*appsv1.Deployment
	services      []*corev1.Service
	pdbs          []*policyv1.PodDisruptionBudget
	hpas          []*autoscalingv2.HorizontalPodAutoscaler
	meshConfigs   []istioDoc[*meshv1alpha1.MeshConfig]
	authzPolicies []istioDoc[*securityv1beta1.AuthorizationPolicy]
	telemetries   []istioDoc[*telemetryv1alpha1.Telemetry]
	envoyFilters  []istioDoc[*networkingv1alpha3.EnvoyFilter]

	// Kinds the Helm chart renders (chart_test.go).
	serviceAccounts []*corev1.ServiceAccount
	secrets         []*corev1.Secret
	pvcs            []*corev1.PersistentVolumeClaim
	networkPolicies []*networkingv1.NetworkPolicy
	serviceMonitors []*monitoringv1.ServiceMonitor
	prometheusRules []*monitoringv1.PrometheusRule

	where map[any]string // decoded object -> "file#doc Kind namespace/name"
	files map[any]string // decoded object -> file
}

type decoder func(m *manifests, raw []byte, where, file string) error

// decoders maps "apiVersion Kind" to a strict decoder. A document of any other kind is
// an error: nothing in k8s/ goes unvalidated.
var decoders = map[string]decoder{
	"v1 Namespace":                            k8sDecoder(func(m *manifests, o *corev1.Namespace) { m.namespaces = append(m.namespaces, o) }),
	"v1 ConfigMap":                            k8sDecoder(func(m *manifests, o *corev1.ConfigMap) { m.configMaps = append(m.configMaps, o) }),
	"v1 Service":                              k8sDecoder(func(m *manifests, o *corev1.Service) { m.services = append(m.services, o) }),
	"apps/v1 Deployment":                      k8sDecoder(func(m *manifests, o *appsv1.Deployment) { m.deployments = append(m.deployments, o) }),
	"policy/v1 PodDisruptionBudget":           k8sDecoder(func(m *manifests, o *policyv1.PodDisruptionBudget) { m.pdbs = append(m.pdbs, o) }),
	"autoscaling/v2 HorizontalPodAutoscaler":  k8sDecoder(func(m *manifests, o *autoscalingv2.HorizontalPodAutoscaler) { m.hpas = append(m.hpas, o) }),
	"v1 ServiceAccount":                       k8sDecoder(func(m *manifests, o *corev1.ServiceAccount) { m.serviceAccounts = append(m.serviceAccounts, o) }),
	"v1 Secret":                               k8sDecoder(func(m *manifests, o *corev1.Secret) { m.secrets = append(m.secrets, o) }),
	"v1 PersistentVolumeClaim":                k8sDecoder(func(m *manifests, o *corev1.PersistentVolumeClaim) { m.pvcs = append(m.pvcs, o) }),
	"networking.k8s.io/v1 NetworkPolicy":      k8sDecoder(func(m *manifests, o *networkingv1.NetworkPolicy) { m.networkPolicies = append(m.networkPolicies, o) }),
	"monitoring.coreos.com/v1 ServiceMonitor": k8sDecoder(func(m *manifests, o *monitoringv1.ServiceMonitor) { m.serviceMonitors = append(m.serviceMonitors, o) }),
	"monitoring.coreos.com/v1 PrometheusRule": k8sDecoder(func(m *manifests, o *monitoringv1.PrometheusRule) { m.prometheusRules = append(m.prometheusRules, o) }),
	"install.istio.io/v1alpha1 IstioOperator": decodeIstioOperator,
	"security.istio.io/v1 AuthorizationPolicy": istioDecoder(func(m *manifests, d istioDoc[*securityv1beta1.AuthorizationPolicy]) {
		m.authzPolicies = append(m.authzPolicies, d)
	}),
	"security.istio.io/v1beta1 AuthorizationPolicy": istioDecoder(func(m *manifests, d istioDoc[*securityv1beta1.AuthorizationPolicy]) {
		m.authzPolicies = append(m.authzPolicies, d)
	}),
	"telemetry.istio.io/v1 Telemetry": istioDecoder(func(m *manifests, d istioDoc[*telemetryv1alpha1.Telemetry]) {
		m.telemetries = append(m.telemetries, d)
	}),
	"telemetry.istio.io/v1alpha1 Telemetry": istioDecoder(func(m *manifests, d istioDoc[*telemetryv1alpha1.Telemetry]) {
		m.telemetries = append(m.telemetries, d)
	}),
	"networking.istio.io/v1alpha3 EnvoyFilter": istioDecoder(func(m *manifests, d istioDoc[*networkingv1alpha3.EnvoyFilter]) {
		m.envoyFilters = append(m.envoyFilters, d)
	}),
}

// k8sDecoder decodes a Kubernetes object strictly: unknown or misspelled fields and
// duplicate keys are errors, as `kubectl apply --validate=strict` would report.
func k8sDecoder[T any](add func(*manifests, *T)) decoder {
	return func(m *manifests, raw []byte, where, file string) error {
		obj := new(T)
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			return err
		}
		// encoding/json matches field names case-insensitively; the API server does not.
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return err
		}
		strict, err := kjson.UnmarshalStrict(js, new(T), kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
		if err := errors.Join(append(strict, err)...); err != nil {
			return err
		}
		m.where[obj], m.files[obj] = where, file
		add(m, obj)
		return nil
	}
}

// istioDecoder decodes an Istio resource: the envelope strictly, the spec with protojson
// into the istio.io/api message, unknown fields rejected.
func istioDecoder[T proto.Message](add func(*manifests, istioDoc[T])) decoder {
	return func(m *manifests, raw []byte, where, file string) error {
		var obj istioObject
		if err := yaml.UnmarshalStrict(raw, &obj); err != nil {
			return err
		}
		var zero T
		spec := zero.ProtoReflect().New().Interface().(T)
		if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(obj.Spec, spec); err != nil {
			return fmt.Errorf("spec: %w", err)
		}
		m.where[spec], m.files[spec] = where, file
		add(m, istioDoc[T]{meta: obj.Metadata, spec: spec})
		return nil
	}
}

// decodeIstioOperator checks an IstioOperator that carries only meshConfig: the mesh
// config is decoded into istio.io/api's MeshConfig. Other spec fields (components,
// values) are not validated here and therefore rejected.
func decodeIstioOperator(m *manifests, raw []byte, where, file string) error {
	var obj struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            struct {
			MeshConfig json.RawMessage `json:"meshConfig"`
		} `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(raw, &obj); err != nil {
		return fmt.Errorf("%w (only spec.meshConfig is validated by test/deploy)", err)
	}
	mc := &meshv1alpha1.MeshConfig{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(obj.Spec.MeshConfig, mc); err != nil {
		return fmt.Errorf("spec.meshConfig: %w", err)
	}
	m.where[mc], m.files[mc] = where, file
	m.meshConfigs = append(m.meshConfigs, istioDoc[*meshv1alpha1.MeshConfig]{meta: obj.Metadata, spec: mc})
	return nil
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs splits a multi-document YAML file.
func splitDocs(data []byte) [][]byte {
	return slices.Collect(func(yield func([]byte) bool) {
		for _, d := range docSeparator.Split(string(data), -1) {
			if !yield([]byte(d)) {
				return
			}
		}
	})
}

// decodeManifests decodes every document of files (name -> content).
func decodeManifests(files map[string][]byte) (*manifests, error) {
	m := &manifests{where: map[any]string{}, files: map[any]string{}}
	var p problems
	for _, file := range slices.Sorted(maps.Keys(files)) {
		for i, raw := range splitDocs(files[file]) {
			js, err := yaml.YAMLToJSONStrict(raw)
			if err != nil {
				p.addf("%s#%d: yaml: %w", file, i, err)
				continue
			}
			if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
				continue // empty or comment-only document
			}
			var h header
			if err := json.Unmarshal(js, &h); err != nil {
				p.addf("%s#%d: not a Kubernetes object: %w", file, i, err)
				continue
			}
			where := fmt.Sprintf("%s#%d %s %s", file, i, h.Kind, path.Join(h.Metadata.Namespace, h.Metadata.Name))
			dec, ok := decoders[h.APIVersion+" "+h.Kind]
			if !ok {
				p.addf("%s: apiVersion %q kind %q is not covered by test/deploy: add a decoder and checks for it", where, h.APIVersion, h.Kind)
				continue
			}
			if err := dec(m, raw, where, file); err != nil {
				p.addf("%s: %w", where, err)
			}
		}
	}
	return m, p.err()
}

// validateManifests decodes the Kubernetes and Istio files and checks each document and
// the references between them.
func validateManifests(files map[string][]byte) error {
	m, err := decodeManifests(files)
	if err != nil {
		return err
	}
	var p problems
	p.add(m.checkNamespaces()...)
	p.add(m.checkConfigMaps()...)
	p.add(m.checkDeployments()...)
	p.add(m.checkServices()...)
	p.add(m.checkPDBs()...)
	p.add(m.checkHPAs()...)
	p.add(m.checkLevy()...)
	p.add(m.checkIstio()...)
	return p.err()
}

func (m *manifests) checkNamespaces() []error {
	var p problems
	declared := map[string]bool{"istio-system": true} // Istio's own namespace exists wherever Istio runs
	for _, ns := range m.namespaces {
		declared[ns.Name] = true
	}
	check := func(obj any, meta metav1.ObjectMeta) {
		switch {
		case meta.Name == "":
			p.addf("%s: metadata.name is empty", m.where[obj])
		case meta.Namespace == "":
			p.addf("%s: set metadata.namespace, or it lands in whatever namespace kubectl points at", m.where[obj])
		case !declared[meta.Namespace]:
			p.addf("%s: namespace %q is not declared in k8s/", m.where[obj], meta.Namespace)
		}
	}
	for _, o := range m.configMaps {
		check(o, o.ObjectMeta)
	}
	for _, o := range m.deployments {
		check(o, o.ObjectMeta)
	}
	for _, o := range m.services {
		check(o, o.ObjectMeta)
	}
	for _, o := range m.pdbs {
		check(o, o.ObjectMeta)
	}
	for _, o := range m.hpas {
		check(o, o.ObjectMeta)
	}
	for _, d := range m.authzPolicies {
		check(d.spec, d.meta)
	}
	for _, d := range m.telemetries {
		check(d.spec, d.meta)
	}
	for _, d := range m.envoyFilters {
		check(d.spec, d.meta)
	}
	return p
}

// checkConfigMaps asserts embedded YAML files parse.
func (m *manifests) checkConfigMaps() []error {
	var p problems
	for _, cm := range m.configMaps {
		for key, text := range cm.Data {
			if !strings.HasSuffix(key, ".yaml") && !strings.HasSuffix(key, ".yml") {
				continue
			}
			var v map[string]any
			if err := yaml.UnmarshalStrict([]byte(text), &v); err != nil {
				p.addf("%s: data[%q] is not a YAML mapping: %w", m.where[cm], key, err)
			} else if len(v) == 0 {
				p.addf("%s: data[%q] is empty", m.where[cm], key)
			}
		}
	}
	return p
}

func (m *manifests) checkDeployments() []error {
	var p problems
	for _, d := range m.deployments {
		w := m.where[d]
		sel := d.Spec.Selector
		switch {
		case sel == nil || len(sel.MatchLabels) == 0:
			p.addf("%s: spec.selector.matchLabels is empty", w)
		case len(sel.MatchExpressions) > 0:
			p.addf("%s: selector.matchExpressions is not covered by test/deploy", w)
		case !selects(sel.MatchLabels, d.Spec.Template.Labels):
			p.addf("%s: selector %v does not match the pod template labels %v", w, sel.MatchLabels, d.Spec.Template.Labels)
		}
		pod := d.Spec.Template.Spec
		if len(pod.Containers) == 0 {
			p.addf("%s: no containers", w)
		}
		for i := range pod.Containers {
			c := &pod.Containers[i]
			if c.Image == "" {
				p.addf("%s: container %q has no image", w, c.Name)
			}
			for name, pr := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe, "startupProbe": c.StartupProbe} {
				if port, ok := probePort(pr); ok && containerPort(c, port) == nil {
					p.addf("%s: container %q %s port %s is not one of its ports", w, c.Name, name, port.String())
				}
			}
			for _, vm := range c.VolumeMounts {
				if !slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name }) {
					p.addf("%s: container %q mounts undeclared volume %q", w, c.Name, vm.Name)
				}
			}
		}
		for _, v := range pod.Volumes {
			if v.ConfigMap != nil && m.configMap(d.Namespace, v.ConfigMap.Name) == nil {
				p.addf("%s: volume %q uses ConfigMap %q, which is not in k8s/", w, v.Name, v.ConfigMap.Name)
			}
		}
	}
	return p
}

func (m *manifests) checkServices() []error {
	var p problems
	for _, s := range m.services {
		w := m.where[s]
		if len(s.Spec.Selector) == 0 {
			p.addf("%s: no selector", w)
			continue
		}
		backends := m.selectedDeployments(s.Namespace, s.Spec.Selector)
		if len(backends) == 0 {
			p.addf("%s: selector %v matches no Deployment's pod labels", w, s.Spec.Selector)
			continue
		}
		for _, sp := range s.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			for _, d := range backends {
				cp := podPort(d, target)
				if cp == nil {
					p.addf("%s: port %q targets %s, which Deployment %s does not declare", w, sp.Name, target.String(), d.Name)
					continue
				}
				if (cp.Name == "grpc" || strings.HasPrefix(cp.Name, "grpc-")) && !isGRPCServicePort(sp) {
					p.addf("%s: port %q reaches gRPC port %q: name it grpc or grpc-* or set appProtocol: grpc, or Istio speaks HTTP/1.1 to it (istio#50881)", w, sp.Name, cp.Name)
				}
			}
		}
	}
	return p
}

func (m *manifests) checkPDBs() []error {
	var p problems
	for _, pdb := range m.pdbs {
		w := m.where[pdb]
		sel := pdb.Spec.Selector
		if sel == nil || len(sel.MatchLabels) == 0 || len(sel.MatchExpressions) > 0 {
			p.addf("%s: want a selector with matchLabels only", w)
			continue
		}
		backends := m.selectedDeployments(pdb.Namespace, sel.MatchLabels)
		if len(backends) == 0 {
			p.addf("%s: selector %v matches no Deployment's pod labels", w, sel.MatchLabels)
		}
		for _, d := range backends {
			ma := pdb.Spec.MinAvailable
			if ma != nil && ma.Type == intstr.Int && d.Spec.Replicas != nil && ma.IntVal >= *d.Spec.Replicas {
				p.addf("%s: minAvailable %d >= %d replicas of %s: node drains would block forever", w, ma.IntVal, *d.Spec.Replicas, d.Name)
			}
		}
	}
	return p
}

func (m *manifests) checkHPAs() []error {
	var p problems
	for _, h := range m.hpas {
		w := m.where[h]
		ref := h.Spec.ScaleTargetRef
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || m.deployment(h.Namespace, ref.Name) == nil {
			p.addf("%s: scaleTargetRef %s %s/%s is not a Deployment in k8s/", w, ref.APIVersion, ref.Kind, ref.Name)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 {
			p.addf("%s: minReplicas must be at least 2 so one replica survives a drain", w)
		}
		if h.Spec.MinReplicas != nil && h.Spec.MaxReplicas < *h.Spec.MinReplicas {
			p.addf("%s: maxReplicas %d < minReplicas %d", w, h.Spec.MaxReplicas, *h.Spec.MinReplicas)
		}
	}
	return p
}

// checkLevy asserts how the levy Deployment and Service are wired.
func (m *manifests) checkLevy() []error {
	var p problems
	d := m.deployment("levy", "levy")
	if d == nil {
		return append(p, fmt.Errorf("no Deployment levy/levy in k8s/"))
	}
	w := m.where[d]
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		p.addf("%s: want at least 2 replicas", w)
	}
	c := container(d, "levy")
	if c == nil {
		return append(p, fmt.Errorf("%s: no container named levy", w))
	}
	for _, tt := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
		{"livenessProbe", c.LivenessProbe, "/healthz"},
	} {
		if tt.probe == nil || tt.probe.HTTPGet == nil {
			p.addf("%s: %s must be an httpGet on %s", w, tt.name, tt.path)
			continue
		}
		if tt.probe.HTTPGet.Path != tt.path {
			p.addf("%s: %s path is %q, want %q", w, tt.name, tt.probe.HTTPGet.Path, tt.path)
		}
		if cp := containerPort(c, tt.probe.HTTPGet.Port); cp == nil || cp.ContainerPort != 8080 {
			p.addf("%s: %s port %s is not the declared HTTP container port 8080", w, tt.name, tt.probe.HTTPGet.Port.String())
		}
	}
	if cp := containerPort(c, intstr.FromInt32(8081)); cp == nil {
		p.addf("%s: container does not declare the gRPC port 8081", w)
	}

	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["LEVY_STORE"] != "redis" {
		p.addf("%s: LEVY_STORE is %q, want redis: replicas must share state", w, env["LEVY_STORE"])
	}
	if addr := env["LEVY_REDIS_ADDR"]; m.serviceForAddr(addr, d.Namespace) == nil {
		p.addf("%s: LEVY_REDIS_ADDR %q is not host:port of a Service port in k8s/", w, addr)
	}

	// --config points into a mounted ConfigMap that has that key.
	cfg := flagValue(append(slices.Clone(c.Command), c.Args...), "--config")
	if cfg == "" {
		p.addf("%s: levy is not started with --config", w)
	} else if !m.mountsConfigMapKey(d, c, cfg) {
		p.addf("%s: --config %s is not a key of a ConfigMap mounted at %s", w, cfg, path.Dir(cfg))
	}

	s := m.service("levy", "levy")
	if s == nil {
		return append(p, fmt.Errorf("no Service levy/levy in k8s/"))
	}
	if sp := servicePort(s, 8081); sp == nil || !isGRPCServicePort(*sp) {
		p.addf("%s: port 8081 must be named grpc or grpc-* or have appProtocol grpc (istio#50881)", m.where[s])
	}
	if servicePort(s, 8080) == nil {
		p.addf("%s: no port 8080 (http: /healthz, /readyz, /metrics)", m.where[s])
	}
	if !selects(s.Spec.Selector, d.Spec.Template.Labels) {
		p.addf("%s: selector %v does not select the levy pods %v", m.where[s], s.Spec.Selector, d.Spec.Template.Labels)
	}
	return p
}

// checkIstio asserts the mesh providers, policies, telemetry and EnvoyFilter agree with
// each other and with the levy Service.
func (m *manifests) checkIstio() []error {
	var p problems
	type provider struct {
		where string
		p     *meshv1alpha1.MeshConfig_ExtensionProvider
	}
	providers := map[string]provider{}
	for _, mc := range m.meshConfigs {
		w := m.where[mc.spec]
		for _, ep := range mc.spec.GetExtensionProviders() {
			if _, dup := providers[ep.GetName()]; dup {
				p.addf("%s: extension provider %q is declared twice", w, ep.GetName())
			}
			providers[ep.GetName()] = provider{w, ep}
			switch {
			case ep.GetEnvoyExtAuthzGrpc() != nil:
				g := ep.GetEnvoyExtAuthzGrpc()
				if g.GetFailOpen() {
					p.addf("%s: provider %q: failOpen is true: when levy is unreachable every request goes through", w, ep.GetName())
				}
				if g.GetTimeout() == nil {
					p.addf("%s: provider %q: set timeout (Istio's default is 600s)", w, ep.GetName())
				}
				if g.GetStatusOnError() != "503" {
					p.addf("%s: provider %q: statusOnError is %q, want \"503\"", w, ep.GetName(), g.GetStatusOnError())
				}
				p.add(m.checkGRPCTarget(w+": provider "+ep.GetName(), g.GetService(), g.GetPort()))
			case ep.GetEnvoyHttpAls() != nil:
				a := ep.GetEnvoyHttpAls()
				if a.GetLogName() != levyLogName {
					p.addf("%s: provider %q: logName is %q, want %q", w, ep.GetName(), a.GetLogName(), levyLogName)
				}
				p.add(checkLoggedHeaders(w+": provider "+ep.GetName(), a.GetAdditionalRequestHeadersToLog(),
					a.GetAdditionalResponseHeadersToLog(), a.GetAdditionalResponseTrailersToLog())...)
				p.add(m.checkGRPCTarget(w+": provider "+ep.GetName(), a.GetService(), a.GetPort()))
			default:
				p.addf("%s: provider %q: this provider type is not covered by test/deploy", w, ep.GetName())
			}
		}
	}

	var customSelectors []map[string]string
	for _, ap := range m.authzPolicies {
		w := m.where[ap.spec]
		if ap.spec.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM {
			continue
		}
		name := ap.spec.GetProvider().GetName()
		if pr, ok := providers[name]; !ok || pr.p.GetEnvoyExtAuthzGrpc() == nil {
			p.addf("%s: CUSTOM provider %q is not an envoyExtAuthzGrpc provider in the mesh config; Istio then denies everything (istio#40944)", w, name)
		}
		if len(ap.spec.GetSelector().GetMatchLabels()) == 0 && len(ap.spec.GetTargetRefs()) == 0 && ap.spec.GetTargetRef() == nil {
			p.addf("%s: CUSTOM policy without selector or targetRefs applies to every workload in %s", w, ap.meta.Namespace)
		}
		customSelectors = append(customSelectors, ap.spec.GetSelector().GetMatchLabels())
	}

	for _, tm := range m.telemetries {
		for _, al := range tm.spec.GetAccessLogging() {
			for _, pr := range al.GetProviders() {
				if _, ok := providers[pr.GetName()]; !ok {
					p.addf("%s: access-log provider %q is not in the mesh config", m.where[tm.spec], pr.GetName())
				}
			}
		}
	}

	for _, ef := range m.envoyFilters {
		w := m.where[ef.spec]
		labels := ef.spec.GetWorkloadSelector().GetLabels()
		for i, cp := range ef.spec.GetConfigPatches() {
			pw := fmt.Sprintf("%s: configPatches[%d] (%s)", w, i, cp.GetApplyTo())
			js, err := protojson.Marshal(cp.GetPatch().GetValue())
			if err != nil {
				p.addf("%s: %w", pw, err)
				continue
			}
			switch cp.GetApplyTo() {
			case networkingv1alpha3.EnvoyFilter_HTTP_FILTER:
				p.add(m.checkHTTPFilterPatch(pw, cp, js, labels, customSelectors)...)
			case networkingv1alpha3.EnvoyFilter_VIRTUAL_HOST:
				p.add(checkVirtualHostPatch(pw, cp, js)...)
			default:
				p.addf("%s: applyTo %s is not covered by test/deploy", pw, cp.GetApplyTo())
			}
		}
	}
	return p
}

// checkHTTPFilterPatch decodes an HTTP_FILTER patch value as an Envoy HttpFilter.
func (m *manifests) checkHTTPFilterPatch(pw string, cp *networkingv1alpha3.EnvoyFilter_EnvoyConfigObjectPatch, js []byte,
	labels map[string]string, customSelectors []map[string]string,
) []error {
	var p problems
	f := &hcmv3.HttpFilter{}
	if err := decodeProtoJSON(js, f); err != nil {
		return append(p, fmt.Errorf("%s: %w", pw, err))
	}
	cfg, err := f.GetTypedConfig().UnmarshalNew()
	if err != nil {
		return append(p, fmt.Errorf("%s: typed_config: %w", pw, err))
	}
	rl, ok := cfg.(*rlfilterv3.RateLimit)
	if !ok {
		return append(p, fmt.Errorf("%s: filter %T is not covered by test/deploy", pw, cfg))
	}
	for _, e := range checkRateLimitFilter(rl) {
		p.addf("%s: %w", pw, e)
	}
	// Placed just before the router: that is after Istio's ext_authz filter.
	lm := cp.GetMatch().GetListener().GetFilterChain().GetFilter()
	if cp.GetPatch().GetOperation() != networkingv1alpha3.EnvoyFilter_Patch_INSERT_BEFORE ||
		lm.GetName() != "envoy.filters.network.http_connection_manager" || lm.GetSubFilter().GetName() != "envoy.filters.http.router" {
		p.addf("%s: insert the ratelimit filter INSERT_BEFORE envoy.filters.http.router so it runs after ext_authz", pw)
	}
	// The same workloads must run levy's ext_authz, or there is no consumer metadata.
	if !slices.ContainsFunc(customSelectors, func(s map[string]string) bool { return maps.Equal(s, labels) }) {
		p.addf("%s: workloadSelector %v matches no CUSTOM AuthorizationPolicy selector: the ratelimit filter would run without levy's ext_authz", pw, labels)
	}
	// outbound|<port>||<host> is Istio's cluster for a Service port.
	cluster := rl.GetRateLimitService().GetGrpcService().GetEnvoyGrpc().GetClusterName()
	parts := strings.Split(cluster, "|")
	if len(parts) != 4 || parts[0] != "outbound" {
		return append(p, fmt.Errorf("%s: rate_limit_service cluster %q is not an Istio outbound|<port>||<host> cluster", pw, cluster))
	}
	port, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return append(p, fmt.Errorf("%s: rate_limit_service cluster %q: port: %w", pw, cluster, err))
	}
	p.add(m.checkGRPCTarget(pw+": rate_limit_service", parts[3], uint32(port)))
	return p
}

// checkVirtualHostPatch decodes a VIRTUAL_HOST patch value as an Envoy VirtualHost. A
// MERGE value is partial, so it is merged into a minimal route as Istio does.
func checkVirtualHostPatch(pw string, cp *networkingv1alpha3.EnvoyFilter_EnvoyConfigObjectPatch, js []byte) []error {
	var p problems
	v := &routev3.VirtualHost{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, v); err != nil {
		return append(p, fmt.Errorf("%s: decode VirtualHost: %w", pw, err))
	}
	if cp.GetPatch().GetOperation() == networkingv1alpha3.EnvoyFilter_Patch_MERGE {
		base := &routev3.VirtualHost{Name: "istio-generated", Domains: []string{"*"}}
		proto.Merge(base, v)
		v = base
	}
	if err := validateDeep(v); err != nil {
		p.addf("%s: %w", pw, err)
	}
	for _, e := range checkRateLimits(v) {
		p.addf("%s: %w", pw, e)
	}
	return p
}

// checkGRPCTarget asserts host:port is a Service port in k8s/ that Istio treats as gRPC.
func (m *manifests) checkGRPCTarget(where, host string, port uint32) error {
	s := m.serviceForHost(host, "")
	if s == nil {
		return fmt.Errorf("%s: %q is not a Service in k8s/", where, host)
	}
	sp := servicePort(s, int32(port))
	if sp == nil {
		return fmt.Errorf("%s: Service %s/%s has no port %d", where, s.Namespace, s.Name, port)
	}
	if !isGRPCServicePort(*sp) {
		return fmt.Errorf("%s: Service %s/%s port %d is not grpc: Istio would speak HTTP/1.1 to it (istio#50881)", where, s.Namespace, s.Name, port)
	}
	return nil
}

// Lookups.

func (m *manifests) deployment(ns, name string) *appsv1.Deployment {
	for _, d := range m.deployments {
		if d.Namespace == ns && d.Name == name {
			return d
		}
	}
	return nil
}

func (m *manifests) service(ns, name string) *corev1.Service {
	for _, s := range m.services {
		if s.Namespace == ns && s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) configMap(ns, name string) *corev1.ConfigMap {
	for _, c := range m.configMaps {
		if c.Namespace == ns && c.Name == name {
			return c
		}
	}
	return nil
}

func (m *manifests) selectedDeployments(ns string, selector map[string]string) []*appsv1.Deployment {
	var out []*appsv1.Deployment
	for _, d := range m.deployments {
		if d.Namespace == ns && selects(selector, d.Spec.Template.Labels) {
			out = append(out, d)
		}
	}
	return out
}

// serviceForHost resolves name, name.ns, name.ns.svc or name.ns.svc.cluster.local.
func (m *manifests) serviceForHost(host, defaultNS string) *corev1.Service {
	host = strings.TrimSuffix(strings.TrimSuffix(host, ".cluster.local"), ".svc")
	name, ns, found := strings.Cut(host, ".")
	if !found {
		ns = defaultNS
	}
	return m.service(ns, name)
}

// serviceForAddr resolves host:port to a Service that has that port.
func (m *manifests) serviceForAddr(addr, defaultNS string) *corev1.Service {
	host, portText, ok := strings.Cut(addr, ":")
	port, err := strconv.ParseInt(portText, 10, 32)
	if !ok || err != nil {
		return nil
	}
	s := m.serviceForHost(host, defaultNS)
	if s == nil || servicePort(s, int32(port)) == nil {
		return nil
	}
	return s
}

// mountsConfigMapKey reports whether file is a key of a ConfigMap mounted into c.
func (m *manifests) mountsConfigMapKey(d *appsv1.Deployment, c *corev1.Container, file string) bool {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != path.Dir(file) || vm.SubPath != "" {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name != vm.Name || v.ConfigMap == nil || len(v.ConfigMap.Items) > 0 {
				continue
			}
			if cm := m.configMap(d.Namespace, v.ConfigMap.Name); cm != nil {
				if _, ok := cm.Data[path.Base(file)]; ok {
					return true
				}
			}
		}
	}
	return false
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func container(d *appsv1.Deployment, name string) *corev1.Container {
	for i := range d.Spec.Template.Spec.Containers {
		if c := &d.Spec.Template.Spec.Containers[i]; c.Name == name {
			return c
		}
	}
	return nil
}

// containerPort finds the port a probe or targetPort refers to, by name or number.
func containerPort(c *corev1.Container, port intstr.IntOrString) *corev1.ContainerPort {
	for i := range c.Ports {
		cp := &c.Ports[i]
		if (port.Type == intstr.String && cp.Name == port.StrVal) || (port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
			return cp
		}
	}
	return nil
}

func podPort(d *appsv1.Deployment, port intstr.IntOrString) *corev1.ContainerPort {
	for i := range d.Spec.Template.Spec.Containers {
		if cp := containerPort(&d.Spec.Template.Spec.Containers[i], port); cp != nil {
			return cp
		}
	}
	return nil
}

func probePort(pr *corev1.Probe) (intstr.IntOrString, bool) {
	switch {
	case pr == nil:
		return intstr.IntOrString{}, false
	case pr.HTTPGet != nil:
		return pr.HTTPGet.Port, true
	case pr.TCPSocket != nil:
		return pr.TCPSocket.Port, true
	case pr.GRPC != nil:
		return intstr.FromInt32(pr.GRPC.Port), true
	}
	return intstr.IntOrString{}, false // exec
}

func servicePort(s *corev1.Service, port int32) *corev1.ServicePort {
	for i := range s.Spec.Ports {
		if s.Spec.Ports[i].Port == port {
			return &s.Spec.Ports[i]
		}
	}
	return nil
}

// isGRPCServicePort applies Istio's protocol selection: a port name of grpc or grpc-*,
// or appProtocol grpc.
func isGRPCServicePort(sp corev1.ServicePort) bool {
	return sp.Name == "grpc" || strings.HasPrefix(sp.Name, "grpc-") || (sp.AppProtocol != nil && *sp.AppProtocol == "grpc")
}

// flagValue finds --name value or --name=value in a command line.
func flagValue(argv []string, name string) string {
	for i, a := range argv {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}
