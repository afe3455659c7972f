//go:build race

package e2e

// raceBuild is whether this test binary runs with the race detector: the
// levy binary under test is then built with it too, so that a data race
// in the real process fails the suite as it would a unit test.
const raceBuild = true
