package localstore

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/levyhq/levy/pkg/portal"
)

var (
	bucketPortalLinks    = []byte("portal-links")
	bucketPortalSessions = []byte("portal-sessions")
)

// Portal keeps the developer portal's sign-in links and sessions in the
// data file: a value is its expiry (8 bytes, Unix nanoseconds), a used
// flag byte, then the record. An expired value is absent; writes sweep
// expired ones out, at most once a minute.
type Portal struct {
	db    *DB
	clock func() time.Time
	// swept is when the last sweep ran (Unix nanoseconds), under bolt's
	// writer lock.
	swept int64
}

var _ portal.Store = (*Portal)(nil)

// Portal returns the portal's store in db; clock nil means time.Now.
func (db *DB) Portal(clock func() time.Time) *Portal {
	if clock == nil {
		clock = time.Now
	}
	return &Portal{db: db, clock: clock}
}

const (
	portalHeader = 9
	linkFresh    = 0
	linkTaken    = 1
)

func portalValue(expires time.Time, flag byte, rec []byte) []byte {
	v := make([]byte, portalHeader+len(rec))
	binary.BigEndian.PutUint64(v, uint64(expires.UnixNano()))
	v[8] = flag
	copy(v[portalHeader:], rec)
	return v
}

// live splits a stored value, nil when it is malformed or expired at now.
func live(v []byte, now time.Time) (flag byte, rec []byte, ok bool) {
	if len(v) < portalHeader || int64(binary.BigEndian.Uint64(v)) <= now.UnixNano() {
		return 0, nil, false
	}
	return v[8], v[portalHeader:], true
}

func (p *Portal) put(bucket []byte, key string, rec []byte, ttl time.Duration) error {
	if ttl <= 0 {
		return errors.New("portal record: ttl must be positive")
	}
	now := p.clock()
	return safely(func() error {
		return p.db.bolt.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucket)
			if err != nil {
				return err
			}
			if now.UnixNano()-p.swept > int64(time.Minute) {
				p.swept = now.UnixNano()
				if err := sweep(b, now); err != nil {
					return err
				}
			}
			return b.Put([]byte(key), portalValue(now.Add(ttl), linkFresh, rec))
		})
	})
}

// sweep deletes b's expired values.
func sweep(b *bolt.Bucket, now time.Time) error {
	var dead [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if _, _, ok := live(v, now); !ok {
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

func (p *Portal) get(bucket []byte, key string) (byte, []byte, error) {
	now := p.clock()
	var flag byte
	var rec []byte
	err := safely(func() error {
		return p.db.bolt.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			if b == nil {
				return portal.ErrNotFound
			}
			f, r, ok := live(b.Get([]byte(key)), now)
			if !ok {
				return portal.ErrNotFound
			}
			flag, rec = f, append([]byte(nil), r...)
			return nil
		})
	})
	return flag, rec, err
}

// PutLink implements portal.Store.
func (p *Portal) PutLink(_ context.Context, hash string, rec []byte, keep time.Duration) error {
	return p.put(bucketPortalLinks, hash, rec, keep)
}

// PeekLink implements portal.Store.
func (p *Portal) PeekLink(_ context.Context, hash string) ([]byte, error) {
	flag, rec, err := p.get(bucketPortalLinks, hash)
	if err == nil && flag == linkTaken {
		return nil, portal.ErrLinkUsed
	}
	return rec, err
}

// TakeLink implements portal.Store: bbolt's one writer makes the read
// and the mark one step.
func (p *Portal) TakeLink(_ context.Context, hash string) ([]byte, error) {
	now := p.clock()
	var rec []byte
	err := safely(func() error {
		return p.db.bolt.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketPortalLinks)
			if b == nil {
				return portal.ErrNotFound
			}
			v := b.Get([]byte(hash))
			flag, r, ok := live(v, now)
			switch {
			case !ok:
				return portal.ErrNotFound
			case flag == linkTaken:
				return portal.ErrLinkUsed
			}
			rec = append([]byte(nil), r...)
			used := append([]byte(nil), v[:portalHeader]...)
			used[8] = linkTaken
			return b.Put([]byte(hash), used)
		})
	})
	return rec, err
}

// PutSession implements portal.Store.
func (p *Portal) PutSession(_ context.Context, hash string, rec []byte, ttl time.Duration) error {
	return p.put(bucketPortalSessions, hash, rec, ttl)
}

// Session implements portal.Store.
func (p *Portal) Session(_ context.Context, hash string) ([]byte, error) {
	_, rec, err := p.get(bucketPortalSessions, hash)
	return rec, err
}

// DeleteSession implements portal.Store.
func (p *Portal) DeleteSession(_ context.Context, hash string) error {
	return safely(func() error {
		return p.db.bolt.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketPortalSessions)
			if b == nil {
				return nil
			}
			return b.Delete([]byte(hash))
		})
	})
}
