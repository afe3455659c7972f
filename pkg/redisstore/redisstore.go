// Package redisstore keeps levy's shared state in Redis (standalone or
// Cluster): consumers and keys with an in-process cache, the replica
// registry that sizes each replica's share when Redis is away, readiness,
// and the demo keys. The limiter's Redis side lives in pkg/limiter.
package redisstore

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/keyspace"
)

// Options say how to reach Redis.
type Options struct {
	Addr         string   // standalone
	ClusterAddrs []string // Redis Cluster seeds; wins over Addr
	Username     string
	Password     string
	TLS          *tls.Config
	// Timeout bounds each command (dial, read, write).
	Timeout time.Duration
	// ReadTimeout, when longer, bounds waiting for a reply instead (the
	// limiter waits for late replies to give back what they took).
	ReadTimeout time.Duration
}

// NewClient returns a client for standalone Redis or a Cluster, and
// whether it is a cluster. Failed commands are not retried: a retried
// decision could count twice, and the caller's fault handling decides.
func NewClient(o Options) (redis.UniversalClient, bool) {
	if o.Timeout <= 0 {
		o.Timeout = 100 * time.Millisecond
	}
	o.ReadTimeout = max(o.ReadTimeout, o.Timeout)
	if len(o.ClusterAddrs) > 0 {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: o.ClusterAddrs, Username: o.Username, Password: o.Password, TLSConfig: o.TLS,
			DialTimeout: o.Timeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.Timeout,
			ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1, PoolSize: 64,
			ConnMaxIdleTime: time.Minute,
		}), true
	}
	return redis.NewClient(&redis.Options{
		Addr: o.Addr, Username: o.Username, Password: o.Password, TLSConfig: o.TLS,
		DialTimeout: o.Timeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.Timeout,
		ContextTimeoutEnabled: true, MaxRetries: -1, DialerRetries: 1, PoolSize: 64,
		ConnMaxIdleTime: time.Minute,
	}), false
}

// DirectoryConfig configures a Directory.
type DirectoryConfig struct {
	Client redis.UniversalClient
	// TTL is how long a lookup is trusted before Redis is asked again
	// (default 500ms): a revocation or plan change reaches every replica
	// within TTL plus one lookup.
	TTL time.Duration
	// MaxEntries bounds the cache, unknown keys included (default 100000).
	MaxEntries int
	// Timeout bounds a lookup when the caller has no deadline of its own.
	Timeout time.Duration
	Log     *zap.Logger
	Clock   func() time.Time
	// Available, when set, is asked before Redis for a key: while it says
	// no, a lookup is answered from the cache or fails at once.
	Available func(key string) bool
	// Failed hears of every failed Redis call, with its key (see
	// Health.SlotFailed).
	Failed func(key string, err error)
}

// ErrDown is returned while Redis is known to be unreachable.
var ErrDown = errors.New("redis unreachable")

// Directory is the Redis-backed apikey.Store with an in-process cache.
// When Redis cannot be reached, cached entries are served past their TTL.
type Directory struct {
	client  redis.UniversalClient
	ttl     time.Duration
	max     int
	timeout time.Duration
	log     *zap.Logger
	clock   func() time.Time
	avail   func(key string) bool
	failed  func(key string, err error)
	group   singleflight.Group

	mu        sync.Mutex
	keys      map[string]cachedKey
	consumers map[string]cachedConsumer
	// gen counts invalidations: a lookup that began before one does not
	// cache what it read.
	gen uint64
}

type cachedKey struct {
	key      *apikey.Key // nil: unknown
	consumer *apikey.Consumer
	at       time.Time
}

type cachedConsumer struct {
	c  *apikey.Consumer // nil: unknown
	at time.Time
}

var _ apikey.Store = (*Directory)(nil)

