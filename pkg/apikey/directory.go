package apikey

import (
	"context"
	"sort"
	"time"
)

// Key is a stored credential. The key itself is never stored, only its hash.
type Key struct {
	ID         string
	Hash       string
	ConsumerID string
	Revoked    bool
	ExpiresAt  time.Time // zero: never
	// CreatedAt is when the key was issued (zero for keys from the config
	// file and for keys stored before it was recorded).
	CreatedAt time.Time
	// ReplacedBy is the id of the key that a rotation issued in its place;
	// the key works until ExpiresAt, the rotation's deadline.
	ReplacedBy string
	// Hint is the key's readable prefix and the first characters of its
	// random body ("levy_Ab3d", see apikey.Hint), recorded when it was
	// issued so that lists can show which key is which; "" for keys
	// stored before it was recorded and for hashes from the config file.
	Hint string
}

// Expired reports whether the key has expired at now.
func (k *Key) Expired(now time.Time) bool {
	return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
}

// Consumer is whoever pays for the API: a customer, an app, a team.
type Consumer struct {
	ID               string
	Plan             string
	Suspended        bool
	StripeCustomerID string
	// PeriodAnchor starts the consumer's billing cycle (the Stripe
	// subscription's period start); zero means calendar months.
	PeriodAnchor time.Time
	// PlanSince is when the billing event that set the plan happened (a
	// Stripe event's creation time): older events do not override it.
	PlanSince time.Time
	// SuspendAt, when set, suspends the consumer from then on (a failed
	// payment's grace period ends).
	SuspendAt time.Time
	// Labels are the operator's (team, cost center) for reports; see
	// ValidateLabels.
	Labels map[string]string
}

// SuspendedAt reports whether the consumer is suspended at now.
func (c *Consumer) SuspendedAt(now time.Time) bool {
	return c.Suspended || !c.SuspendAt.IsZero() && !now.Before(c.SuspendAt)
}

// Directory resolves a key hash to the key and its consumer, and a
// consumer id to the consumer.
type Directory interface {
	Lookup(ctx context.Context, hash string) (*Key, *Consumer, error)
	Consumer(id string) (*Consumer, bool)
}

// Index is an immutable in-memory Directory.
type Index struct {
	keys      map[string]*Key
	consumers map[string]*Consumer
}

var _ Directory = (*Index)(nil)

// NewIndex builds an index. Keys whose consumer is missing are skipped by
// Lookup (it answers ErrUnknown), so a half-deleted consumer admits nobody.
func NewIndex(consumers []*Consumer, keys []*Key) *Index {
	ix := &Index{keys: make(map[string]*Key, len(keys)), consumers: make(map[string]*Consumer, len(consumers))}
	for _, c := range consumers {
		ix.consumers[c.ID] = c
	}
	for _, k := range keys {
		ix.keys[k.Hash] = k
	}
	return ix
}

// Lookup implements Directory.
func (ix *Index) Lookup(_ context.Context, hash string) (*Key, *Consumer, error) {
	k, ok := ix.keys[hash]
	if !ok {
		return nil, nil, ErrUnknown
	}
	c, ok := ix.consumers[k.ConsumerID]
	if !ok {
		return nil, nil, ErrUnknown
	}
	return k, c, nil
}

// Consumer returns a consumer by id.
func (ix *Index) Consumer(id string) (*Consumer, bool) {
	c, ok := ix.consumers[id]
	return c, ok
}

// Consumers returns the index's consumers in id order.
func (ix *Index) Consumers() []*Consumer {
	out := make([]*Consumer, 0, len(ix.consumers))
	for _, c := range ix.consumers {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
