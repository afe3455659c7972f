package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/keyspace"
)

// GetConsumer implements apikey.Store (uncached: the admin API reads).
func (d *Directory) GetConsumer(ctx context.Context, id string) (*apikey.Consumer, error) {
	m, err := d.client.HGetAll(ctx, keyspace.Consumer(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis consumer lookup: %w", err)
	}
	if len(m) == 0 {
		return nil, apikey.ErrNotFound
	}
	return parseConsumer(id, m), nil
}

// ConsumerByStripeCustomer implements apikey.Store.
func (d *Directory) ConsumerByStripeCustomer(ctx context.Context, customerID string) (*apikey.Consumer, error) {
	id, err := d.client.Get(ctx, keyspace.StripeCustomer(customerID)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, apikey.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redis stripe customer: %w", err)
	}
	c, err := d.GetConsumer(ctx, id)
	if err != nil {
		return nil, err // a store error is not "no such consumer": the webhook must retry
	}
	if c.StripeCustomerID != customerID {
		return nil, apikey.ErrNotFound // moved to another customer since
	}
	return c, nil
}

// PutConsumer implements apikey.Store.
func (d *Directory) PutConsumer(ctx context.Context, c *apikey.Consumer) error {
	labels, err := labelsString(c.Labels)
	if err != nil {
		return err
	}
	fields := map[string]any{"plan": c.Plan, "suspended": boolString(c.Suspended), "stripe_customer_id": c.StripeCustomerID,
		"period_anchor": timeString(c.PeriodAnchor), "plan_since": timeString(c.PlanSince), "suspend_at": timeString(c.SuspendAt),
		"labels": labels}
	if err := d.client.HSet(ctx, keyspace.Consumer(c.ID), fields).Err(); err != nil {
		return fmt.Errorf("redis put consumer: %w", err)
	}
	if err := d.client.ZAdd(ctx, keyspace.Consumers, redis.Z{Member: c.ID}).Err(); err != nil {
		return fmt.Errorf("redis index consumer: %w", err)
	}
	if c.StripeCustomerID != "" {
		if err := d.client.Set(ctx, keyspace.StripeCustomer(c.StripeCustomerID), c.ID, 0).Err(); err != nil {
			return fmt.Errorf("redis put consumer: %w", err)
		}
	}
	d.invalidate(ctx, "c"+c.ID)
	return nil
}

// DeleteConsumer implements apikey.Store. The consumer's record goes
// first, so that its keys are unknown from then on (a key's lookup reads
// its consumer), then its keys and index entries; every replica is told to
// drop what it cached of them.
func (d *Directory) DeleteConsumer(ctx context.Context, id string) error {
	m, err := d.client.HGetAll(ctx, keyspace.Consumer(id)).Result()
	if err != nil {
		return fmt.Errorf("redis consumer lookup: %w", err)
	}
	if len(m) == 0 {
		return apikey.ErrNotFound
	}
	ids, err := d.client.SMembers(ctx, keyspace.ConsumerKeys(id)).Result()
	if err != nil {
		return fmt.Errorf("redis consumer keys: %w", err)
	}
	// Keys first, the consumer's record last: a delete that fails half
	// way leaves the consumer, so a retry finds it and finishes, instead
	// of answering 404 with keys left that a consumer created again under
	// the same id would bring back.
	drop := []string{"c" + id}
	defer func() { d.invalidate(context.WithoutCancel(ctx), drop...) }()
	for _, kid := range ids {
		hash, err := d.client.Get(ctx, keyspace.KeyID(kid)).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return fmt.Errorf("redis key id: %w", err)
		}
		drop = append(drop, "k"+hash)
		if err := d.client.Del(ctx, keyspace.APIKey(hash)).Err(); err != nil {
			return fmt.Errorf("redis delete key: %w", err)
		}
		if err := d.client.Del(ctx, keyspace.KeyID(kid)).Err(); err != nil {
			return fmt.Errorf("redis delete key id: %w", err)
		}
	}
	if err := d.client.Del(ctx, keyspace.ConsumerKeys(id)).Err(); err != nil {
		return fmt.Errorf("redis delete consumer keys: %w", err)
	}
	if cus := m["stripe_customer_id"]; cus != "" {
		// Only if it still names this consumer.
		if owner, err := d.client.Get(ctx, keyspace.StripeCustomer(cus)).Result(); err == nil && owner == id {
			d.client.Del(ctx, keyspace.StripeCustomer(cus))
		}
	}
	if err := d.client.ZRem(ctx, keyspace.Consumers, id).Err(); err != nil {
		return fmt.Errorf("redis unindex consumer: %w", err)
	}
	if err := d.client.Del(ctx, keyspace.Consumer(id)).Err(); err != nil {
		return fmt.Errorf("redis delete consumer: %w", err)
	}
	return nil
}

