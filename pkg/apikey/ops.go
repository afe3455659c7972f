package apikey

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors of Rotatable: a key in one of these states cannot be rotated.
var (
	ErrKeyRevoked = errors.New("key is revoked")
	ErrKeyRotated = errors.New("key was already rotated")
	ErrKeyExpired = errors.New("key has expired")
)

// StoreError is a store call of a key operation that failed; Op names it
// ("get key", "put key").
type StoreError struct {
	Op  string
	Err error
}

func (e *StoreError) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *StoreError) Unwrap() error { return e.Err }

// Ops are the key operations of the admin API and the developer portal:
// both issue, rotate and revoke keys through them, so a key made, rolled
// or revoked in either place is stored alike and takes effect at the next
// Check on every replica. They do not check that the consumer exists or
// owns the key: their callers do, under their own locks.
type Ops struct {
	Store Store
	// Hasher returns the current key hasher (it reloads).
	Hasher func() Hasher
	// Prefix returns the prefix of new keys; nil means DefaultPrefix.
	Prefix func() string
	// Clock stamps CreatedAt; nil means time.Now.
	Clock func() time.Time
}

func (o Ops) now() time.Time {
	if o.Clock == nil {
		return time.Now()
	}
	return o.Clock()
}

// Issue generates a key for a consumer and stores its hash; it returns
// the stored key and the secret, which is never kept. id "" derives the
// id from the hash. An id another key has is ErrKeyIDTaken (with the key,
// to name the id): the id would then name the new key, and the other one,
// still working, could no longer be revoked, rotated or deleted with its
// consumer by its id. A store failure is a *StoreError.
func (o Ops) Issue(ctx context.Context, consumerID, id string, expires time.Time) (*Key, string, error) {
	if id != "" {
		_, err := o.Store.GetKey(ctx, id)
		switch {
		case err == nil:
			return &Key{ID: id, ConsumerID: consumerID}, "", ErrKeyIDTaken
		case !errors.Is(err, ErrNotFound):
			return nil, "", &StoreError{Op: "get key", Err: err}
		}
	}
	prefix := DefaultPrefix
	if o.Prefix != nil {
		prefix = o.Prefix()
	}
	key, err := Generate(prefix)
	if err != nil {
		return nil, "", fmt.Errorf("generate key: %w", err)
	}
	hash := o.Hasher().Hash(key)
	k := &Key{ID: id, Hash: hash, ConsumerID: consumerID, ExpiresAt: expires, CreatedAt: o.now().UTC().Truncate(time.Second), Hint: Hint(key)}
	if k.ID == "" {
		k.ID = IDFromHash(hash)
	}
	if err := o.Store.PutKey(ctx, k); errors.Is(err, ErrKeyIDTaken) {
		// Another replica issued the id meanwhile.
		return k, "", ErrKeyIDTaken
	} else if err != nil {
		return nil, "", &StoreError{Op: "put key", Err: err}
	}
	return k, key, nil
}

// Rotatable reports why old cannot be rotated at now (ErrKeyRevoked,
// ErrKeyRotated, ErrKeyExpired), or nil.
func Rotatable(old *Key, now time.Time) error {
	switch {
	case old.Revoked:
		return ErrKeyRevoked
	case old.ReplacedBy != "":
		return ErrKeyRotated
	case old.Expired(now):
		return ErrKeyExpired
	}
	return nil
}

// Rotate issues a new key for old's consumer (as Issue, with newID and
// expires) and sets old to expire at deadline, or at its own expiry when
// that is sooner; from then on old is refused as rotated. It returns the
// new key, its secret and old as stored. Check Rotatable first. When the
// new key was issued but old could not be updated, the error is a
// *StoreError naming the new key, which then exists and works.
func (o Ops) Rotate(ctx context.Context, old *Key, deadline time.Time, newID string, expires time.Time) (created *Key, secret string, replaced *Key, err error) {
	created, secret, err = o.Issue(ctx, old.ConsumerID, newID, expires)
	if err != nil {
		return created, "", nil, err
	}
	// Whole seconds, rounded up: the deadline shown is the one enforced.
	if t := deadline.Truncate(time.Second); t.Before(deadline) {
		deadline = t.Add(time.Second)
	}
	next := *old
	next.ReplacedBy = created.ID
	if next.ExpiresAt.IsZero() || deadline.Before(next.ExpiresAt) {
		next.ExpiresAt = deadline
	}
	if err := o.Store.PutKey(ctx, &next); err != nil {
		return created, "", nil, &StoreError{Op: "rotate key " + old.ID + " (new key " + created.ID + " was issued; revoke it or retry)", Err: err}
	}
	return created, secret, &next, nil
}
