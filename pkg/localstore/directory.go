package localstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/levyhq/levy/pkg/apikey"
)

var (
	bucketConsumers = []byte("consumers")
	bucketKeys      = []byte("keys")
)

// Directory keeps consumers and keys created at run time in the file
// database, with every record also in memory: lookups never touch disk.
type Directory struct {
	db        *DB
	mu        sync.RWMutex
	consumers map[string]*apikey.Consumer
	keys      map[string]*apikey.Key // by hash
	keyIDs    map[string]string      // id -> hash
}

var _ apikey.Store = (*Directory)(nil)

type consumerRecord struct {
	ID               string    `json:"id"`
	Plan             string    `json:"plan"`
	Suspended        bool      `json:"suspended,omitempty"`
	StripeCustomerID string    `json:"stripe_customer_id,omitempty"`
	PeriodAnchor     time.Time `json:"period_anchor,omitzero"`
	PlanSince        time.Time `json:"plan_since,omitzero"`
	SuspendAt        time.Time `json:"suspend_at,omitzero"`
}

type keyRecord struct {
	ID         string    `json:"id"`
	Hash       string    `json:"hash"`
	ConsumerID string    `json:"consumer"`
	Revoked    bool      `json:"revoked,omitempty"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
}

// Directory loads the stored consumers and keys.
func (db *DB) Directory() (*Directory, error) {
	d := &Directory{db: db, consumers: map[string]*apikey.Consumer{}, keys: map[string]*apikey.Key{}, keyIDs: map[string]string{}}
	err := safely(func() error {
		return db.bolt.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketConsumers); b != nil {
				if err := b.ForEach(func(_, v []byte) error {
					var r consumerRecord
					if err := json.Unmarshal(v, &r); err != nil {
						return err
					}
					d.consumers[r.ID] = &apikey.Consumer{ID: r.ID, Plan: r.Plan, Suspended: r.Suspended, StripeCustomerID: r.StripeCustomerID,
						PeriodAnchor: r.PeriodAnchor, PlanSince: r.PlanSince, SuspendAt: r.SuspendAt}
					return nil
				}); err != nil {
					return err
				}
			}
			if b := tx.Bucket(bucketKeys); b != nil {
				return b.ForEach(func(_, v []byte) error {
					var r keyRecord
					if err := json.Unmarshal(v, &r); err != nil {
						return err
					}
					d.keys[r.Hash] = &apikey.Key{ID: r.ID, Hash: r.Hash, ConsumerID: r.ConsumerID, Revoked: r.Revoked, ExpiresAt: r.ExpiresAt}
					d.keyIDs[r.ID] = r.Hash
					return nil
				})
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load consumers and keys from %s: %w", db.path, err)
	}
	return d, nil
}

// Lookup implements apikey.Directory.
func (d *Directory) Lookup(_ context.Context, hash string) (*apikey.Key, *apikey.Consumer, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	k, ok := d.keys[hash]
	if !ok {
		return nil, nil, apikey.ErrUnknown
	}
	c, ok := d.consumers[k.ConsumerID]
	if !ok {
		return nil, nil, apikey.ErrUnknown
	}
	return k, c, nil
}

// Consumer implements apikey.Directory.
func (d *Directory) Consumer(id string) (*apikey.Consumer, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	c, ok := d.consumers[id]
	return c, ok
}

// GetConsumer implements apikey.Store.
func (d *Directory) GetConsumer(_ context.Context, id string) (*apikey.Consumer, error) {
	if c, ok := d.Consumer(id); ok {
		return c, nil
	}
	return nil, apikey.ErrNotFound
}

// ConsumerByStripeCustomer implements apikey.Store.
func (d *Directory) ConsumerByStripeCustomer(_ context.Context, customerID string) (*apikey.Consumer, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, c := range d.consumers {
		if customerID != "" && c.StripeCustomerID == customerID {
			return c, nil
		}
	}
	return nil, apikey.ErrNotFound
}

// PutConsumer implements apikey.Store. Records are replaced, never
// mutated, so readers holding the old one see a consistent consumer.
func (d *Directory) PutConsumer(_ context.Context, c *apikey.Consumer) error {
	cp := *c
	rec := consumerRecord{ID: cp.ID, Plan: cp.Plan, Suspended: cp.Suspended, StripeCustomerID: cp.StripeCustomerID,
		PeriodAnchor: cp.PeriodAnchor, PlanSince: cp.PlanSince, SuspendAt: cp.SuspendAt}
	if err := d.db.put(bucketConsumers, cp.ID, rec); err != nil {
		return err
	}
	d.mu.Lock()
	d.consumers[cp.ID] = &cp
	d.mu.Unlock()
	return nil
}

// PutKey implements apikey.Store.
func (d *Directory) PutKey(_ context.Context, k *apikey.Key) error {
	cp := *k
	rec := keyRecord{ID: cp.ID, Hash: cp.Hash, ConsumerID: cp.ConsumerID, Revoked: cp.Revoked, ExpiresAt: cp.ExpiresAt}
	if err := d.db.put(bucketKeys, cp.Hash, rec); err != nil {
		return err
	}
	d.mu.Lock()
	d.keys[cp.Hash] = &cp
	d.keyIDs[cp.ID] = cp.Hash
	d.mu.Unlock()
	return nil
}

// RevokeKey implements apikey.Store.
func (d *Directory) RevokeKey(ctx context.Context, id string) error {
	d.mu.RLock()
	hash, ok := d.keyIDs[id]
	var k apikey.Key
	if ok {
		k = *d.keys[hash]
	}
	d.mu.RUnlock()
	if !ok {
		return apikey.ErrNotFound
	}
	k.Revoked = true
	return d.PutKey(ctx, &k)
}

func (db *DB) put(bucket []byte, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return safely(func() error {
		return db.bolt.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucket)
			if err != nil {
				return err
			}
			return b.Put([]byte(key), data)
		})
	})
}
