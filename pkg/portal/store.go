package portal

import (
	"context"
	"errors"
	"time"
)

// Errors a Store answers.
var (
	// ErrNotFound: no such link or session (or it has expired).
	ErrNotFound = errors.New("not found")
	// ErrLinkUsed: the link was taken before.
	ErrLinkUsed = errors.New("link already used")
)

// Store keeps sign-in links and sessions where every replica sees them:
// Redis, or the local bbolt file for a single levy. Records are opaque to
// it; links are keyed by the hash of their token and sessions by the hash
// of their id, so the store never holds what a browser presents.
type Store interface {
	// PutLink keeps a link's record for keep (its lifetime and a while
	// after, to tell a used or expired link from an unknown one).
	PutLink(ctx context.Context, hash string, rec []byte, keep time.Duration) error
	// PeekLink reads a link's record without using it up; ErrLinkUsed
	// when it was taken, ErrNotFound when none.
	PeekLink(ctx context.Context, hash string) ([]byte, error)
	// TakeLink reads a link's record and marks it used, atomically: of
	// any number of replicas taking one link at once, exactly one gets the
	// record, the others ErrLinkUsed. ErrNotFound when none.
	TakeLink(ctx context.Context, hash string) ([]byte, error)
	// PutSession keeps a session's record for ttl.
	PutSession(ctx context.Context, hash string, rec []byte, ttl time.Duration) error
	// Session reads a session's record; ErrNotFound when none.
	Session(ctx context.Context, hash string) ([]byte, error)
	// DeleteSession ends a session; deleting none is no error.
	DeleteSession(ctx context.Context, hash string) error
}
