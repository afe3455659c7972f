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
}

// Layered answers from the config file's index first, then from the store.
type Layered struct {
	Static *Index
	Store  Store // may be nil
}

var _ Directory = Layered{}

// Lookup implements Directory.
func (l Layered) Lookup(ctx context.Context, hash string) (*Key, *Consumer, error) {
	k, c, err := l.Static.Lookup(ctx, hash)
	if !errors.Is(err, ErrUnknown) || l.Store == nil {
		return k, c, err
	}
	return l.Store.Lookup(ctx, hash)
}

// Consumer implements Directory.
func (l Layered) Consumer(id string) (*Consumer, bool) {
	if c, ok := l.Static.Consumer(id); ok {
		return c, true
	}
	if l.Store == nil {
		return nil, false
	}
	return l.Store.Consumer(id)
}
