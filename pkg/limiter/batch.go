package limiter

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// batcher combines concurrent decisions into one script call. Its workers
// take whatever requests are waiting (up to maxBatch) and decide them in
// one EVALSHA, one after the other as if each were alone: under load the
// script's fixed cost and the round trip are paid once per batch, and with
// one request waiting nothing waits for company. In a cluster it takes
// requests whose limits share a hash slot, and sends one EVALSHA per slot,
// in one pipeline per master (runSlots).
type batcher struct {
	r    *Redis
	in   chan *call
	stop chan struct{}
	// late holds a token for each worker: the one taking the queue, and
	// those waiting for a late reply.
	late chan struct{}
	wg   sync.WaitGroup
}

type call struct {
	ctx    context.Context
	limits []Limit
	slot   uint16 // in a cluster, the hash slot of every limit
	done   chan struct{}
	d      Decision
	err    error
	// state says who owns the outcome: pending until the reply comes or
	// the caller gives up, whichever is first. A call its caller gave up
	// on (abandoned) is answered to no one: what its script took is given
	// back when the reply comes (see Redis.settle).
	state atomic.Int32
}

// A call's states.
const (
	pending int32 = iota
	answered
	abandoned
)

const (
	maxBatch = 64
	// maxBatchLimits bounds the limits of one script call, during which
	// Redis serves no one else. Without it, 64 requests of the most limits
	// one may have (64) made one call of 4096 limits, which held Redis for
	// 20-49 ms (BenchmarkScriptCallByLimits, runs on a loaded 2-core
	// machine): up to the store timeout, for every replica's decisions. 256
	// limits took 1.3-1.7 ms in the same runs; batches of consumers'
	// requests (2-3 limits each) are not cut.
	maxBatchLimits = 256
	batchWorkers   = 1 // batches in flight at once: one lets batches grow under load (two measured slower)
	batchQueueSize = 1024
	// maxLate bounds the workers while Redis is slow: the one taking the
	// queue and those waiting for a reply their callers no longer wait
	// for. At the bound the queue waits for the worker, as it does for
	// every batch while Redis is fast.
	maxLate = 16
)

