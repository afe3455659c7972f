package limiter

import (
	"cmp"
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"time"

	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

//go:embed peek.lua
var peekLua string

var (
	_ Store = (*Local)(nil)
	_ Store = (*Redis)(nil)
)

// Reading is what limits have used and have left at Now, as Peek reads
// them.
type Reading struct {
	// Statuses are one per limit, in order: what a check of the limit
	// alone that takes nothing would answer.
	Statuses []Status
	Now      time.Time
}

// Peek reads what limits have used and have left now, each on its own,
// without writing anything: no bucket is refilled, no quota period
// rolled, no ledger window opened, no key's expiry touched. Costs are
// ignored. A usage report reads with it; a request that checks without
// taking (hits_addend 0) is a decision, and calls Decide at cost 0.
func (l *Local) Peek(ctx context.Context, limits []Limit) (Reading, error) {
	if err := ctx.Err(); err != nil {
		return Reading{}, err
	}
	if err := validPeek(limits); err != nil {
		return Reading{}, err
	}
	now := l.now()
	r := Reading{Now: now, Statuses: make([]Status, len(limits))}
	for i := range limits {
		lim := &limits[i]
		sh := l.shardFor(lim.Key)
		sh.mu.Lock()
		stored, start, err := l.peekState(lim, sh, now)
		sh.mu.Unlock()
		if err != nil {
			return Reading{}, err
		}
		r.Statuses[i] = peekStatus(lim, now, stored, start)
	}
	return r, nil
}

// peekState reads lim's stored state (sh, its shard, is locked) and a
// ledger's window start, as load does, but leaves memory as it was: a
// counter read from the store is not kept.
func (l *Local) peekState(lim *Limit, sh *shard, now time.Time) (stored, start int64, err error) {
	switch lim.Kind {
	case Bucket:
		return sh.buckets[lim.Key], 0, nil
	case Quota:
		id := counterID{lim.Key, plan.PeriodAt(now, lim.Unit, lim.Anchor).Start.Unix()}
		if c, ok := sh.counters[id]; ok || l.reader == nil {
			return c.value, id.start, nil
		}
		c, _, err := l.reader.ReadCounter(id.String())
		if err != nil {
			return 0, 0, fmt.Errorf("read quota counter: %w", err)
		}
		return c.Value, id.start, nil
	default:
		start = usage.WindowAt(now, lim.WindowSize).Unix()
		if e, ok := sh.ledger[counterID{lim.Key, start}]; ok {
			stored = e.Units
		}
		return stored, start, nil
	}
}

// Add adds each limit's cost to its counter, unconditionally: usage
// recorded after the fact, or units owed since an outage. A quota or a
// ledger window counts them past any bound (shadow and quota-mode limits
// alike); a limit of cost 0 adds nothing. Buckets are no counters: Add
// refuses them with ErrBadLimit (a bucket's spent units are a Debit in a
// decision). Add is atomic as a decision is.
func (l *Local) Add(ctx context.Context, limits []Limit) error {
	added, err := additions(limits)
	if err != nil {
		return err
	}
	_, err = l.Decide(ctx, added)
	return err
}

// Peek implements Peek (Local.Peek says what it reads) on Redis: one
// read-only script call per hash slot, on the store's clock. On a cluster
// the calls go in one pipeline (see Redis.pipeline): the usage-alert scan
// and the console's index read 1,000 consumers, whose slots are all
// different, a Peek. A scan of 100,000 consumers on three masters
// (pkg/alert's BenchmarkScan100k/cluster) took 11.5-13.2 s and 100,000
// round trips with a call after call, 1.1-2.1 s and 301 this way (2
// shared cores, load 3-6).
func (r *Redis) Peek(ctx context.Context, limits []Limit) (Reading, error) {
	if err := validPeek(limits); err != nil {
		return Reading{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	groups := r.groups(limits)
	slot := func(g int) uint16 {
		if !r.cluster {
			return 0
		}
		return Slot(limits[groups[g][0]].Key)
	}
	args := make([][]any, len(groups))
	for g, idx := range groups {
		if !r.available(slot(g)) {
			return Reading{}, ErrStoreDown
		}
		args[g] = r.peekArgs(limits, idx)
	}
	out := Reading{Statuses: make([]Status, len(limits))}
	var first error
	for g, rep := range r.evalEach(ctx, r.peekScript, args) {
		now, err := peekRead(rep, limits, groups[g], out.Statuses)
		if err != nil {
			if r.failed != nil {
				r.failed(slot(g), err)
			}
			first = cmp.Or(first, err)
			continue
		}
		if g == 0 {
			out.Now = now
		}
	}
	if first != nil {
		return Reading{}, fmt.Errorf("redis peek: %w", first)
	}
	return out, nil
}

// peekArgs is the call of peek.lua that reads limits idx (they share a
// hash slot).
func (r *Redis) peekArgs(limits []Limit, idx []int) []any {
	// EVALSHA digest numkeys KEYS... clock (kind size)...
	args := make([]any, 3, 4+3*len(idx))
	args[0], args[1], args[2] = "evalsha", r.peekScript.sha, len(idx)
	for _, i := range idx {
		args = append(args, limits[i].Key)
	}
	clock := ""
	if r.clock != nil {
		clock = strconv.FormatInt(r.clock().UnixMicro(), 10)
	}
	args = append(args, clock)
	for _, i := range idx {
		args = append(args, int64(limits[i].Kind), int64(limits[i].WindowSize/time.Second))
	}
	return args
}

// peekRead writes the statuses of limits idx from their peek.lua call's
// reply, and returns the store's clock.
func peekRead(rep reply, limits []Limit, idx []int, statuses []Status) (time.Time, error) {
	v, err := rep.v, rep.err
	if err != nil {
		return time.Time{}, err
	}
	if len(v) != 2+2*len(idx) {
		return time.Time{}, fmt.Errorf("malformed reply")
	}
	now := time.Unix(v[0], v[1]*1000).UTC()
	for j, i := range idx {
		lim := &limits[i]
		a, b := v[2+2*j], v[3+2*j]
		switch lim.Kind {
		case Bucket:
			statuses[i] = peekStatus(lim, now, a, 0)
		case Quota:
			start := plan.PeriodAt(now, lim.Unit, lim.Anchor).Start.Unix()
			if a != start {
				b = 0 // the count is an earlier period's
			}
			statuses[i] = peekStatus(lim, now, b, start)
		default:
			statuses[i] = peekStatus(lim, now, b, a)
		}
	}
	return now, nil
}

// Add implements Add (Local.Add says what it adds) on Redis: a decision
// of the limits made additions. Like a decision's, an addition whose
// reply came too late is given back, so that its caller can try again.
func (r *Redis) Add(ctx context.Context, limits []Limit) error {
	added, err := additions(limits)
	if err != nil {
		return err
	}
	_, err = r.Decide(ctx, added)
	return err
}

// additions is limits as a decision that adds their costs whatever
// their bounds: each quota soft and without a cap, so that it counts and
// is never over, and no limit can deny. Limits of cost 0 are left out:
// they add nothing, and open no ledger window.
func additions(limits []Limit) ([]Limit, error) {
	out := make([]Limit, 0, len(limits))
	for _, l := range limits {
		if l.Kind == Bucket {
			return nil, fmt.Errorf("%w %q: Add counts, and a bucket is no counter", ErrBadLimit, l.Name)
		}
		if l.Cost <= 0 {
			continue
		}
		l.Shadow, l.QuotaMode = false, false
		if l.Kind == Quota {
			l.Soft, l.Max, l.Cap = true, 0, 0
		}
		out = append(out, l)
	}
	return out, nil
}

// validPeek checks limits as Decide would at cost 0, without changing
// them.
func validPeek(limits []Limit) error {
	for i := range limits {
		l := limits[i]
		l.Cost = 0
		if err := validLimit(&l); err != nil {
			return err
		}
	}
	return nil
}

// peekStatus is what a check of lim alone that takes nothing answers at
// now, from its stored state (a bucket's tat, a quota's count in its
// current period, a ledger window's units) and a quota's period or a
// ledger's window start. Decide's evaluation, at cost 0.
func peekStatus(lim *Limit, now time.Time, stored, start int64) Status {
	switch lim.Kind {
	case Bucket:
		st, _ := evalBucket(lim, 0, now.UnixMicro(), stored)
		return st
	case Quota:
		p := plan.PeriodAt(now, lim.Unit, lim.Anchor)
		st, _ := evalQuota(lim, 0, stored, now, &p)
		return st
	default:
		return Status{OK: true, Used: stored, PeriodStart: time.Unix(start, 0).UTC(), Remaining: -1}
	}
}