// NewDirectory returns a directory.
func NewDirectory(cfg DirectoryConfig) *Directory {
	d := &Directory{client: cfg.Client, ttl: cfg.TTL, max: cfg.MaxEntries, timeout: cfg.Timeout, log: cfg.Log, clock: cfg.Clock, avail: cfg.Available, failed: cfg.Failed,
		keys: map[string]cachedKey{}, consumers: map[string]cachedConsumer{}}
	if d.ttl <= 0 {
		d.ttl = 500 * time.Millisecond
	}
	if d.max <= 0 {
		d.max = 100000
	}
	if d.timeout <= 0 {
		d.timeout = 100 * time.Millisecond
	}
	if d.log == nil {
		d.log = zap.NewNop()
	}
	if d.clock == nil {
		d.clock = time.Now
	}
	return d
}

func (d *Directory) fresh(t time.Time) bool { return d.clock().Sub(t) < d.ttl }

// Lookup implements apikey.Directory.
func (d *Directory) Lookup(ctx context.Context, hash string) (*apikey.Key, *apikey.Consumer, error) {
	d.mu.Lock()
	e, ok := d.keys[hash]
	d.mu.Unlock()
	if ok && d.fresh(e.at) {
		return e.result()
	}
	v, err, _ := d.group.Do("k"+hash, func() (any, error) {
		return d.fetchKey(context.WithoutCancel(ctx), hash)
	})
	if err != nil {
		if ok {
			return e.result() // Redis is away: the last answer stands
		}
		return nil, nil, err
	}
	return v.(cachedKey).result()
}

func (e cachedKey) result() (*apikey.Key, *apikey.Consumer, error) {
	if e.key == nil || e.consumer == nil {
		return nil, nil, apikey.ErrUnknown
	}
	return e.key, e.consumer, nil
}

func (d *Directory) fetchKey(ctx context.Context, hash string) (cachedKey, error) {
	hash = strings.Clone(hash) // cached: see fetchConsumer
	key := keyspace.APIKey(hash)
	if !d.available(key) {
		return cachedKey{}, ErrDown
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	now := d.clock()
	d.mu.Lock()
	gen := d.gen
	d.mu.Unlock()
	m, err := d.client.HGetAll(ctx, key).Result()
	if err != nil {
		d.fail(key, err)
		return cachedKey{}, fmt.Errorf("redis key lookup: %w", err)
	}
	e := cachedKey{at: now}
	if len(m) > 0 {
		e.key = parseKey(hash, m)
		if e.consumer, err = d.fetchConsumer(ctx, e.key.ConsumerID); err != nil {
			return cachedKey{}, err
		}
	}
	d.mu.Lock()
	if d.gen == gen {
		d.evictIfFull()
		d.keys[hash] = e
	}
	d.mu.Unlock()
	return e, nil
}

func (d *Directory) fetchConsumer(ctx context.Context, id string) (*apikey.Consumer, error) {
	// The cache keeps id (as its key and the record's ID) past the call: a
	// copy of its own, not the caller's string, which may be a piece of a
	// whole request (RLS's descriptor value, pinning the request) or lie
	// over a buffer that is reused (a zero-copy decoder's).
	id = strings.Clone(id)
	key := keyspace.Consumer(id)
	if !d.available(key) {
		return nil, ErrDown
	}
	d.mu.Lock()
	gen := d.gen
	d.mu.Unlock()
	m, err := d.client.HGetAll(ctx, key).Result()
	if err != nil {
		d.fail(key, err)
		return nil, fmt.Errorf("redis consumer lookup: %w", err)
	}
	var c *apikey.Consumer
	if len(m) > 0 {
		c = parseConsumer(id, m)
	}
	d.mu.Lock()
	if d.gen == gen {
		d.evictIfFull()
		d.consumers[id] = cachedConsumer{c: c, at: d.clock()}
	}
	d.mu.Unlock()
	return c, nil
}

func (d *Directory) available(key string) bool { return d.avail == nil || d.avail(key) }

func (d *Directory) fail(key string, err error) {
	if d.failed != nil {
		d.failed(key, err)
	}
}

// evictIfFull drops stale entries, and everything if that is not enough.
// Call with mu held.
func (d *Directory) evictIfFull() {
	if len(d.keys)+len(d.consumers) < d.max {
		return
	}
	for h, e := range d.keys {
		if !d.fresh(e.at) {
			delete(d.keys, h)
		}
	}
	for id, e := range d.consumers {
		if !d.fresh(e.at) {
			delete(d.consumers, id)
		}
	}
	if len(d.keys)+len(d.consumers) >= d.max {
		clear(d.keys)
		clear(d.consumers)
	}
}

// Consumer implements apikey.Directory (plan-aware rate limits).
func (d *Directory) Consumer(id string) (*apikey.Consumer, bool) {
	d.mu.Lock()
	e, ok := d.consumers[id]
	d.mu.Unlock()
	if ok && d.fresh(e.at) {
		return e.c, e.c != nil
	}
	v, err, _ := d.group.Do("c"+id, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
		defer cancel()
		return d.fetchConsumer(ctx, id)
	})
	if err != nil {
		return e.c, ok && e.c != nil
	}
	c := v.(*apikey.Consumer)
	return c, c != nil
}

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

