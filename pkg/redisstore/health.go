package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/keyspace"
)

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
			h.client.ZRem(ctx, keyspace.Replicas, keyspace.ReplicaMember(h.id))
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
	// The member names the layout this replica writes: exports wait while
	// a replica of an older one is registered (LayoutComplete).
	pipe.ZAdd(ctx, keyspace.Replicas, redis.Z{Score: float64(now), Member: keyspace.ReplicaMember(h.id)})
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
