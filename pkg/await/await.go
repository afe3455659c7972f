// Package await waits, in tests, for what another goroutine or process
// will make true: it polls a condition until it holds or a timeout
// passes, instead of sleeping for a guessed time. A slow machine then
// costs a slower test, not a failing one, and a fast one waits no longer
// than it must. A Buffer keeps what that goroutine or process writes
// while the test reads it.
package await

import (
	"errors"
	"testing"
	"time"
)

// The first poll follows the first check by minWait; each wait after it
// doubles, up to maxWait: quick for what is nearly there, and few polls
// of what takes seconds (a poll may be a gRPC call or a CLI run).
const (
	minWait = time.Millisecond
	maxWait = 50 * time.Millisecond
)

// Until polls cond until it returns true; after timeout it fails t,
// naming what it waited for.
func Until(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	err := Poll(timeout, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
	if err != nil {
		t.Fatalf("waited %s for %s", timeout, what)
	}
}

// NoError polls f until it returns nil; after timeout it fails t with
// f's last error, which should say what was seen instead of what was
// wanted.
func NoError(t testing.TB, timeout time.Duration, f func() error, what string) {
	t.Helper()
	if err := Poll(timeout, f); err != nil {
		t.Fatalf("waited %s for %s; last: %v", timeout, what, err)
	}
}

// Holds checks that cond stays true for d, polling it: for a test whose
// subject is that nothing changes (a settlement is not applied twice), an
// absence that only a span of time can show. It fails t at the first
// poll that finds cond false.
func Holds(t testing.TB, d time.Duration, cond func() bool, what string) {
	t.Helper()
	end := time.Now().Add(d)
	for wait := minWait; ; wait = min(2*wait, maxWait) {
		if !cond() {
			t.Fatalf("%s stopped holding within %s", what, d)
		}
		if time.Now().After(end) {
			return
		}
		time.Sleep(wait)
	}
}

// Poll calls f until it returns nil, and then returns nil; after timeout,
// or at once when f returns an error wrapped by Halt, it returns f's last
// error. It is the loop under Until and NoError, for test-support code
// that reports failures its own way.
func Poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for wait := minWait; ; wait = min(2*wait, maxWait) {
		err := f()
		if err == nil {
			return nil
		}
		var h halted
		if errors.As(err, &h) {
			return h.err
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
	}
}

// Halt wraps err so that Poll stops at once: the condition can no longer
// come true (the process that would make it true has exited).
func Halt(err error) error { return halted{err} }

type halted struct{ err error }

func (h halted) Error() string { return h.err.Error() }
func (h halted) Unwrap() error { return h.err }