// PutKey implements apikey.Store.
func (d *Directory) PutKey(ctx context.Context, k *apikey.Key) error {
	fields := map[string]any{"id": k.ID, "consumer": k.ConsumerID, "revoked": boolString(k.Revoked), "expires_at": timeString(k.ExpiresAt),
		"created_at": timeString(k.CreatedAt), "replaced_by": k.ReplacedBy}
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

// invalidate drops cached lookups here and tells every replica to drop
// theirs: "k"+hash for a key, "c"+id for a consumer and every key of it
// cached. A replica that misses the message (it was not subscribed) still
// drops them within the cache TTL.
func (d *Directory) invalidate(ctx context.Context, entries ...string) {
	d.drop(entries)
	if err := d.client.Publish(ctx, keyspace.Invalidate, strings.Join(entries, "\n")).Err(); err != nil {
		d.log.Warn("tell replicas to drop cached lookups; they will within the cache TTL", zap.Error(err))
	}
}

// drop removes cached entries (see invalidate).
func (d *Directory) drop(entries []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	for _, e := range entries {
		switch {
		case strings.HasPrefix(e, "k"):
			delete(d.keys, e[1:])
		case strings.HasPrefix(e, "c"):
			id := e[1:]
			delete(d.consumers, id)
			for h, k := range d.keys {
				if k.key != nil && k.key.ConsumerID == id {
					delete(d.keys, h)
				}
			}
		}
	}
}

// Follow drops the cached lookups other replicas invalidate, until stop
// is called; on every (re)subscription it drops all it cached, as
// messages may have been missed while it was away.
func (d *Directory) Follow() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ps := d.client.Subscribe(ctx, keyspace.Invalidate)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := ps.Receive(ctx)
			if ctx.Err() != nil {
				return
			}
			switch m := msg.(type) {
			case *redis.Subscription:
				d.dropAll()
			case *redis.Message:
				d.drop(strings.Split(m.Payload, "\n"))
			}
			if err != nil {
				select { // Redis is away: go-redis reconnects on the next Receive
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}()
	return func() {
		cancel()
		ps.Close()
		<-done
	}
}

func (d *Directory) dropAll() {
	d.mu.Lock()
	d.gen++
	clear(d.keys)
	clear(d.consumers)
	d.mu.Unlock()
}

func parseKey(hash string, m map[string]string) *apikey.Key {
	return &apikey.Key{ID: m["id"], Hash: hash, ConsumerID: m["consumer"], Revoked: m["revoked"] == "1", ExpiresAt: parseTime(m["expires_at"]),
		CreatedAt: parseTime(m["created_at"]), ReplacedBy: m["replaced_by"]}
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

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixNano(), 10)
}

