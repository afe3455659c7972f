package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
)

// Backfill puts consumers and keys stored before the indexes existed into
// them: the consumer index (so that listings show them) and each
// consumer's key set (so that deleting the consumer deletes them, and a
// consumer created again with the same id does not get them back). It
// SCANs every master once per Redis, then marks it done; a run cut short
// is taken up at the next start (adding to the indexes is idempotent).
func (d *Directory) Backfill(ctx context.Context) error {
	if n, err := d.client.Exists(ctx, keyspace.Indexed).Result(); err != nil || n == 1 {
		return err
	}
	scan := func(ctx context.Context, node *redis.Client) error {
		for it := node.Scan(ctx, 0, keyspace.ConsumerPattern, 1000).Iterator(); ; {
			if !it.Next(ctx) {
				if err := it.Err(); err != nil {
					return err
				}
				break
			}
			id := keyspace.ParseConsumer(it.Val())
			if err := d.client.ZAdd(ctx, keyspace.Consumers, redis.Z{Member: id}).Err(); err != nil {
				return err
			}
		}
		for it := node.Scan(ctx, 0, keyspace.APIKeyPattern, 1000).Iterator(); ; {
			if !it.Next(ctx) {
				return it.Err()
			}
			m, err := d.client.HMGet(ctx, it.Val(), "id", "consumer").Result()
			if err != nil {
				return err
			}
			id, _ := m[0].(string)
			owner, _ := m[1].(string)
			if id == "" || owner == "" {
				continue
			}
			if err := d.client.SAdd(ctx, keyspace.ConsumerKeys(owner), id).Err(); err != nil {
				return err
			}
		}
	}
	var err error
	if cluster, ok := d.client.(*redis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, scan)
	} else if c, ok := d.client.(*redis.Client); ok {
		err = scan(ctx, c)
	}
	if err != nil {
		return fmt.Errorf("redis index consumers and keys: %w", err)
	}
	return d.client.Set(ctx, keyspace.Indexed, "1", 0).Err()
}
