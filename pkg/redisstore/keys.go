package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/keyspace"
)

// PutKey implements apikey.Store.
func (d *Directory) PutKey(ctx context.Context, k *apikey.Key) error {
	fields := map[string]any{"id": k.ID, "consumer": k.ConsumerID, "revoked": boolString(k.Revoked), "expires_at": timeString(k.ExpiresAt),
		"created_at": timeString(k.CreatedAt), "replaced_by": k.ReplacedBy, "hint": k.Hint}
	// The id first, and only if no other key has it (two replicas may
	// issue the same client-chosen id at once): an id names one key, or
	// the other could no longer be revoked by it.
	set, err := d.client.SetNX(ctx, keyspace.KeyID(k.ID), k.Hash, 0).Result()
	if err != nil {
		return fmt.Errorf("redis put key id: %w", err)
	}
	if !set {
		hash, err := d.client.Get(ctx, keyspace.KeyID(k.ID)).Result()
		if err != nil {
			return fmt.Errorf("redis key id: %w", err)
		}
		if hash != k.Hash {
			return apikey.ErrKeyIDTaken
		}
	}
	// Then the owner's index: a key in no index would outlive the
	// deletion of its consumer.
	if err := d.client.SAdd(ctx, keyspace.ConsumerKeys(k.ConsumerID), k.ID).Err(); err != nil {
		return fmt.Errorf("redis index key: %w", err)
	}
	if err := d.client.HSet(ctx, keyspace.APIKey(k.Hash), fields).Err(); err != nil {
		return fmt.Errorf("redis put key: %w", err)
	}
	d.invalidate(ctx, "k"+k.Hash)
	return nil
}

// RevokeKey implements apikey.Store.
func (d *Directory) RevokeKey(ctx context.Context, id string) error {
	hash, err := d.client.Get(ctx, keyspace.KeyID(id)).Result()
	if errors.Is(err, redis.Nil) {
		return apikey.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("redis key id: %w", err)
	}
	if err := d.client.HSet(ctx, keyspace.APIKey(hash), "revoked", "1").Err(); err != nil {
		return fmt.Errorf("redis revoke: %w", err)
	}
	d.invalidate(ctx, "k"+hash)
	return nil
}

// GetKey implements apikey.Store.
func (d *Directory) GetKey(ctx context.Context, id string) (*apikey.Key, error) {
	hash, err := d.client.Get(ctx, keyspace.KeyID(id)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, apikey.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redis key id: %w", err)
	}
	m, err := d.client.HGetAll(ctx, keyspace.APIKey(hash)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis key lookup: %w", err)
	}
	if len(m) == 0 {
		return nil, apikey.ErrNotFound
	}
	return parseKey(hash, m), nil
}

// ListKeys implements apikey.Store: the consumer's key index, then each
// key (two pipelined rounds).
func (d *Directory) ListKeys(ctx context.Context, consumerID string) ([]*apikey.Key, error) {
	ids, err := d.client.SMembers(ctx, keyspace.ConsumerKeys(consumerID)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis consumer keys: %w", err)
	}
	slices.Sort(ids)
	hashes := make([]*redis.StringCmd, len(ids))
	if _, err := d.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			hashes[i] = p.Get(ctx, keyspace.KeyID(id))
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redis key ids: %w", err)
	}
	recs := make([]*redis.MapStringStringCmd, len(ids))
	if _, err := d.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, h := range hashes {
			if h.Err() == nil {
				recs[i] = p.HGetAll(ctx, keyspace.APIKey(h.Val()))
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("redis keys: %w", err)
	}
	out := make([]*apikey.Key, 0, len(ids))
	for i, r := range recs {
		if r != nil && len(r.Val()) > 0 {
			out = append(out, parseKey(hashes[i].Val(), r.Val()))
		}
	}
	return out, nil
}

func parseKey(hash string, m map[string]string) *apikey.Key {
	return &apikey.Key{ID: m["id"], Hash: hash, ConsumerID: m["consumer"], Revoked: m["revoked"] == "1", ExpiresAt: parseTime(m["expires_at"]),
		CreatedAt: parseTime(m["created_at"]), ReplacedBy: m["replaced_by"], Hint: m["hint"]}
}
