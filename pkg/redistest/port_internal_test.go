package redistest

import (
	"context"
	"strconv"
	"strings"
	"testing"
)

// A port another test's redis-server took between the pick and the bind
// is neither mistaken for this server (it answers pings too) nor a
// failure: the server starts on a fresh port.
func TestServerStartsOnAFreshPortWhenItsPortIsTaken(t *testing.T) {
	other := Start(t)
	taken, _ := strconv.Atoi(strings.TrimPrefix(other.Addr, "127.0.0.1:"))
	picks := 0
	pick := func(t testing.TB) int {
		picks++
		if picks == 1 {
			return taken
		}
		return freePort(t)
	}
	s := startFree(t, pick)
	if s.Addr == other.Addr || picks != 2 {
		t.Fatalf("started on %s after %d picks; the taken port was %s", s.Addr, picks, other.Addr)
	}
	if err := s.Client().Set(context.Background(), "k", "mine", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := other.Client().Exists(context.Background(), "k").Result(); err != nil || n != 0 {
		t.Fatalf("the other server holds this one's key: %d %v", n, err)
	}
}
