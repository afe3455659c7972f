// Package deploy holds the tests that validate levy's deployable configs: the Envoy
// bootstraps under envoy/ and the Kubernetes and Istio manifests under k8s/.
//
// Every file is decoded strictly into the types that Envoy (go-control-plane),
// Kubernetes (k8s.io/api) and Istio (istio.io/api) use, validated, and checked for the
// properties that keep levy safe to attach: ext_authz fails closed and runs before the
// ratelimit filter, rate-limit descriptors cannot be bypassed, API keys are never logged,
// and every cluster, Service, port and provider that one file names exists in another.
//
// protect_test.go goes further: it starts levy in process on the config shipped beside the
// files (examples/levy.yaml for envoy/, the ConfigMap's levy.yaml for k8s/), builds each
// rate_limits entry's descriptor as Envoy would after levy's ext_authz allowed a request, and
// checks that levy has a rule for it and refuses it past its limit.
package deploy
