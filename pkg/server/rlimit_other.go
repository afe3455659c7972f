//go:build !unix

package server

// openFileLimit is unknown off Unix.
func openFileLimit() (soft, hard uint64, ok bool) { return 0, 0, false }
