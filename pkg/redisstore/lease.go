package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
)

// Lease is a lease in Redis (SET NX PX, renewed only by its holder), for
// the one replica that exports usage at a time.
type Lease struct {
	client redis.UniversalClient
	key    string
}

// NewLease returns the lease named name.
func NewLease(client redis.UniversalClient, name string) *Lease {
	return &Lease{client: client, key: keyspace.Lease(name)}
}

var holdScript = redis.NewScript(`
local cur = redis.call("GET", KEYS[1])
if cur == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
end
return 0`)

var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`)

// Hold acquires or renews the lease for holder.
func (l *Lease) Hold(ctx context.Context, holder string, ttl time.Duration) (bool, error) {
	n, err := holdScript.Run(ctx, l.client, []string{l.key}, holder, ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("redis lease: %w", err)
	}
	return n == 1, nil
}

// Release gives the lease up if holder has it.
func (l *Lease) Release(ctx context.Context, holder string) error {
	return releaseScript.Run(ctx, l.client, []string{l.key}, holder).Err()
}
