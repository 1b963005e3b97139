// Package depspin pins dependencies that work in progress will import
// (issue 16: Envoy SDS types, Kubernetes API types for the manifest
// test). It is removed once they are imported for real.
package depspin

import (
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	_ "k8s.io/api/apps/v1"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/api/policy/v1"
	_ "k8s.io/api/rbac/v1"
	_ "sigs.k8s.io/yaml"
)
