package redisstore

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/keyspace"
)

// invalidate drops cached lookups here and tells every replica to drop
// theirs: "k"+hash for a key, "c"+id for a consumer and every key of it
// cached, after "r" and the sender's name (which a replica that predates
// it ignores, as an entry of no kind it knows). A replica that misses the
// message (it was not subscribed) still drops them within the cache TTL.
func (d *Directory) invalidate(ctx context.Context, entries ...string) {
	d.drop(entries)
	msg := d.self + "\n" + strings.Join(entries, "\n")
	if err := d.client.Publish(ctx, keyspace.Invalidate, msg).Err(); err != nil {
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

// receive drops what another replica's invalidation names. Its own come
// back too, later: it dropped those entries when it sent them, and what
// it has cached since is fresh (dropped again, a key cached just before
// the store went away would be lost to a fail-open replica).
func (d *Directory) receive(payload string) {
	entries := strings.Split(payload, "\n")
	if entries[0] == d.self {
		return
	}
	d.drop(entries)
}

// Follow drops the cached lookups other replicas invalidate, until stop
// is called; on every subscription after the first it drops all it
// cached, as messages may have been missed while it was away (before the
// first, what it cached is younger than the cache TTL, as is what any
// replica that missed a message holds).
func (d *Directory) Follow() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ps := d.client.Subscribe(ctx, keyspace.Invalidate)
	done := make(chan struct{})
	go func() {
		defer close(done)
		subscribed := false
		for {
			msg, err := ps.Receive(ctx)
			if ctx.Err() != nil {
				return
			}
			switch m := msg.(type) {
			case *redis.Subscription:
				if subscribed {
					d.dropAll()
				}
				subscribed = true
			case *redis.Message:
				d.receive(m.Payload)
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
