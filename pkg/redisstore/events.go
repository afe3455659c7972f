package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
)

// Events remembers applied Stripe event ids in Redis (billing.Events).
type Events struct{ Client redis.UniversalClient }

// Claim reports true the first time id is claimed within ttl.
func (e Events) Claim(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	ok, err := e.Client.SetNX(ctx, keyspace.StripeEvent(id), 1, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("redis claim event: %w", err)
	}
	return ok, nil
}

// Release forgets a claim.
func (e Events) Release(ctx context.Context, id string) error {
	return e.Client.Del(ctx, keyspace.StripeEvent(id)).Err()
}
