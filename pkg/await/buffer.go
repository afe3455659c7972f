package await

import (
	"strings"
	"sync"
)

// Buffer is output that another goroutine or process writes (a process's
// stderr, a server's log) while the test reads it, to wait for a line or
// to show it in a failure. Write and String may be called concurrently;
// the zero value is empty and ready.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
