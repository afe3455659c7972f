package await_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/await"
)

func TestPollReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	await.Until(t, 10*time.Second, func() bool { return n.Load() == 3 }, "three increments")
}

func TestPollReportsTheLastErrorAtTheTimeout(t *testing.T) {
	calls := 0
	err := await.Poll(20*time.Millisecond, func() error {
		calls++
		return errors.New("still 3, want 4")
	})
	if err == nil || err.Error() != "still 3, want 4" || calls < 2 {
		t.Fatalf("Poll: %v after %d calls, want the last error after several", err, calls)
	}
}

func TestPollStopsAtAHalt(t *testing.T) {
	exited := errors.New("the process exited")
	calls := 0
	err := await.Poll(10*time.Second, func() error {
		calls++
		return await.Halt(exited)
	})
	if !errors.Is(err, exited) || calls != 1 {
		t.Fatalf("Poll: %v after %d calls, want the halting error after one", err, calls)
	}
}

// A Buffer takes writes from several goroutines while the test reads it,
// and keeps every one (go test -race checks the sharing).
func TestBufferKeepsWhatGoroutinesWriteWhileTheTestReads(t *testing.T) {
	var b await.Buffer
	for i := range 4 {
		go func() {
			for range 100 {
				fmt.Fprintf(&b, "writer %d\n", i)
			}
		}()
	}
	await.Until(t, 10*time.Second, func() bool { return strings.Count(b.String(), "\n") == 400 }, "400 lines")
	for i := range 4 {
		if n := strings.Count(b.String(), fmt.Sprintf("writer %d\n", i)); n != 100 {
			t.Errorf("writer %d: %d lines, want 100", i, n)
		}
	}
}
