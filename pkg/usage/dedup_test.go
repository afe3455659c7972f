package usage

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestDedupRemembersForTheTTL(t *testing.T) {
	const ttl = 10 * time.Minute
	tests := []struct {
		name  string
		after time.Duration // since the first sighting
		want  bool          // seen as new again
	}{
		{name: "at once", after: 0, want: false},
		{name: "just inside the TTL", after: ttl - time.Second, want: false},
		{name: "after two TTLs", after: 2*ttl + time.Second, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDedup(ttl, 1_000_000, t0)
			k := d.key("req-1", t0.UnixNano())
			if !d.firstSeen(k, t0) {
				t.Fatal("first sighting reported as a duplicate")
			}
			if got := d.firstSeen(k, t0.Add(tt.after)); got != tt.want {
				t.Errorf("firstSeen after %v = %v, want %v", tt.after, got, tt.want)
			}
		})
	}
}

func TestDedupRemembersAcrossARotation(t *testing.T) {
	const ttl = time.Minute
	d := newDedup(ttl, 1_000_000, t0)
	k := d.key("req-1", t0.UnixNano())
	d.firstSeen(k, t0.Add(50*time.Second))
	// Other ids rotate every shard at t0+1m10s; req-1 moves to the
	// previous generation and is still known until a minute after that.
	for i := range 10 * dedupShards {
		d.firstSeen(d.key(fmt.Sprint("other-", i), 0), t0.Add(70*time.Second))
	}
	if d.firstSeen(k, t0.Add(109*time.Second)) {
		t.Error("id forgotten within the TTL after a rotation")
	}
}

func TestDedupStaysWithinItsBound(t *testing.T) {
	const limit = 10 * dedupShards
	d := newDedup(time.Hour, limit, t0)
	for i := range 100 * limit {
		d.firstSeen(d.key(fmt.Sprint("req-", i), t0.UnixNano()), t0)
	}
	if n := d.len(); n > limit {
		t.Errorf("set holds %d ids, want at most %d", n, limit)
	}
}

func TestDedupKeysOnRequestIDAndStartTime(t *testing.T) {
	d := newDedup(time.Hour, 1000, t0)
	if !d.firstSeen(d.key("reused", 1), t0) || !d.firstSeen(d.key("reused", 2), t0) {
		t.Error("a reused request id with a new start time was taken for a resend")
	}
}

func TestDedupAdmitsEachIDOnceUnderConcurrency(t *testing.T) {
	d := newDedup(time.Hour, 1_000_000, t0)
	const ids, workers = 2000, 8
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		new int
	)
	for range workers {
		wg.Go(func() {
			n := 0
			for i := range ids {
				if d.firstSeen(d.key(fmt.Sprint("req-", i), 0), t0) {
					n++
				}
			}
			mu.Lock()
			new += n
			mu.Unlock()
		})
	}
	wg.Wait()
	if new != ids {
		t.Errorf("%d ids admitted as new, want %d", new, ids)
	}
}
