package localstore

import (
	"context"
	"encoding/binary"
	"errors"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/levyhq/levy/pkg/alert"
)

var (
	bucketAlertClaims = []byte("alert-claims")
	bucketAlertOutbox = []byte("alert-outbox")
)

// Alerts is the usage alerts' outbox in the data file: claims map an
// alert's id to when the claim ends (8 bytes, Unix nanoseconds), the
// outbox an id to when it is due (8 bytes, Unix milliseconds) and its
// record. Claiming and queueing are one transaction; expired claims are
// swept out at most once a minute.
type Alerts struct {
	db    *DB
	clock func() time.Time
	swept int64 // under bolt's writer lock
}

var _ alert.Store = (*Alerts)(nil)

// Alerts returns the alert outbox in db; clock nil means time.Now.
func (db *DB) Alerts(clock func() time.Time) *Alerts {
	if clock == nil {
		clock = time.Now
	}
	return &Alerts{db: db, clock: clock}
}

func u64(v int64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(v))
	return b
}

// Add implements alert.Store: one transaction.
func (a *Alerts) Add(ctx context.Context, claims []alert.Claim) ([]bool, error) {
	out := make([]bool, len(claims))
	if len(claims) == 0 {
		return out, nil
	}
	for _, c := range claims {
		if c.Keep <= 0 {
			return nil, errors.New("local add alert: keep must be positive")
		}
	}
	now := a.clock()
	err := safely(func() error {
		return a.db.bolt.Update(func(tx *bolt.Tx) error {
			clear(out) // a retried transaction starts over
			claimed, err := tx.CreateBucketIfNotExists(bucketAlertClaims)
			if err != nil {
				return err
			}
			outbox, err := tx.CreateBucketIfNotExists(bucketAlertOutbox)
			if err != nil {
				return err
			}
			if now.UnixNano()-a.swept > int64(time.Minute) {
				a.swept = now.UnixNano()
				if err := sweepClaims(claimed, now); err != nil {
					return err
				}
			}
			for i, c := range claims {
				if v := claimed.Get([]byte(c.ID)); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) > now.UnixNano() {
					continue
				}
				if err := claimed.Put([]byte(c.ID), u64(now.Add(c.Keep).UnixNano())); err != nil {
					return err
				}
				if err := outbox.Put([]byte(c.ID), append(u64(c.Due.UnixMilli()), c.Rec...)); err != nil {
					return err
				}
				out[i] = true
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func sweepClaims(b *bolt.Bucket, now time.Time) error {
	var dead [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if len(v) != 8 || int64(binary.BigEndian.Uint64(v)) <= now.UnixNano() {
			dead = append(dead, append([]byte(nil), k...))
		}
		return nil
	})
	for _, k := range dead {
		if err == nil {
			err = b.Delete(k)
		}
	}
	return err
}

// Take implements alert.Store.
func (a *Alerts) Take(ctx context.Context, now time.Time, hide time.Duration, n int) ([]alert.Entry, error) {
	type due struct {
		at int64
		e  alert.Entry
	}
	var out []alert.Entry
	err := safely(func() error {
		return a.db.bolt.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAlertOutbox)
			if b == nil {
				return nil
			}
			var all []due
			err := b.ForEach(func(k, v []byte) error {
				if len(v) < 8 {
					return nil
				}
				if at := int64(binary.BigEndian.Uint64(v)); at <= now.UnixMilli() {
					all = append(all, due{at, alert.Entry{ID: string(k), Rec: append([]byte(nil), v[8:]...)}})
				}
				return nil
			})
			if err != nil {
				return err
			}
			sort.Slice(all, func(i, j int) bool { return all[i].at < all[j].at })
			if len(all) > n {
				all = all[:n]
			}
			for _, d := range all {
				if err := b.Put([]byte(d.e.ID), append(u64(now.Add(hide).UnixMilli()), d.e.Rec...)); err != nil {
					return err
				}
				out = append(out, d.e)
			}
			return nil
		})
	})
	return out, err
}

// Retry implements alert.Store.
func (a *Alerts) Retry(ctx context.Context, id string, rec []byte, at time.Time) error {
	return safely(func() error {
		return a.db.bolt.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAlertOutbox)
			if b == nil || b.Get([]byte(id)) == nil {
				return nil // done meanwhile
			}
			return b.Put([]byte(id), append(u64(at.UnixMilli()), rec...))
		})
	})
}

// Done implements alert.Store.
func (a *Alerts) Done(ctx context.Context, id string) error {
	return safely(func() error {
		return a.db.bolt.Update(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketAlertOutbox); b != nil {
				return b.Delete([]byte(id))
			}
			return nil
		})
	})
}

// Queued implements alert.Store.
func (a *Alerts) Queued(ctx context.Context) (int64, error) {
	var n int64
	err := safely(func() error {
		return a.db.bolt.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketAlertOutbox); b != nil {
				n = int64(b.Stats().KeyN)
			}
			return nil
		})
	})
	return n, err
}
