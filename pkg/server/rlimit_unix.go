//go:build unix

package server

import "syscall"

// openFileLimit is the process's limit on open files (RLIMIT_NOFILE): the
// soft limit in force and the hard one. Go raises the soft limit to the
// hard one when the process starts (since Go 1.19), as servers do, and
// gives child processes the original back; every connection takes one.
func openFileLimit() (soft, hard uint64, ok bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, 0, false
	}
	return uint64(r.Cur), uint64(r.Max), true
}
