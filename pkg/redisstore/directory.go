package redisstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/keyspace"
)

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
	// self names this directory's invalidations, which come back to it
	// through the channel it follows: it dropped those entries when it
	// sent them, and may have cached fresh ones since.
	self string

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
		keys: map[string]cachedKey{}, consumers: map[string]cachedConsumer{}, self: "r" + rand.Text()}
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
