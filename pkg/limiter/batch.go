package limiter

import (
	"context"
	"sync"
	"time"
)

// batcher combines concurrent decisions into one script call. Its workers
// take whatever requests are waiting (up to maxBatch) and decide them in
// one EVALSHA, one after the other as if each were alone: under load the
// script's fixed cost and the round trip are paid once per batch, and with
// one request waiting nothing waits for company. In a cluster it takes
// requests whose limits share a hash slot, and sends one EVALSHA per slot,
// all at once.
type batcher struct {
	r    *Redis
	in   chan *call
	stop chan struct{}
	wg   sync.WaitGroup
}

type call struct {
	ctx    context.Context
	limits []Limit
	slot   uint16 // in a cluster, the hash slot of every limit
	done   chan struct{}
	d      Decision
	err    error
}

const (
	maxBatch       = 64
	batchWorkers   = 1 // batches in flight at once: one lets batches grow under load (two measured slower)
	batchQueueSize = 1024
)

func newBatcher(r *Redis) *batcher {
	b := &batcher{r: r, in: make(chan *call, batchQueueSize), stop: make(chan struct{})}
	b.wg.Add(batchWorkers)
	for range batchWorkers {
		go b.work()
	}
	return b
}

// decide queues a request and waits for its answer or ctx. In a cluster,
// slot is the hash slot of all its limits.
func (b *batcher) decide(ctx context.Context, limits []Limit, slot uint16) (Decision, error) {
	c, err := b.submit(ctx, limits, slot)
	if err != nil {
		return Decision{}, err
	}
	return b.wait(ctx, c)
}

// submit queues a request without waiting for its answer.
func (b *batcher) submit(ctx context.Context, limits []Limit, slot uint16) (*call, error) {
	c := &call{ctx: ctx, limits: limits, slot: slot, done: make(chan struct{})}
	select {
	case b.in <- c:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.stop:
		return nil, ErrStoreDown
	}
}

// wait waits for a submitted request's answer or ctx.
func (b *batcher) wait(ctx context.Context, c *call) (Decision, error) {
	select {
	case <-c.done:
		return c.d, c.err
	case <-ctx.Done():
		// The decision may still be taken; so might a call that timed out
		// on the wire.
		return Decision{}, ctx.Err()
	}
}

func (b *batcher) work() {
	defer b.wg.Done()
	batch := make([]*call, 0, maxBatch)
	limits := make([][]Limit, 0, maxBatch)
	for {
		select {
		case <-b.stop:
			return
		case c := <-b.in:
			batch = append(batch[:0], c)
		}
	more:
		for len(batch) < maxBatch {
			select {
			case c := <-b.in:
				batch = append(batch, c)
			default:
				break more
			}
		}
		// A caller that gave up while queued is not decided: its request
		// was answered with an error and must not be counted.
		live := batch[:0]
		for _, c := range batch {
			if err := c.ctx.Err(); err != nil {
				c.err = err
				close(c.done)
				continue
			}
			live = append(live, c)
		}
		batch = live
		if len(batch) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), b.r.timeout)
		if b.r.cluster {
			b.runSlots(ctx, batch)
		} else {
			limits = limits[:0]
			for _, c := range batch {
				limits = append(limits, c.limits)
			}
			res, now, err := b.r.runBatch(ctx, b.r.decide, limits)
			answer(batch, res, now, err)
		}
		cancel()
	}
}

// runSlots decides a cluster's batch: one script call per hash slot (each
// call's limits share one), all at once.
func (b *batcher) runSlots(ctx context.Context, batch []*call) {
	slots := map[uint16]int{}
	var calls [][]*call
	var limits [][][]Limit
	for _, c := range batch {
		g, ok := slots[c.slot]
		if !ok {
			g = len(calls)
			slots[c.slot] = g
			calls, limits = append(calls, nil), append(limits, nil)
		}
		calls[g], limits[g] = append(calls[g], c), append(limits[g], c.limits)
	}
	if len(calls) == 1 {
		res, now, err := b.r.runBatch(ctx, b.r.decide, limits[0])
		answer(calls[0], res, now, err)
		return
	}
	res, nows, errs := b.r.runBatches(ctx, b.r.decide, limits)
	for g := range calls {
		answer(calls[g], res[g], nows[g], errs[g])
	}
}

// answer hands each call its decision, or err.
func answer(calls []*call, res []decided, now time.Time, err error) {
	for i, c := range calls {
		if err != nil {
			c.err = err
		} else {
			c.d = Decision{OK: res[i].denied < 0, Denied: res[i].denied, Statuses: res[i].statuses, Now: now}
		}
		close(c.done)
	}
}

// close stops the workers; queued requests that were not taken fail.
func (b *batcher) close() {
	close(b.stop)
	b.wg.Wait()
	for {
		select {
		case c := <-b.in:
			c.err = ErrStoreDown
			close(c.done)
		default:
			return
		}
	}
}
