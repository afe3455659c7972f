package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A file written in chunks is applied once it stayed the same for a whole
// poll, never while it is half-written.
func TestWatchAppliesAFileOnlyOnceItIsStable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "levy.yaml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("plans: {}\n")
	ticks, stop, polled := make(chan time.Time), make(chan struct{}), make(chan struct{})
	applied := make(chan string, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watch([]string{path}, ticks, stop, func() {
			b, _ := os.ReadFile(path)
			applied <- string(b)
		}, func() { polled <- struct{}{} })
	}()
	// poll returns once the poll is done: no write of the test races with
	// the watcher reading the file.
	poll := func() { ticks <- time.Now(); <-polled }
	none := func(when string) {
		t.Helper()
		poll()
		select {
		case got := <-applied:
			t.Fatalf("%s: applied %q", when, got)
		default:
		}
	}

	write("plans: {free: {model: fre") // the first chunk
	none("after the first chunk")
	write("plans: {free: {model: freemium}}\nconsumers: [") // the second
	none("after the second chunk")
	write("plans: {free: {model: freemium}}\nconsumers: []\n") // the last
	none("after the last chunk")
	poll() // unchanged for a whole poll: applied
	poll()
	if got := <-applied; got != "plans: {free: {model: freemium}}\nconsumers: []\n" {
		t.Fatalf("applied %q", got)
	}
	none("with nothing changed")
	close(stop)
	<-done
}
