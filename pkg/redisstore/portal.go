package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/portal"
)

// Portal keeps the developer portal's sign-in links and sessions in Redis,
// shared by every replica: a link taken on one is used on all.
type Portal struct {
	Client redis.UniversalClient
}

var _ portal.Store = Portal{}

// usedLink is a taken link's value: kept, with the link's expiry, so that
// a second use is told apart from an unknown link.
const usedLink = ""

// takeLink returns the link's record and leaves the used mark in its
// place, in one step: of replicas taking the same link, one gets it.
var takeLink = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then return false end
if v ~= '' then redis.call('SET', KEYS[1], '', 'KEEPTTL') end
return v
`)

// PutLink implements portal.Store.
func (p Portal) PutLink(ctx context.Context, hash string, rec []byte, keep time.Duration) error {
	if len(rec) == 0 {
		return errors.New("redis put portal link: empty record")
	}
	if err := p.Client.Set(ctx, keyspace.PortalLink(hash), rec, keep).Err(); err != nil {
		return fmt.Errorf("redis put portal link: %w", err)
	}
	return nil
}

// PeekLink implements portal.Store.
func (p Portal) PeekLink(ctx context.Context, hash string) ([]byte, error) {
	v, err := p.Client.Get(ctx, keyspace.PortalLink(hash)).Bytes()
	return linkValue(v, err)
}

// TakeLink implements portal.Store.
func (p Portal) TakeLink(ctx context.Context, hash string) ([]byte, error) {
	v, err := takeLink.Run(ctx, p.Client, []string{keyspace.PortalLink(hash)}).Text()
	return linkValue([]byte(v), err)
}

func linkValue(v []byte, err error) ([]byte, error) {
	switch {
	case errors.Is(err, redis.Nil):
		return nil, portal.ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("redis portal link: %w", err)
	case string(v) == usedLink:
		return nil, portal.ErrLinkUsed
	}
	return v, nil
}

// PutSession implements portal.Store.
func (p Portal) PutSession(ctx context.Context, hash string, rec []byte, ttl time.Duration) error {
	if err := p.Client.Set(ctx, keyspace.PortalSession(hash), rec, ttl).Err(); err != nil {
		return fmt.Errorf("redis put portal session: %w", err)
	}
	return nil
}

// Session implements portal.Store.
func (p Portal) Session(ctx context.Context, hash string) ([]byte, error) {
	v, err := p.Client.Get(ctx, keyspace.PortalSession(hash)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, portal.ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("redis portal session: %w", err)
	}
	return v, nil
}

// DeleteSession implements portal.Store.
func (p Portal) DeleteSession(ctx context.Context, hash string) error {
	if err := p.Client.Del(ctx, keyspace.PortalSession(hash)).Err(); err != nil {
		return fmt.Errorf("redis delete portal session: %w", err)
	}
	return nil
}
