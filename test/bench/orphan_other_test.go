//go:build !linux

package bench

import "os/exec"

// dieWithParent does nothing where the kernel cannot kill a child with its
// parent: the benchmark's cleanups stop its servers.
func dieWithParent(*exec.Cmd) {}
