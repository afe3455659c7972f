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
