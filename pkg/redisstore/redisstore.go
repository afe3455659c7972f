// Package redisstore keeps levy's shared state in Redis (standalone or
// Cluster): consumers and keys with an in-process cache, the replica
// registry that sizes each replica's share when Redis is away, readiness,
// leases, Stripe event claims, the demo keys, and the move of state keys
// to keyspace's current layout. The limiter's Redis side lives in
// pkg/limiter; every key's name comes from pkg/keyspace.
//
// One file a concern: the client (this file), directory.go (the cached
// lookups), keys.go and consumers.go (their records; fields.go their
// field encodings), backfill.go (indexes of older records),
// invalidate.go (cache drops across replicas), health.go (pings and the
// replica registry), lease.go, events.go, demokeys.go and layout.go.
package redisstore

import (
	"crypto/tls"
	"time"

	"github.com/redis/go-redis/v9"
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
// A cluster client still sends a command again after a broken connection
// or a TRYAGAIN, whatever MaxRetries says, and follows MOVED and ASK
// (MaxRedirects); the limiter's decisions refuse that themselves
// (limiter's sentOnce); the ledger's settlements apply each request once
// by its fingerprint (or a one-off one its call carries, limiter's
// oneOff) and an add once by its token, so a call sent again applies
// nothing twice there. The usage history's counts (HINCRBY, the activity
// merge) are not guarded so: one sent again counts twice, in charts, never
// in what is billed.
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