func parseTime(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// Health pings Redis and keeps this replica in the replica registry. On
// a Redis Cluster it pings every master and knows which serves each hash
// slot, so that a master that is down stops only the decisions and
// lookups of its own slots: levy stays ready while any master answers.
type Health struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // nil on a standalone Redis
	id      string
	every   time.Duration
	log     *zap.Logger

	ready    atomic.Bool
	nodes    atomic.Pointer[nodeMap]  // a cluster's masters, from the last ping
	pingers  map[string]*redis.Client // by master; used by beat alone
	replicas atomic.Int64
	pings    atomic.Uint64
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// nodeMap is a cluster's masters as a ping found them: which serves each
// hash slot, and which are down (their ping, or a call since, failed).
type nodeMap struct {
	addrs []string
	slots [16384]uint16 // 1 + index in addrs; 0: no master known
	down  []atomic.Bool
}

// StartHealth begins pinging every interval; Stop ends it.
func StartHealth(client redis.UniversalClient, replicaID string, every time.Duration, log *zap.Logger) *Health {
	h := &Health{client: client, id: replicaID, every: every, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	h.cluster, _ = client.(*redis.ClusterClient)
	h.replicas.Store(1)
	h.beat()
	go h.loop()
	return h
}

func (h *Health) loop() {
	defer close(h.done)
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			h.client.ZRem(ctx, keyspace.Replicas, h.id)
			cancel()
			h.closePingers(nil)
			return
		case <-t.C:
			h.beat()
		}
	}
}

// beat pings Redis (every master of a cluster), records this replica and
// counts the live ones.
func (h *Health) beat() {
	ctx, cancel := context.WithTimeout(context.Background(), h.every)
	defer cancel()
	now := time.Now().UnixMilli()
	pipe := h.client.TxPipeline()
	pipe.ZAdd(ctx, keyspace.Replicas, redis.Z{Score: float64(now), Member: h.id})
	pipe.ZRemRangeByScore(ctx, keyspace.Replicas, "-inf", strconv.FormatInt(now-5*h.every.Milliseconds()-1000, 10))
	card := pipe.ZCard(ctx, keyspace.Replicas)
	_, err := pipe.Exec(ctx)
	if err == nil && card.Val() > 0 {
		h.replicas.Store(card.Val())
	}
	if h.cluster != nil {
		// The registry lives on one master; readiness is any master's.
		err = h.pingMasters()
	}
	was := h.ready.Swap(err == nil)
	switch {
	case err != nil && was:
		h.log.Error("redis unreachable; levy is not ready", zap.Error(err))
	case err == nil && !was:
		h.log.Info("redis reachable; levy is ready")
	}
	h.pings.Add(1)
}

// Pings is how many pings have completed.
func (h *Health) Pings() uint64 { return h.pings.Load() }

