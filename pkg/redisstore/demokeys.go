package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
)

// DemoKeys returns each plan's demo key, creating missing ones with gen so
// that every replica prints the same keys.
func DemoKeys(ctx context.Context, client redis.UniversalClient, plans []string, gen func() (string, error)) (map[string]string, error) {
	for _, p := range plans {
		k, err := gen()
		if err != nil {
			return nil, err
		}
		if err := client.HSetNX(ctx, keyspace.DemoKeys, p, k).Err(); err != nil {
			return nil, fmt.Errorf("redis demo keys: %w", err)
		}
	}
	m, err := client.HGetAll(ctx, keyspace.DemoKeys).Result()
	if err != nil {
		return nil, fmt.Errorf("redis demo keys: %w", err)
	}
	return m, nil
}
