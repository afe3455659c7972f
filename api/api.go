// Package api holds levy's own contracts, embedded so that the binary
// serves what the repository describes: the OpenAPI 3.1 description of
// every HTTP route levy serves (openapi.yaml, served as /openapi.json) and
// the JSON Schema of levy.yaml (levy.schema.json, used by `levy config
// validate` and by editors).
package api

import (
	_ "embed"
	"sync"

	"sigs.k8s.io/yaml"
)

// OpenAPIYAML is api/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPIYAML []byte

// ConfigSchema is api/levy.schema.json, the JSON Schema of levy.yaml.
//
//go:embed levy.schema.json
var ConfigSchema []byte

// OpenAPIJSON is the OpenAPI description as JSON (converted once).
var OpenAPIJSON = sync.OnceValues(func() ([]byte, error) { return yaml.YAMLToJSON(OpenAPIYAML) })
