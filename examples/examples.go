// Package examples embeds levy's example configuration, which
// `levy serve --demo` serves.
package examples

import _ "embed"

// LevyYAML is examples/levy.yaml.
//
//go:embed levy.yaml
var LevyYAML []byte