// ListConsumers implements apikey.Store from the consumer index, a sorted
// set ordered by id: a page costs one ZRANGE BYLEX (O(log n) plus the ids
// it returns, at most q.Scan()+1) and one HGETALL per consumer it examines,
// pipelined in rounds, whatever the store's size. Ids in the index whose record is
// gone (a deletion half done) are skipped.
func (d *Directory) ListConsumers(ctx context.Context, q apikey.ListQuery) (apikey.Page, error) {
	limit, scan := max(q.Limit, 1), q.Scan()
	lo, hi := "-", "+"
	if q.Prefix != "" {
		lo, hi = "["+q.Prefix, "["+q.Prefix+"\xff"
	}
	if q.After != "" && q.After >= q.Prefix {
		lo = "(" + q.After
	}
	ids, err := d.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: keyspace.Consumers, Start: lo, Stop: hi, ByLex: true, Count: int64(scan) + 1}).Result()
	if err != nil {
		return apikey.Page{}, fmt.Errorf("redis list consumers: %w", err)
	}
	// The records are read in rounds, each a pipeline of what the page
	// still needs, doubling while a filter skips consumers: an unfiltered
	// page reads only its own records, a selective one a few rounds.
	var page apikey.Page
	batch := limit
	for i := 0; i < len(ids); {
		if len(page.Consumers) == limit || i == scan {
			page.Next = ids[i-1] // there is more after it
			break
		}
		end := min(i+max(batch, limit-len(page.Consumers)), scan, len(ids))
		recs := make([]*redis.MapStringStringCmd, end-i)
		if _, err := d.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := range recs {
				recs[j] = p.HGetAll(ctx, keyspace.Consumer(ids[i+j]))
			}
			return nil
		}); err != nil {
			return apikey.Page{}, fmt.Errorf("redis list consumers: %w", err)
		}
		for _, r := range recs {
			if len(page.Consumers) == limit {
				break
			}
			i++
			if m := r.Val(); len(m) > 0 {
				if c := parseConsumer(ids[i-1], m); q.Match == nil || q.Match(c) {
					page.Consumers = append(page.Consumers, c)
				}
			}
		}
		batch *= 2
	}
	return page, nil
}

func parseConsumer(id string, m map[string]string) *apikey.Consumer {
	c := &apikey.Consumer{ID: id, Plan: m["plan"], Suspended: m["suspended"] == "1", StripeCustomerID: m["stripe_customer_id"],
		PeriodAnchor: parseTime(m["period_anchor"]), PlanSince: parseTime(m["plan_since"]), SuspendAt: parseTime(m["suspend_at"])}
	if s := m["labels"]; s != "" {
		_ = json.Unmarshal([]byte(s), &c.Labels) // written by labelsString
	}
	return c
}

func labelsString(labels map[string]string) (string, error) {
	if len(labels) == 0 {
		return "", nil
	}
	b, err := json.Marshal(labels)
	if err != nil {
		return "", fmt.Errorf("redis put consumer labels: %w", err)
	}
	return string(b), nil
}
