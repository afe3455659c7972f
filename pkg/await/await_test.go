package await_test

import (
	"errors"
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