func newBatcher(r *Redis) *batcher {
	b := &batcher{r: r, in: make(chan *call, batchQueueSize), stop: make(chan struct{}), late: make(chan struct{}, maxLate)}
	b.wg.Add(batchWorkers)
	for range batchWorkers {
		b.late <- struct{}{}
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

// wait waits for a submitted request's answer or ctx. A caller that gives
// up first abandons the call: its script may still run (it may be on the
// wire already), and whatever it takes is given back when its reply comes.
func (b *batcher) wait(ctx context.Context, c *call) (Decision, error) {
	select {
	case <-c.done:
		return c.d, c.err
	case <-ctx.Done():
		if c.state.CompareAndSwap(pending, abandoned) {
			return Decision{}, ctx.Err()
		}
		<-c.done // answered just now: the caller gets it
		return c.d, c.err
	}
}

// work decides batches until stop, or until the timer of a batch that had
// no reply at the store timeout started another worker in its place: this
// one then waits for that reply (replyWait at most), settles it, and ends.
// While Redis is fast the worker makes the script call itself, with no
// handoff to another goroutine; the timer is its only extra cost.
func (b *batcher) work() {
	defer func() { <-b.late; b.wg.Done() }()
	var (
		mu       sync.Mutex
		current  []*call
		replaced bool
	)
	timer := time.AfterFunc(time.Hour, func() {
		mu.Lock()
		defer mu.Unlock()
		b.r.expire(current)
		// Another worker takes the queue, unless maxLate batches already
		// wait: the queue then waits, as it does for every batch while
		// Redis is fast.
		select {
		case b.late <- struct{}{}:
			b.wg.Add(1)
			replaced = true
			go b.work()
		default:
		}
	})
	timer.Stop()
	var next *call // taken, but over the last batch's limits
	// This worker's buffers: the timer reads current only while run
	// decides it, and no one keeps either after.
	batch := make([]*call, 0, maxBatch)
	limits := make([][]Limit, 0, maxBatch)
	for {
		batch = batch[:0]
		if next != nil {
			batch, next = append(batch, next), nil
		} else {
			select {
			case <-b.stop:
				return
			case c := <-b.in:
				batch = append(batch, c)
			}
		}
		n := len(batch[0].limits)
	more:
		for len(batch) < maxBatch {
			select {
			case c := <-b.in:
				if n+len(c.limits) > maxBatchLimits {
					next = c
					break more
				}
				n += len(c.limits)
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
				if c.state.CompareAndSwap(pending, abandoned) {
					c.err = err
					close(c.done)
				}
				continue
			}
			live = append(live, c)
		}
		batch = live
		if len(batch) == 0 {
			continue
		}
		// The callers wait for the store timeout at most (the timer). The
		// script call is not cut off then: a call cut off on the wire may
		// still run, and take costs for requests whose callers saw it
		// fail. It waits for its reply (replyWait at most), so that those
		// costs are known and given back (Redis.answer).
		mu.Lock()
		current = batch
		mu.Unlock()
		timer.Reset(b.r.timeout)
		limits = b.run(batch, limits[:0])
		timer.Stop()
		mu.Lock() // the timer's function, if it ran, is done
		gone := replaced
		mu.Unlock()
		if gone {
			if next != nil { // taken from the queue: back to it
				select {
				case b.in <- next:
				case <-b.stop:
					if next.state.CompareAndSwap(pending, abandoned) {
						next.err = ErrStoreDown
						close(next.done)
					}
				}
			}
			return
		}
	}
}

// run decides a batch and answers its calls; limits is a buffer, returned
// for the next batch.
func (b *batcher) run(batch []*call, limits [][]Limit) [][]Limit {
	ctx, cancel := context.WithTimeout(context.Background(), b.r.replyWait)
	defer cancel()
	if b.r.cluster {
		b.runSlots(ctx, batch)
		return limits
	}
	for _, c := range batch {
		limits = append(limits, c.limits)
	}
	res, now, err := b.r.runBatch(ctx, b.r.decideScript, limits)
	b.r.answer(batch, res, now, err)
	return limits
}

// errSlow answers the calls of a batch whose reply did not come within
// the store timeout.
var errSlow = fmt.Errorf("redis decide: no reply within the store timeout: %w", context.DeadlineExceeded)

// expire answers a batch's calls that have no reply at the store timeout
// errSlow (what their script takes is given back when the reply comes),
// and tells health of their slots.
func (r *Redis) expire(calls []*call) {
	var slots []uint16
	for _, c := range calls {
		if c.state.CompareAndSwap(pending, abandoned) {
			c.err = errSlow
			close(c.done)
			if r.failed != nil && !slices.Contains(slots, c.slot) {
				slots = append(slots, c.slot)
				r.failed(c.slot, errSlow)
			}
		}
	}
}

// runSlots decides a cluster's batch: one script call per hash slot (each
// call's limits share one), sent as one pipeline per master, the masters'
// at once. A master reads its calls of the batch in one wakeup, and its
// slots are answered when its replies come: a slow master holds up its
// own slots only. Against a call and a round trip per slot, on three
// masters with 200 consumers (test/bench's BenchmarkCheckRedisCluster,
// lean caller, 2 shared cores) this took levy's CPU per Check from
// 102-160 to 76-84 µs and the masters' from 64-93 to 49-53 µs.
func (b *batcher) runSlots(ctx context.Context, batch []*call) {
	var slots []slotCalls
	for _, calls := range groupBy(batch, func(c *call) uint16 { return c.slot }) {
		s := slotCalls{calls: calls}
		for _, c := range calls {
			s.limits = append(s.limits, c.limits)
		}
		slots = append(slots, s)
	}
	var wg sync.WaitGroup
	for _, group := range b.r.byMaster(ctx, slots) {
		wg.Go(func() { b.r.decideSlots(ctx, group) })
	}
	wg.Wait()
}

// decideSlots decides slots' calls in one pipeline, a script call per
// slot (each atomic, as runBatch's), and answers each slot's calls with
// its call's reply, or error (which health hears of for that slot).
func (r *Redis) decideSlots(ctx context.Context, slots []slotCalls) {
	args, want := make([][]any, len(slots)), make([]int, len(slots))
	for i := range slots {
		args[i], want[i] = r.batchArgs(r.decideScript, slots[i].limits)
	}
	for i, rep := range r.evalEach(ctx, r.decideScript, args) {
		res, now, err := r.batchReply(slots[i].limits, want[i], rep.v, rep.err)
		r.answer(slots[i].calls, res, now, err)
	}
}

// answer hands each call its decision, or err. A call whose caller is
// gone (abandoned) is settled instead: see Redis.settle.
func (r *Redis) answer(calls []*call, res []requestAnswer, now time.Time, err error) {
	var late []lateCall
	for i, c := range calls {
		var d Decision
		if err == nil {
			d = Decision{OK: res[i].denied < 0, Denied: res[i].denied, Statuses: res[i].statuses, Now: now}
		}
		if !c.state.CompareAndSwap(pending, answered) {
			late = append(late, lateCall{limits: asDecided(c.limits, d.Statuses), d: d})
			continue
		}
		c.d, c.err = d, err
		close(c.done)
	}
	r.settle(calls, late, err)
}

// close stops the workers; queued requests that were not taken fail.
func (b *batcher) close() {
	close(b.stop)
	b.wg.Wait()
	for {
		select {
		case c := <-b.in:
			if c.state.CompareAndSwap(pending, abandoned) {
				c.err = ErrStoreDown
				close(c.done)
			}
		default:
			return
		}
	}
}
