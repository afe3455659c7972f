// Package deploy holds the tests that validate levy's deployable configs: the Envoy
// bootstraps under envoy/, the Kubernetes and Istio manifests under k8s/, and the Helm
// chart under k8s/chart/levy, rendered in process with Helm's Go SDK (no helm binary, no
// cluster) with its default values and with others.
//
// Every file is decoded strictly into the types that Envoy (go-control-plane),
// Kubernetes (k8s.io/api) and Istio (istio.io/api) use, validated, and checked for the
// properties that keep levy safe to attach: ext_authz fails closed and runs before the
// ratelimit filter, rate-limit descriptors cannot be bypassed, API keys are never logged,
// and every cluster, Service, port and provider that one file names exists in another.
package deploy
