package localstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/keyspace"
)

var (
	bucketHistory  = []byte("history")
	bucketActivity = []byte("activity")
)

// History is the usage history in the data file: a bucket per consumer
// and hour or day under its keyspace.History key (they sort by time, so a
// range is one cursor), pruned past the retention, and each consumer's
// activity record under its id in a bolt bucket of their own (24 bytes:
// seen, period start, denials).
type History struct {
	db  *DB
	ret history.Retention
}

var (
	_ history.Store  = (*History)(nil)
	_ history.Pruner = (*History)(nil)
)

// History is the usage history kept in db for ret.
func (db *DB) History(ret history.Retention) *History { return &History{db: db, ret: ret} }

// stored is a bucket as the file holds it.
type stored struct {
	B, R int64               `json:",omitempty"`
	D    [3]int64            `json:",omitempty"` // rate, quota, cap
	K    map[string][2]int64 `json:",omitempty"` // key id -> allowed, denied
}

func (h *History) update(fn func(b *bolt.Bucket) error) error {
	return safely(func() error {
		return h.db.bolt.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketHistory)
			if err != nil {
				return err
			}
			return fn(b)
		})
	})
}

func getHistory(b *bolt.Bucket, key string) (stored, error) {
	var s stored
	if v := b.Get([]byte(key)); v != nil {
		if err := json.Unmarshal(v, &s); err != nil {
			return s, fmt.Errorf("history bucket %q: %w", key, err)
		}
	}
	return s, nil
}

func putHistory(b *bolt.Bucket, key string, s stored) error {
	v, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), v)
}

// SetUsage implements history.Store: one transaction.
func (h *History) SetUsage(_ context.Context, us []history.Usage) error {
	if len(us) == 0 {
		return nil
	}
	return h.update(func(b *bolt.Bucket) error {
		for _, u := range us {
			key := keyspace.History(u.Consumer, string(u.Step), u.Start.Unix())
			s, err := getHistory(b, key)
			if err != nil {
				return err
			}
			s.B, s.R = u.Billed, u.Refunded
			if err := putHistory(b, key, s); err != nil {
				return err
			}
		}
		return nil
	})
}

// AddCounts implements history.Store: one transaction, activity records
// with the buckets.
func (h *History) AddCounts(_ context.Context, cs []history.Counts) error {
	if len(cs) == 0 {
		return nil
	}
	return h.update(func(b *bolt.Bucket) error {
		acts, err := b.Tx().CreateBucketIfNotExists(bucketActivity)
		if err != nil {
			return err
		}
		for consumer, a := range history.ActivityOf(cs) {
			key := []byte(consumer)
			if err := acts.Put(key, encodeActivity(decodeActivity(acts.Get(key)).Merge(a))); err != nil {
				return err
			}
		}
		for _, c := range cs {
			for _, step := range []history.Step{history.Hour, history.Day} {
				key := keyspace.History(c.Consumer, string(step), step.Floor(c.Hour).Unix())
				s, err := getHistory(b, key)
				if err != nil {
					return err
				}
				s.D[0] += c.Denied.Rate
				s.D[1] += c.Denied.Quota
				s.D[2] += c.Denied.Cap
				if s.K == nil {
					s.K = map[string][2]int64{}
				}
				k := s.K[c.Key]
				k[0] += c.Allowed
				k[1] += c.Denied.Total()
				s.K[c.Key] = k
				if err := putHistory(b, key, s); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Buckets implements history.Store.
func (h *History) Buckets(_ context.Context, consumer string, step history.Step, from, to time.Time) ([]history.Bucket, error) {
	var out []history.Bucket
	lo, hi := []byte(keyspace.History(consumer, string(step), from.Unix())), []byte(keyspace.History(consumer, string(step), to.Unix()))
	err := safely(func() error {
		return h.db.bolt.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketHistory)
			if b == nil {
				return nil
			}
			c := b.Cursor()
			for k, v := c.Seek(lo); k != nil && bytes.Compare(k, hi) < 0; k, v = c.Next() {
				_, _, start, ok := keyspace.ParseHistory(string(k))
				if !ok {
					continue
				}
				var s stored
				if err := json.Unmarshal(v, &s); err != nil {
					return fmt.Errorf("history bucket %q: %w", k, err)
				}
				out = append(out, bucketOf(consumer, step, start, s))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h.db.path, err)
	}
	return out, nil
}

// Activity implements history.Store: one read transaction.
func (h *History) Activity(_ context.Context, consumers []string) (map[string]history.Activity, error) {
	out := make(map[string]history.Activity, len(consumers))
	err := safely(func() error {
		return h.db.bolt.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketActivity)
			if b == nil {
				return nil
			}
			for _, c := range consumers {
				if v := b.Get([]byte(c)); v != nil {
					out[c] = decodeActivity(v)
				}
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h.db.path, err)
	}
	return out, nil
}

func encodeActivity(a history.Activity) []byte {
	v := make([]byte, 24)
	binary.BigEndian.PutUint64(v, uint64(history.UnixOrZero(a.Seen)))
	binary.BigEndian.PutUint64(v[8:], uint64(history.UnixOrZero(a.Period)))
	binary.BigEndian.PutUint64(v[16:], uint64(a.Denied))
	return v
}

// decodeActivity reads a record; anything but 24 bytes is none.
func decodeActivity(v []byte) history.Activity {
	if len(v) != 24 {
		return history.Activity{}
	}
	return history.Activity{Seen: history.TimeOrZero(int64(binary.BigEndian.Uint64(v))), Period: history.TimeOrZero(int64(binary.BigEndian.Uint64(v[8:]))),
		Denied: int64(binary.BigEndian.Uint64(v[16:]))}
}

func bucketOf(consumer string, step history.Step, start int64, s stored) history.Bucket {
	b := history.Bucket{Consumer: consumer, Step: step, Start: time.Unix(start, 0).UTC(), Billed: s.B, Refunded: s.R,
		Denied: history.Denied{Rate: s.D[0], Quota: s.D[1], Cap: s.D[2]}}
	if len(s.K) > 0 {
		b.Keys = make(map[string]history.KeyCounts, len(s.K))
		for id, k := range s.K {
			b.Keys[id] = history.KeyCounts{Allowed: k[0], Denied: k[1]}
		}
	}
	return b
}

// Prune implements history.Pruner: it deletes the buckets past their
// retention at now, in one transaction.
func (h *History) Prune(_ context.Context, now time.Time) error {
	return h.update(func(b *bolt.Bucket) error {
		var del [][]byte
		err := b.ForEach(func(k, _ []byte) error {
			_, step, start, ok := keyspace.ParseHistory(string(k))
			if ok && !h.ret.ExpireAt(history.Step(step), time.Unix(start, 0)).After(now) {
				del = append(del, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		// An activity record goes with the last day it was seen in.
		acts := b.Tx().Bucket(bucketActivity)
		if acts == nil {
			return nil
		}
		del = del[:0]
		err = acts.ForEach(func(k, v []byte) error {
			if a := decodeActivity(v); !h.ret.ExpireAt(history.Day, history.Day.Floor(a.Seen)).After(now) {
				del = append(del, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range del {
			if err := acts.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}
