package history

import (
	"sync"
	"sync/atomic"
	"time"
)

// Reason is why a decision denied, as history counts it.
type Reason uint8

// The denial reasons history counts.
const (
	ReasonRate Reason = iota
	ReasonQuota
	ReasonCap
)

// Counter counts one API key's decisions at decision time: an atomic add
// to a slot of the current hour (two slots, by the hour's parity, so that
// a flush late in an hour never takes the next hour's counts for its
// own). ext_authz holds one per key; Recorder.Counter hands it out.
type Counter struct {
	consumer, key string
	slots         [2]slot
	// dead: the recorder forgot the counter (idle for hours); its holder
	// asks for a new one.
	dead atomic.Bool
}

// slot is one hour's counts. hour is which hour (unix hours) it holds.
type slot struct {
	hour                        atomic.Int64
	allowed, rate, quota, spend atomic.Int64
}

func (c *Counter) slot(now time.Time) *slot {
	h := now.Unix() / 3600 // levy's times are after 1970
	s := &c.slots[h&1]
	if s.hour.Load() != h {
		s.hour.Store(h)
	}
	return s
}

// Allow counts an allowed request at now.
func (c *Counter) Allow(now time.Time) { c.slot(now).allowed.Add(1) }

// Deny counts a denied request at now, for reason.
func (c *Counter) Deny(now time.Time, reason Reason) {
	s := c.slot(now)
	switch reason {
	case ReasonRate:
		s.rate.Add(1)
	case ReasonQuota:
		s.quota.Add(1)
	case ReasonCap:
		s.spend.Add(1)
	}
}

// Dead reports whether the recorder forgot c: its holder takes a new one
// from Recorder.Counter.
func (c *Counter) Dead() bool { return c.dead.Load() }

// drain takes the slot's counts, leaving zeros.
func (s *slot) drain() (allowed int64, d Denied) {
	return s.allowed.Swap(0), Denied{Rate: s.rate.Swap(0), Quota: s.quota.Swap(0), Cap: s.spend.Swap(0)}
}

// Recorder hands out a Counter per (consumer, key) and drains them for a
// flush. Counters idle for two hours are forgotten, so that keys that
// stopped calling cost no memory.
type Recorder struct {
	counters sync.Map // counterKey -> *Counter
}

type counterKey struct{ consumer, key string }

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{} }

// Counter is the counter of consumer's key.
func (r *Recorder) Counter(consumer, key string) *Counter {
	k := counterKey{consumer, key}
	if v, ok := r.counters.Load(k); ok {
		return v.(*Counter)
	}
	v, _ := r.counters.LoadOrStore(k, &Counter{consumer: consumer, key: key})
	return v.(*Counter)
}

// drain takes every counter's counts, by hour; counters idle since before
// the previous hour are forgotten (marked dead first, then drained once
// more, so that a decision that raced the marking is still counted).
func (r *Recorder) drain(now time.Time) []Counts {
	cur := floorDiv(now.Unix(), 3600) / 3600
	flushed := now.UTC().Truncate(time.Second)
	var out []Counts
	take := func(c *Counter) bool {
		busy := false
		for i := range c.slots {
			s := &c.slots[i]
			h := s.hour.Load()
			allowed, d := s.drain()
			if h >= cur-1 {
				busy = true
			}
			if allowed != 0 || d.Total() != 0 {
				busy = true
				hour := time.Unix(h*3600, 0).UTC()
				seen := flushed
				if end := hour.Add(time.Hour - time.Second); end.Before(seen) {
					seen = end
				}
				out = append(out, Counts{Consumer: c.consumer, Key: c.key, Hour: hour, Allowed: allowed, Denied: d, Seen: seen})
			}
		}
		return busy
	}
	r.counters.Range(func(k, v any) bool {
		c := v.(*Counter)
		if !take(c) {
			c.dead.Store(true)
			r.counters.Delete(k)
			take(c)
		}
		return true
	})
	return out
}
