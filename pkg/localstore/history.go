package localstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/keyspace"
)

var bucketHistory = []byte("history")

// History is the usage history in the data file: a bucket per consumer
// and hour or day under its keyspace.History key (they sort by time, so a
// range is one cursor), pruned past the retention.
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

// AddCounts implements history.Store: one transaction.
func (h *History) AddCounts(_ context.Context, cs []history.Counts) error {
	if len(cs) == 0 {
		return nil
	}
	return h.update(func(b *bolt.Bucket) error {
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
		return nil
	})
}
