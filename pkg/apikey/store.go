package apikey

import (
	"context"
	"errors"
)

// ErrNotFound is returned for a consumer or key id that does not exist.
var ErrNotFound = errors.New("not found")

// ErrKeyIDTaken is PutKey's answer for a new key whose id another key has.
var ErrKeyIDTaken = errors.New("key id taken")

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
	// ListConsumers pages through the consumers in id order.
	ListConsumers(ctx context.Context, q ListQuery) (Page, error)
	// DeleteConsumer removes a consumer and all its keys; its keys are
	// unknown from then on. ErrNotFound if none.
	DeleteConsumer(ctx context.Context, id string) error
	// GetKey reads a key by id; ErrNotFound if none.
	GetKey(ctx context.Context, id string) (*Key, error)
	// ListKeys returns a consumer's keys, revoked and expired ones too, in
	// id order.
	ListKeys(ctx context.Context, consumerID string) ([]*Key, error)
}

// ListQuery asks for one page of consumers.
type ListQuery struct {
	// Prefix keeps the ids that start with it.
	Prefix string
	// After starts the page after this id ("" from the start).
	After string
	// Limit is the most consumers the page holds (at least 1).
	Limit int
	// Match, when set, keeps the consumers it accepts (plan, labels,
	// status); the others are skipped, but count towards MaxScan.
	Match func(*Consumer) bool
	// MaxScan bounds the consumers one page examines (default 1000, at
	// least Limit), so that a selective filter over a large store answers
	// a short or empty page with a Next cursor instead of reading it all.
	MaxScan int
}

// Page is one page of consumers.
type Page struct {
	Consumers []*Consumer
	// Next is the After of the following page; "" when there is none.
	Next string
}

// Scan returns how many consumers a page may examine.
func (q ListQuery) Scan() int {
	n := q.MaxScan
	if n <= 0 {
		n = 1000
	}
	return max(n, q.Limit, 1)
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
