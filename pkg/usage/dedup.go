package usage

import (
	"hash/maphash"
	"sync"
	"time"
)

// dedupShards is how many independently locked parts a dedup set has.
const dedupShards = 64

// dedup remembers the requests already settled, so that an entry Envoy
// sends twice (two access-log configs, a resend after a reconnect) is
// applied once. It is bounded in time and size without a sweep: each shard
// keeps two generations of ids and drops the older one when the newer one
// is older than the TTL or holds its share of the bound. So an id is
// remembered for at least the TTL unless max/2 newer ids came since (spread
// over the shards), and the set never holds more than max ids.
type dedup struct {
	ttl    time.Duration
	perGen int // ids per generation per shard
	seed   maphash.Seed
	shards [dedupShards]dedupShard
}

// dedupKey identifies a request: its x-request-id's hash and its start
// time. Keeping the hash rather than the id keeps memory flat and the
// entry's strings collectable; with the start time in the key, two
// different requests collide only if they started in the same nanosecond
// and their ids' 64-bit hashes collide. A client that reuses one
// x-request-id for many requests does not make later ones look like
// resends, since their start times differ.
type dedupKey struct {
	id    uint64
	start int64
}

type dedupShard struct {
	mu        sync.Mutex
	cur, prev map[dedupKey]struct{}
	since     time.Time // when cur became current
	_         [40]byte  // keep shards on separate cache lines
}

func newDedup(ttl time.Duration, limit int, now time.Time) *dedup {
	d := &dedup{ttl: ttl, perGen: max(limit/2/dedupShards, 1), seed: maphash.MakeSeed()}
	for i := range d.shards {
		d.shards[i].cur = map[dedupKey]struct{}{}
		d.shards[i].since = now
	}
	return d
}

func (d *dedup) key(requestID string, start int64) dedupKey {
	return dedupKey{id: maphash.String(d.seed, requestID), start: start}
}

// firstSeen records k and reports whether it is new.
func (d *dedup) firstSeen(k dedupKey, now time.Time) bool {
	s := &d.shards[(k.id^uint64(k.start))%dedupShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if age := now.Sub(s.since); age >= 2*d.ttl {
		// Both generations are older than the TTL.
		s.prev, s.cur, s.since = nil, make(map[dedupKey]struct{}, len(s.cur)), now
	} else if age >= d.ttl {
		s.rotate(now)
	}
	if _, dup := s.cur[k]; dup {
		return false
	}
	if _, dup := s.prev[k]; dup {
		return false
	}
	if len(s.cur) >= d.perGen {
		s.rotate(now)
	}
	s.cur[k] = struct{}{}
	return true
}

// rotate makes the current generation the previous one, dropping the
// previous one.
func (s *dedupShard) rotate(now time.Time) {
	s.prev, s.cur, s.since = s.cur, make(map[dedupKey]struct{}, len(s.cur)), now
}

// len is how many ids the set holds.
func (d *dedup) len() int {
	n := 0
	for i := range d.shards {
		s := &d.shards[i]
		s.mu.Lock()
		n += len(s.cur) + len(s.prev)
		s.mu.Unlock()
	}
	return n
}
