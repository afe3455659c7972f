// Package examples embeds levy's demo configuration, the default for
// `levy serve` without --config.
package examples

import _ "embed"

// LevyYAML is examples/levy.yaml.
//
//go:embed levy.yaml
var LevyYAML []byte