// pingMasters reads which master serves each slot and pings every one,
// each on a connection of its own (a cluster client would route the pings
// through its view of the cluster, which a dead node slows for all); it
// fails when none answers.
func (h *Health) pingMasters() error {
	ctx, cancel := context.WithTimeout(context.Background(), h.every)
	m := &nodeMap{}
	slots, err := h.cluster.ClusterSlots(ctx).Result()
	cancel()
	switch {
	case err == nil:
		index := map[string]uint16{}
		for _, r := range slots {
			if len(r.Nodes) == 0 || r.Start < 0 || r.End >= len(m.slots) {
				continue
			}
			addr := r.Nodes[0].Addr
			i, ok := index[addr]
			if !ok {
				m.addrs = append(m.addrs, addr)
				i = uint16(len(m.addrs))
				index[addr] = i
			}
			for s := r.Start; s <= r.End; s++ {
				m.slots[s] = i
			}
		}
	case h.nodes.Load() != nil: // the node asked is down: the last map stands
		old := h.nodes.Load()
		m.addrs, m.slots = old.addrs, old.slots
	default:
		return err
	}
	m.down = make([]atomic.Bool, len(m.addrs))
	ctx, cancel = context.WithTimeout(context.Background(), h.every)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(m.addrs))
	for i, addr := range m.addrs {
		c := h.pinger(addr)
		wg.Go(func() {
			errs[i] = c.Ping(ctx).Err()
			m.down[i].Store(errs[i] != nil)
		})
	}
	wg.Wait()
	h.closePingers(m.addrs)
	wasDown := map[string]bool{}
	if old := h.nodes.Swap(m); old != nil {
		for i, a := range old.addrs {
			wasDown[a] = old.down[i].Load()
		}
	}
	up := 0
	for i, a := range m.addrs {
		was, known := wasDown[a]
		switch down := m.down[i].Load(); {
		case down && !was:
			h.log.Error("redis node unreachable; its hash slots are decided as the store being down", zap.String("node", a), zap.Error(errs[i]))
		case !down && known && was:
			h.log.Info("redis node reachable", zap.String("node", a))
		}
		if !m.down[i].Load() {
			up++
		}
	}
	if up == 0 {
		return fmt.Errorf("no cluster master answered: %w", errors.Join(errs...))
	}
	return nil
}

// pinger is the ping connection to the master at addr, opened with the
// cluster client's settings.
func (h *Health) pinger(addr string) *redis.Client {
	if c, ok := h.pingers[addr]; ok {
		return c
	}
	o := h.cluster.Options()
	c := redis.NewClient(&redis.Options{Addr: addr, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
		DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, PoolSize: 1, MaxRetries: -1})
	if h.pingers == nil {
		h.pingers = map[string]*redis.Client{}
	}
	h.pingers[addr] = c
	return c
}

// closePingers closes the ping connections of nodes that are not among
// masters (all of them, given none).
func (h *Health) closePingers(masters []string) {
	for addr, c := range h.pingers {
		if !slices.Contains(masters, addr) {
			c.Close()
			delete(h.pingers, addr)
		}
	}
}

// SlotReady reports whether a call for hash slot slot (0 on a standalone
// Redis) should be made: Redis answered the last ping and, on a cluster,
// so did the master of that slot, and no call to it has failed since.
func (h *Health) SlotReady(slot uint16) bool {
	if !h.ready.Load() {
		return false
	}
	m := h.nodes.Load()
	if m == nil || int(slot) >= len(m.slots) || m.slots[slot] == 0 {
		return true
	}
	return !m.down[m.slots[slot]-1].Load()
}

// SlotFailed marks Redis down at once (on a cluster, the master of slot)
// when err says the connection failed (a network error or timeout, not a
// Redis error reply); the next good ping marks it up again. Callers that
// ask SlotReady first then stop dialing a Redis that is away.
func (h *Health) SlotFailed(slot uint16, err error) {
	var rerr redis.Error
	if err == nil || errors.As(err, &rerr) {
		return
	}
	if m := h.nodes.Load(); m != nil && int(slot) < len(m.slots) && m.slots[slot] != 0 {
		i := m.slots[slot] - 1
		if !m.down[i].Swap(true) {
			h.log.Error("redis node unreachable; its hash slots are decided as the store being down",
				zap.String("node", m.addrs[i]), zap.Error(err))
		}
		return
	}
	if h.ready.Swap(false) {
		h.log.Error("redis unreachable; levy is not ready", zap.Error(err))
	}
}

// Ready reports whether the last ping worked (on a cluster, whether any
// master answered it).
func (h *Health) Ready() bool { return h.ready.Load() }

// Replicas is the number of live replicas at the last good ping (at least 1).
func (h *Health) Replicas() int { return int(max(h.replicas.Load(), 1)) }

// Stop ends pinging and leaves the registry.
func (h *Health) Stop() {
	h.stopOnce.Do(func() { close(h.stop) })
	<-h.done
}

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
