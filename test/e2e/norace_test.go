//go:build !race

package e2e

// raceBuild is whether this test binary runs with the race detector
// (race_test.go).
const raceBuild = false
