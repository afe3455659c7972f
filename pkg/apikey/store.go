package apikey

import (
	"context"
	"errors"
)

// ErrNotFound is returned for a consumer or key id that does not exist.
var ErrNotFound = errors.New("not found")

// Store keeps consumers and keys that are created at run time (by the
// admin API), as opposed to those declared in the config file. The local
// store and Redis implement it.
type Store interface {
	Directory
	// GetConsumer reads a consumer.
	GetConsumer(ctx context.Context, id string) (*Consumer, error)
	// PutConsumer creates or replaces a consumer.
	PutConsumer(ctx context.Context, c *Consumer) error
	// PutKey stores a new key (its hash, never the key).
	PutKey(ctx context.Context, k *Key) error
	// RevokeKey marks the key with this id revoked; ErrNotFound if none.
	RevokeKey(ctx context.Context, id string) error
	// ConsumerByStripeCustomer finds the consumer billed to a Stripe
	// customer; ErrNotFound if none.
	ConsumerByStripeCustomer(ctx context.Context, customerID string) (*Consumer, error)
}

// Layered answers from the config file's index first, then from the store.
type Layered struct {
	Static *Index
	Store  Store // may be nil
}

var _ Directory = Layered{}

// Lookup implements Directory. A consumer the store holds wins over the
// file's: that is how a Stripe webhook or the admin API changes the plan
// of a consumer declared in the file.
func (l Layered) Lookup(ctx context.Context, hash string) (*Key, *Consumer, error) {
	k, c, err := l.Static.Lookup(ctx, hash)
	if l.Store == nil {
		return k, c, err
	}
	if errors.Is(err, ErrUnknown) {
		return l.Store.Lookup(ctx, hash)
	}
	if err == nil {
		if sc, ok := l.Store.Consumer(c.ID); ok {
			c = sc
		}
	}
	return k, c, err
}

// Consumer implements Directory.
func (l Layered) Consumer(id string) (*Consumer, bool) {
	if l.Store != nil {
		if c, ok := l.Store.Consumer(id); ok {
			return c, true
		}
	}
	return l.Static.Consumer(id)
}

// ConsumerByStripeCustomer finds a consumer by Stripe customer id in the
// store, then in the file; a store consumer wins.
func (l Layered) ConsumerByStripeCustomer(ctx context.Context, customerID string) (*Consumer, error) {
	if l.Store != nil {
		c, err := l.Store.ConsumerByStripeCustomer(ctx, customerID)
		if !errors.Is(err, ErrNotFound) {
			return c, err
		}
	}
	for _, c := range l.Static.consumers {
		if c.StripeCustomerID != "" && c.StripeCustomerID == customerID {
			if l.Store != nil {
				if sc, ok := l.Store.Consumer(c.ID); ok {
					return sc, nil
				}
			}
			return c, nil
		}
	}
	return nil, ErrNotFound
}
