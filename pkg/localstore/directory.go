package localstore

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
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
	// owned is each consumer's key ids.
	owned map[string]map[string]struct{}
}

var _ apikey.Store = (*Directory)(nil)

type consumerRecord struct {
	ID               string            `json:"id"`
	Plan             string            `json:"plan"`
	Suspended        bool              `json:"suspended,omitempty"`
	StripeCustomerID string            `json:"stripe_customer_id,omitempty"`
	PeriodAnchor     time.Time         `json:"period_anchor,omitzero"`
	PlanSince        time.Time         `json:"plan_since,omitzero"`
	SuspendAt        time.Time         `json:"suspend_at,omitzero"`
	Labels           map[string]string `json:"labels,omitempty"`
}

type keyRecord struct {
	ID         string    `json:"id"`
	Hash       string    `json:"hash"`
	ConsumerID string    `json:"consumer"`
	Revoked    bool      `json:"revoked,omitempty"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	CreatedAt  time.Time `json:"created_at,omitzero"`
	ReplacedBy string    `json:"replaced_by,omitempty"`
	// Hint is absent from records written before it was recorded.
	Hint string `json:"hint,omitempty"`
}

func (r consumerRecord) consumer() *apikey.Consumer {
	return &apikey.Consumer{ID: r.ID, Plan: r.Plan, Suspended: r.Suspended, StripeCustomerID: r.StripeCustomerID,
		PeriodAnchor: r.PeriodAnchor, PlanSince: r.PlanSince, SuspendAt: r.SuspendAt, Labels: r.Labels}
}

func consumerRec(c *apikey.Consumer) consumerRecord {
	return consumerRecord{ID: c.ID, Plan: c.Plan, Suspended: c.Suspended, StripeCustomerID: c.StripeCustomerID,
		PeriodAnchor: c.PeriodAnchor, PlanSince: c.PlanSince, SuspendAt: c.SuspendAt, Labels: c.Labels}
}

func (r keyRecord) key() *apikey.Key {
	return &apikey.Key{ID: r.ID, Hash: r.Hash, ConsumerID: r.ConsumerID, Revoked: r.Revoked, ExpiresAt: r.ExpiresAt,
		CreatedAt: r.CreatedAt, ReplacedBy: r.ReplacedBy, Hint: r.Hint}
}

func keyRec(k *apikey.Key) keyRecord {
	return keyRecord{ID: k.ID, Hash: k.Hash, ConsumerID: k.ConsumerID, Revoked: k.Revoked, ExpiresAt: k.ExpiresAt,
		CreatedAt: k.CreatedAt, ReplacedBy: k.ReplacedBy, Hint: k.Hint}
}

// Directory loads the stored consumers and keys.
func (db *DB) Directory() (*Directory, error) {
	d := &Directory{db: db, consumers: map[string]*apikey.Consumer{}, keys: map[string]*apikey.Key{}, keyIDs: map[string]string{},
		owned: map[string]map[string]struct{}{}}
	err := safely(func() error {
		return db.bolt.View(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketConsumers); b != nil {
				if err := b.ForEach(func(_, v []byte) error {
					var r consumerRecord
					if err := json.Unmarshal(v, &r); err != nil {
						return err
					}
					d.consumers[r.ID] = r.consumer()
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
					d.addKey(r.key())
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
	cp.Labels = maps.Clone(c.Labels)
	if err := d.db.put(bucketConsumers, cp.ID, consumerRec(&cp)); err != nil {
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
	if err := d.db.put(bucketKeys, cp.Hash, keyRec(&cp)); err != nil {
		return err
	}
	d.mu.Lock()
	d.addKey(&cp)
	d.mu.Unlock()
	return nil
}

// addKey indexes k; call with mu held (or before d is shared).
func (d *Directory) addKey(k *apikey.Key) {
	d.keys[k.Hash] = k
	d.keyIDs[k.ID] = k.Hash
	ids := d.owned[k.ConsumerID]
	if ids == nil {
		ids = map[string]struct{}{}
		d.owned[k.ConsumerID] = ids
	}
	ids[k.ID] = struct{}{}
}

// ListConsumers implements apikey.Store. The page walks the file's
// consumer bucket, which bbolt keeps in id order, from the cursor: a page
// costs O(log n) to find its start plus the consumers it examines (at
// most q.Scan()), whatever the store's size.
func (d *Directory) ListConsumers(_ context.Context, q apikey.ListQuery) (apikey.Page, error) {
	limit, scan := max(q.Limit, 1), q.Scan()
	// The ids first, in a read transaction of their own: the records are
	// read from memory under mu, which a writer holds while its
	// transaction may wait for read transactions to end (a remap).
	var ids []string
	err := safely(func() error {
		return d.db.bolt.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketConsumers)
			if b == nil {
				return nil
			}
			cur := b.Cursor()
			k, _ := cur.Seek([]byte(max(q.Prefix, q.After)))
			if k != nil && q.After != "" && string(k) == q.After {
				k, _ = cur.Next()
			}
			for ; k != nil && strings.HasPrefix(string(k), q.Prefix) && len(ids) <= scan; k, _ = cur.Next() {
				ids = append(ids, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return apikey.Page{}, fmt.Errorf("list consumers in %s: %w", d.db.path, err)
	}
	var page apikey.Page
	d.mu.RLock()
	defer d.mu.RUnlock()
	for i, id := range ids {
		if len(page.Consumers) == limit || i == scan {
			page.Next = ids[i-1] // there is more after it
			break
		}
		if c, ok := d.consumers[id]; ok && (q.Match == nil || q.Match(c)) {
			page.Consumers = append(page.Consumers, c)
		}
	}
	return page, nil
}

// DeleteConsumer implements apikey.Store: the consumer and its keys go in
// one transaction, and from memory at once, so that its keys are unknown
// to the next lookup.
func (d *Directory) DeleteConsumer(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.consumers[id]; !ok {
		return apikey.ErrNotFound
	}
	var hashes []string
	for kid := range d.owned[id] {
		hashes = append(hashes, d.keyIDs[kid])
	}
	err := safely(func() error {
		return d.db.bolt.Update(func(tx *bolt.Tx) error {
			if b := tx.Bucket(bucketKeys); b != nil {
				for _, h := range hashes {
					if err := b.Delete([]byte(h)); err != nil {
						return err
					}
				}
			}
			if b := tx.Bucket(bucketConsumers); b != nil {
				return b.Delete([]byte(id))
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("delete consumer %s in %s: %w", id, d.db.path, err)
	}
	for kid := range d.owned[id] {
		delete(d.keys, d.keyIDs[kid])
		delete(d.keyIDs, kid)
	}
	delete(d.owned, id)
	delete(d.consumers, id)
	return nil
}

// GetKey implements apikey.Store.
func (d *Directory) GetKey(_ context.Context, id string) (*apikey.Key, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	h, ok := d.keyIDs[id]
	if !ok {
		return nil, apikey.ErrNotFound
	}
	return d.keys[h], nil
}

// ListKeys implements apikey.Store.
func (d *Directory) ListKeys(_ context.Context, consumerID string) ([]*apikey.Key, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*apikey.Key, 0, len(d.owned[consumerID]))
	for _, kid := range slices.Sorted(maps.Keys(d.owned[consumerID])) {
		out = append(out, d.keys[d.keyIDs[kid]])
	}
	return out, nil
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
