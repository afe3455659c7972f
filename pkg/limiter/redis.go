package limiter

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/plan"
)

//go:embed decide.lua
var decideLua string

// Scripter is what the Redis limiter needs of a client: *redis.Client and
// *redis.ClusterClient qualify.
type Scripter interface {
	Process(ctx context.Context, cmd redis.Cmder) error
}

// script is a Lua script levy calls by its digest.
type script struct{ src, sha string }

func newScript(src string) script { return script{src: src, sha: redis.NewScript(src).Hash()} }

// RedisConfig configures a Redis limiter.
type RedisConfig struct {
	Client Scripter
	// Cluster is set when Client is a Redis Cluster (a
	// *redis.ClusterClient): limits are then grouped by hash slot, one
	// script call per slot, and the calls of a batch are pipelined.
	Cluster bool
	// Clock replaces Redis TIME; for tests only (nil in production, where
	// the store's clock is the only clock).
	Clock func() time.Time
	// Timeout bounds one decision's store call (default 50ms), within the
	// caller's own deadline.
	Timeout time.Duration
	// Available, when set, is asked first, with the hash slot of the
	// limits (0 on a standalone Redis): while it says no, decisions fail
	// at once with ErrStoreDown instead of dialing a Redis (on a cluster,
	// a master) that is known to be away, which also keeps the client's
	// dial breaker from tripping and answering errors for a second after
	// it returns.
	Available func(slot uint16) bool
	// Failed, when set, hears of every failed store call and its slot, so
	// that health can mark the store (or the slot's master) down at once
	// rather than at its next ping.
	Failed func(slot uint16, err error)
	// ReplyWait bounds how long a script call waits for Redis's reply
	// after its callers stopped waiting (at Timeout), so that what it took
	// for them can be given back (default 20 times Timeout, at least 1s).
	// The client's read timeout must not be shorter.
	ReplyWait time.Duration
	// Registerer, when set, gets levy_store_late_decisions_total.
	Registerer prometheus.Registerer
	Log        *zap.Logger
}

// ErrStoreDown is returned while the store is known to be unreachable.
var ErrStoreDown = errors.New("store unreachable")

// Redis decides with one Lua script call per decision (per hash slot in
// a cluster), on the store's clock.
type Redis struct {
	client       Scripter
	cluster      bool
	masters      clusterClient // on a cluster; nil on another Scripter
	clock        func() time.Time
	timeout      time.Duration
	avail        func(slot uint16) bool
	failed       func(slot uint16, err error)
	decideScript script // decide.lua: decisions and give-backs
	peekScript   script // peek.lua: reads
	batch        *batcher
	closed       sync.Once

	replyWait time.Duration
	late      *prometheus.CounterVec // by outcome
	log       *zap.Logger
	refunds   chan []Limit // given back by refunder
	refunded  chan struct{}
	// draining bounds the give-backs still queued at Close: cancelled
	// closeDrain after Close starts, so a stalled Redis cannot hold up a
	// shutdown by replyWait per queued give-back.
	draining  context.Context
	stopDrain context.CancelFunc
}

var _ Limiter = (*Redis)(nil)

// NewRedis returns a Redis limiter.
func NewRedis(cfg RedisConfig) *Redis {
	r := &Redis{client: cfg.Client, cluster: cfg.Cluster, clock: cfg.Clock, timeout: cfg.Timeout, avail: cfg.Available, failed: cfg.Failed,
		decideScript: newScript(decideLua), peekScript: newScript(peekLua), replyWait: cfg.ReplyWait, log: cfg.Log,
		refunds: make(chan []Limit, refundQueueSize), refunded: make(chan struct{})}
	r.draining, r.stopDrain = context.WithCancel(context.Background())
	if r.cluster {
		r.masters, _ = cfg.Client.(clusterClient)
	}
	if r.timeout <= 0 {
		r.timeout = 50 * time.Millisecond
	}
	if r.replyWait <= 0 {
		r.replyWait = max(20*r.timeout, time.Second)
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	r.late = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levy_store_late_decisions_total",
		Help: "Decisions whose callers had stopped waiting (store timeout or their own deadline) when the store answered, " +
			"by outcome: refunded (the script took costs, given back), not_charged (it took nothing), refund_failed " +
			"(taken, and the give-back failed), unknown (the call failed after it may have reached the store: " +
			"whether it took anything cannot be known; logged with its keys).",
	}, []string{"outcome"})
	for _, o := range []string{lateRefunded, lateNotCharged, lateRefundFailed, lateUnknown} {
		r.late.WithLabelValues(o)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(r.late); err != nil {
			r.log.Warn("register late decision metric", zap.Error(err))
		}
	}
	go r.refunder()
	r.batch = newBatcher(r)
	return r
}

// Close stops the batching workers, then gives back what is queued to be.
func (r *Redis) Close() error {
	r.closed.Do(func() {
		if r.batch != nil {
			r.batch.close()
		}
		close(r.refunds)
		t := time.AfterFunc(closeDrain, r.stopDrain)
		<-r.refunded
		t.Stop()
		r.stopDrain()
	})
	return nil
}

// closeDrain is how long Close gives the queued give-backs; those left
// then fail at once (counted refund_failed, logged with their keys), after
// the one in flight, which waits replyWait at most.
var closeDrain = 5 * time.Second

// Decide implements Limiter. Concurrent decisions share script calls (the
// batcher); in a cluster, limits in different hash slots are decided each
// slot's share atomically (decideAcrossSlots).
func (r *Redis) Decide(ctx context.Context, limits []Limit) (Decision, error) {
	for i := range limits {
		if err := validLimit(&limits[i]); err != nil {
			return Decision{}, err
		}
	}
	if !r.cluster {
		if !r.available(0) {
			return Decision{}, ErrStoreDown
		}
		return r.batch.decide(ctx, limits, 0)
	}
	if slot, ok := oneSlot(limits); ok {
		if !r.available(slot) {
			return Decision{}, ErrStoreDown
		}
		return r.batch.decide(ctx, limits, slot)
	}
	return r.decideAcrossSlots(ctx, limits)
}

// decideAcrossSlots decides limits that lie in several hash slots of a
// cluster, each slot's share atomically: all of them are queued at once,
// each to its slot's batch, and the request is decided on what they all
// said. When it is denied (or a slot fails), what the others took is
// given back. Between the two, a concurrent request can find those tokens
// briefly taken: the error is towards strictness.
//
// A quota-mode group may span slots, and only the whole group can tell
// whether it denies: each slot's script is told that its share of the
// group is shadow (over takes nothing and denies nothing, as quota-mode
// limits that are over in an allowed request do), and the group is
// decided here, from every slot's statuses, by the rule Local uses.
func (r *Redis) decideAcrossSlots(ctx context.Context, limits []Limit) (Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	groups := r.groups(limits)
	calls := make([]*call, len(groups))
	var err error
	for g, idx := range groups {
		slot := Slot(limits[idx[0]].Key)
		if !r.available(slot) {
			err = ErrStoreDown
			break
		}
		if calls[g], err = r.batch.submit(ctx, share(limits, idx), slot); err != nil {
			break
		}
	}
	d := Decision{Statuses: make([]Status, len(limits))}
	// How each slot's script went: 0 not run, 1 allowed its share (which
	// took its costs), 2 denied it (only debits took).
	ran := make([]int, len(groups))
	for g, c := range calls {
		if c == nil {
			continue
		}
		res, werr := r.batch.wait(ctx, c)
		if werr != nil {
			err = cmp.Or(err, werr)
			continue
		}
		d.Now = res.Now
		ran[g] = 2
		if res.OK {
			ran[g] = 1
		}
		for j, i := range groups[g] {
			d.Statuses[i] = res.Statuses[j]
		}
	}
	if err != nil {
		// Give back what the slots that allowed took, debits aside: the
		// caller hears of a failure (and may try again), not of a
		// decision, but a debit was spent whatever it hears.
		someRan := false
		for g, idx := range groups {
			someRan = someRan || ran[g] > 0
			var took []int
			for _, i := range idx {
				if ran[g] == 1 && limits[i].Cost > 0 && !limits[i].Debit && d.Statuses[i].OK {
					took = append(took, i)
				}
			}
			if len(took) > 0 {
				// A failure is reported to health (Failed); the slot stays
				// short for a while (towards strictness).
				_, _ = r.giveBack(context.WithoutCancel(ctx), shareDecided(limits, took, d.Statuses))
			}
		}
		if someRan {
			// Some slots recorded their debits: the fallback must not owe
			// them again (a failed slot's debits are lost; counted there).
			return Decision{}, &partlyDecidedError{err}
		}
		return Decision{}, err
	}
	d.Denied = deniedBy(limits, d.Statuses)
	d.OK = d.Denied < 0
	if d.OK {
		return d, nil
	}
	// The slots that allowed their share give it back, debits aside, and
	// answer what is left; a slot that denied its share took only debits,
	// and answered so.
	for g, idx := range groups {
		if ran[g] != 1 {
			continue
		}
		var back []int
		for _, i := range idx {
			if !limits[i].Debit && d.Statuses[i].OK {
				back = append(back, i)
			}
		}
		if len(back) == 0 {
			continue
		}
		// A give-back that fails leaves the slot short for a while
		// (towards strictness), and the statuses say so; the denial
		// stands either way.
		statuses, err := r.giveBack(context.WithoutCancel(ctx), shareDecided(limits, back, d.Statuses))
		if err != nil {
			continue
		}
		for j, i := range back {
			d.Statuses[i] = statuses[j]
		}
	}
	return d, nil
}

// share is the limits idx of a request that spans hash slots, as their
// slot's script decides them: quota-mode limits as shadow, since the
// group is decided over all slots.
func share(limits []Limit, idx []int) []Limit {
	out := pick(limits, idx)
	for j := range out {
		if inQuotaGroup(&out[j]) {
			out[j].Shadow, out[j].QuotaMode = true, false
		}
	}
	return out
}

// shareDecided is share(limits, idx) to be given back: each limit
// marked with the period its status (statuses, by index in limits) says
// the decision counted it in.
func shareDecided(limits []Limit, idx []int, statuses []Status) []Limit {
	out := share(limits, idx)
	for j, i := range idx {
		out[j].countedIn(&statuses[i])
	}
	return out
}

// asDecided is a copy of limits to be given back, each marked with the
// period its status (statuses, in order) says the decision counted it
// in; limits themselves when there are no statuses (the call failed).
func asDecided(limits []Limit, statuses []Status) []Limit {
	if len(statuses) != len(limits) {
		return limits
	}
	out := append([]Limit(nil), limits...)
	for i := range out {
		out[i].countedIn(&statuses[i])
	}
	return out
}

// countedIn marks l, to be given back, with the period st, its
// decision's status, counted it in (a bucket has none).
func (l *Limit) countedIn(st *Status) {
	if l.Kind != Bucket {
		l.decidedIn = st.PeriodStart.Unix()
	}
}

// oneSlot is the cluster hash slot all of limits live in, if they share
// one (a consumer's do: they are hash-tagged by consumer).
func oneSlot(limits []Limit) (uint16, bool) {
	if len(limits) == 0 {
		return 0, true
	}
	slot := Slot(limits[0].Key)
	for i := 1; i < len(limits); i++ {
		if Slot(limits[i].Key) != slot {
			return 0, false
		}
	}
	return slot, true
}

// giveBack returns the costs limits took in a decision (they share a
// hash slot), in one script call, each to the period the decision
// counted it in (marked by shareDecided or asDecided), and answers what
// each has left now.
func (r *Redis) giveBack(ctx context.Context, limits []Limit) ([]Status, error) {
	batch := [][]Limit{limits}
	args, want := r.batchArgs(r.decideScript, batch)
	var periods msgpackArray
	for i := range limits {
		periods.add(limits[i].decidedIn)
	}
	args = append(args, periods.bytes()) // ARGV[3]: give back, to these periods
	v, err := r.eval(ctx, r.decideScript, args)
	if err != nil {
		if r.failed != nil {
			r.failed(r.slotOf(batch), err)
		}
		return nil, fmt.Errorf("redis give back: %w", err)
	}
	res, _, err := parseBatch(v, want, batch, true)
	if err != nil {
		return nil, err
	}
	return res[0].statuses, nil
}

func (r *Redis) groups(limits []Limit) [][]int {
	all := make([]int, len(limits))
	for i := range all {
		all[i] = i
	}
	if !r.cluster || len(limits) == 1 {
		return [][]int{all}
	}
	return groupBy(all, func(i int) uint16 { return Slot(limits[i].Key) })
}

func pick(limits []Limit, idx []int) []Limit {
	out := make([]Limit, len(idx))
	for j, i := range idx {
		out[j] = limits[i]
	}
	return out
}

// requestAnswer is one request's answer within a batch.
type requestAnswer struct {
	statuses []Status
	denied   int // -1: none
}

// runBatch decides several requests in one script call, one after the
// other, each as if alone. Their limits must share a hash slot in a
// cluster.
func (r *Redis) runBatch(ctx context.Context, script script, batch [][]Limit) ([]requestAnswer, time.Time, error) {
	args, want := r.batchArgs(script, batch)
	v, err := r.eval(ctx, script, args)
	return r.batchReply(batch, want, v, err)
}

// batchReply is what runBatch answers from its script call's reply v
// (want values), or its error err, which it tells health of.
func (r *Redis) batchReply(batch [][]Limit, want int, v []int64, err error) ([]requestAnswer, time.Time, error) {
	if err != nil {
		if r.failed != nil {
			r.failed(r.slotOf(batch), err)
		}
		return nil, time.Time{}, fmt.Errorf("redis decide: %w", err)
	}
	return parseBatch(v, want, batch, false)
}

// slotOf is the hash slot a batch's limits share on a cluster (0 on a
// standalone Redis, or for a batch without limits).
func (r *Redis) slotOf(batch [][]Limit) uint16 {
	if key, ok := firstKey(batch); r.cluster && ok {
		return Slot(key)
	}
	return 0
}

// available asks Available whether slot's Redis is worth a call.
func (r *Redis) available(slot uint16) bool { return r.avail == nil || r.avail(slot) }

// batchArgs is the EVALSHA of script for batch, and how many values its
// reply must hold. Each distinct key is sent once, in KEYS (the buckets'
// first, so that the script reads them all with one MGET), and each
// distinct set of a limit's parameters (kind, cost, rate, quota, ...)
// once; a limit refers to both by index. The requests of a batch mostly
// share them (one plan's parameters, a global descriptor's key). The
// numbers travel as one MessagePack array: Redis makes a Lua string of
// every argument, which cost more than the script's own work.
func (r *Redis) batchArgs(script script, batch [][]Limit) ([]any, int) {
	total := 0
	for _, limits := range batch {
		total += len(limits)
	}
	want := 2 + len(batch) + total // now, then each request's denied index and its limits' answers
	keys := make(map[string]int64, total)
	params := make(map[limitParams]int64, 4)
	now := time.Now()
	if r.clock != nil {
		now = r.clock()
	}
	var periods periodCache
	var sets []limitParams
	refs := make([]int64, 0, total)
	// EVALSHA digest numkeys KEYS... clock numbers [mode]
	args := make([]any, 3, 6+total)
	args[0], args[1] = "evalsha", script.sha
	for _, limits := range batch {
		for i := range limits {
			if l := &limits[i]; l.Kind == Bucket {
				if _, ok := keys[l.Key]; !ok {
					keys[l.Key] = int64(len(keys))
					args = append(args, l.Key)
				}
			}
		}
	}
	buckets := len(keys)
	for _, limits := range batch {
		for i := range limits {
			l := &limits[i]
			k, ok := keys[l.Key]
			if !ok {
				k = int64(len(keys))
				keys[l.Key] = k
				args = append(args, l.Key)
			}
			lp := paramsOf(l, now, &periods)
			p, ok := params[lp]
			if !ok {
				p = int64(len(sets))
				params[lp] = p
				sets = append(sets, lp)
			}
			refs = append(refs, k<<refShift|p)
		}
	}
	args[2] = len(keys)
	clock := ""
	if r.clock != nil {
		clock = strconv.FormatInt(now.UnixMicro(), 10)
	}
	var m msgpackArray
	m.add(int64(len(batch)), int64(len(sets)), int64(buckets))
	for i := range sets {
		m.add(sets[i].values()...)
	}
	for _, limits := range batch {
		m.add(2*int64(len(limits)) + repeatsKey(refs[:len(limits)]))
		m.add(refs[:len(limits)]...)
		refs = refs[len(limits):]
	}
	return append(args, clock, m.stream()), want
}

// repeatsKey is 1 when two of a request's references (refs) name one
// key, else 0: decide.lua then looks for a take of the same state
// earlier in the request, which it otherwise skips.
func repeatsKey(refs []int64) int64 {
	if len(refs) > 16 {
		seen := make(map[int64]bool, len(refs))
		for _, r := range refs {
			if seen[r>>refShift] {
				return 1
			}
			seen[r>>refShift] = true
		}
		return 0
	}
	for i := 1; i < len(refs); i++ {
		for j := range i {
			if refs[i]>>refShift == refs[j]>>refShift {
				return 1
			}
		}
	}
	return 0
}

// msgpackArray builds a MessagePack array of integers (what the scripts
// decode with Redis's cmsgpack).
type msgpackArray struct {
	b []byte
	n uint32
}

func (m *msgpackArray) add(vs ...int64) {
	if m.b == nil {
		m.b = make([]byte, 5, 64) // array 32 header, filled in by bytes
		m.b[0] = 0xdd
	}
	for _, v := range vs {
		switch {
		case v >= 0 && v < 128: // positive fixint
			m.b = append(m.b, byte(v))
		case v >= 0 && v <= math.MaxUint32: // uint 32
			m.b = append(m.b, 0xce, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
		default: // int 64
			m.b = append(m.b, 0xd3)
			m.b = binary.BigEndian.AppendUint64(m.b, uint64(v))
		}
	}
	m.n += uint32(len(vs))
}

func (m *msgpackArray) bytes() []byte {
	if m.b == nil {
		m.add()
	}
	binary.BigEndian.PutUint32(m.b[1:5], m.n)
	return m.b
}

// maxStream is the most numbers stream sends as values: cmsgpack.unpack
// returns them on Lua's stack, which holds a few thousand (LUAI_MAXCSTACK,
// 8000, less what the script holds).
const maxStream = 4000

// stream is m's numbers as a MessagePack stream of them (decide.lua
// unpacks it into a table made at its size, where cmsgpack grows an
// array's table one value at a time), or as the array when they are
// more than maxStream.
func (m *msgpackArray) stream() []byte {
	if m.n > maxStream {
		return m.bytes()
	}
	if m.b == nil {
		m.add()
	}
	return m.b[5:]
}

// refShift places a limit's key index above its parameters' index in the
// one number the scripts read for it (key<<refShift | params; Lua's
// numbers hold integers to 2^53).
const refShift = 20

// parseBatch reads decide.lua's reply v (want values) for batch: a
// decision's, or a give-back's (which answers each limit as a check that
// takes nothing).
func parseBatch(v []int64, want int, batch [][]Limit, givenBack bool) ([]requestAnswer, time.Time, error) {
	if len(v) != want {
		return nil, time.Time{}, errors.New("redis decide: malformed reply")
	}
	total := 0
	for _, limits := range batch {
		total += len(limits)
	}
	now := time.Unix(v[0], v[1]*1000).UTC()
	out := make([]requestAnswer, len(batch))
	statuses := make([]Status, total)
	var periods periodCache
	p := 2
	for b, limits := range batch {
		d := requestAnswer{denied: int(v[p]) - 1, statuses: statuses[:len(limits):len(limits)]}
		statuses = statuses[len(limits):]
		p++
		for j := range limits {
			l := &limits[j]
			cost := l.Cost
			if givenBack {
				cost = 0
			}
			d.statuses[j] = answer(l, cost, d.denied >= 0, v[p], now, v[0]*1e6+v[1], &periods)
			p++
		}
		out[b] = d
	}
	return out, now, nil
}

// answer is limit l's status from x, decide.lua's answer for it: the
// state it was last evaluated against, at now (the store's clock; nowUS
// in microseconds). It is evaluated again as Local evaluates it
// (evalBucket, evalQuota), at the cost the script last used: cost, or 0
// for a limit that was within and no debit in a request that was denied,
// which the script evaluates again to report what it has left.
func answer(l *Limit, cost int64, denied bool, x int64, now time.Time, nowUS int64, periods *periodCache) Status {
	again := denied && !l.Debit && cost != 0
	switch l.Kind {
	case Bucket:
		state := nowUS + x // x: how far ahead of now its state was
		if x < 0 {
			state = -(nowUS - 1 - x) // in debt
		}
		st, _ := evalBucket(l, cost, nowUS, state)
		if again && st.OK {
			st, _ = evalBucket(l, 0, nowUS, state)
		}
		return st
	case Ledger: // x: its window's units; it allows, and bounds nothing
		size := int64(l.WindowSize / time.Second)
		s := now.Unix()
		return Status{OK: true, Limit: displayLimit(l), Remaining: -1, Used: x, PeriodStart: time.Unix(s-s%size, 0).UTC()}
	default: // x: its count before
		p := periods.at(now, l)
		st, _ := evalQuota(l, cost, x, now, &p)
		if again && st.OK {
			st, _ = evalQuota(l, 0, x, now, &p)
		}
		return st
	}
}

// quotaBound is the most quota l counts for a request to be within: its
// max, a soft quota's cap, or -1 for none (a soft quota without a cap).
func quotaBound(l *Limit) int64 {
	switch {
	case !l.Soft:
		return l.Max
	case l.Cap > 0:
		return l.Cap
	}
	return -1
}

// periodCache is the quota periods of a batch's limits at one time (of
// its reply, or of its arguments), by unit and anchor: a batch's quotas
// mostly share a plan's, and plan.PeriodAt is not free. It keeps the first
// few (on the stack).
type periodCache struct {
	n       int
	entries [4]periodEntry
}

type periodEntry struct {
	unit   plan.Unit
	anchor time.Time
	period plan.Period
}

func (c *periodCache) at(now time.Time, l *Limit) plan.Period {
	for i := range c.n {
		if e := &c.entries[i]; e.unit == l.Unit && e.anchor.Equal(l.Anchor) {
			return e.period
		}
	}
	p := plan.PeriodAt(now, l.Unit, l.Anchor)
	if c.n < len(c.entries) {
		c.entries[c.n] = periodEntry{l.Unit, l.Anchor, p}
		c.n++
	}
	return p
}

// eval runs args, an EVALSHA of script, and reads its reply: integers,
// packed by the script as one MessagePack array (Redis turns each value
// of a Lua table into its own reply, which costs the script more than
// packing them). A Redis that does not know the script (it restarted, or
// SCRIPT FLUSH) gets it with EVAL (evalEach).
func (r *Redis) eval(ctx context.Context, script script, args []any) ([]int64, error) {
	rep := r.evalEach(ctx, script, [][]any{args})[0]
	return rep.v, rep.err
}

// sentOnce is a script call go-redis must not send again. A decision
// Redis ran has taken its costs, and go-redis's cluster client, whatever
// MaxRetries says, sends a call again after a connection broke once it
// was sent, and in a pipeline sends every call of a master's again when
// the first one's reply is TRYAGAIN or CLUSTERDOWN (a hostile review
// charged each decision of a master's batch two and four times). MOVED
// and ASK are still followed: a redirected call did not run.
type sentOnce struct{ *redis.StringCmd }

func (sentOnce) NoRetry() bool { return true }

// newScriptCmd is an EVALSHA or EVAL (args).
func newScriptCmd(ctx context.Context, args []any) *redis.StringCmd {
	cmd := redis.NewStringCmd(ctx, args...)
	cmd.SetFirstKeyPos(3) // a cluster routes the call by its first key
	return cmd
}

// unpackInts reads a MessagePack array of numbers, as Redis's cmsgpack
// packs a Lua array: integers in their shortest form, other numbers as
// doubles (truncated here; the scripts answer whole numbers).
func unpackInts(s string) ([]int64, error) {
	errBad := errors.New("malformed script reply")
	if len(s) == 0 {
		return nil, errBad
	}
	var n uint64
	switch b := s[0]; {
	case b&0xf0 == 0x90: // fixarray
		n, s = uint64(b&0x0f), s[1:]
	case b == 0xdc && len(s) >= 3: // array 16
		n, s = bigEndian(s[1:3]), s[3:]
	case b == 0xdd && len(s) >= 5: // array 32
		n, s = bigEndian(s[1:5]), s[5:]
	default:
		return nil, errBad
	}
	if n > uint64(len(s)) { // every value takes a byte at least
		return nil, errBad
	}
	out := make([]int64, n)
	for i := range out {
		if len(s) == 0 {
			return nil, errBad
		}
		b := s[0]
		switch {
		case b < 0x80: // positive fixint
			out[i], s = int64(b), s[1:]
			continue
		case b >= 0xe0: // negative fixint
			out[i], s = int64(int8(b)), s[1:]
			continue
		}
		size := 0
		switch b {
		case 0xcc, 0xd0:
			size = 1
		case 0xcd, 0xd1:
			size = 2
		case 0xce, 0xd2, 0xca:
			size = 4
		case 0xcf, 0xd3, 0xcb:
			size = 8
		}
		if size == 0 || len(s) < 1+size {
			return nil, errBad
		}
		u := bigEndian(s[1 : 1+size])
		s = s[1+size:]
		switch b {
		case 0xd0:
			out[i] = int64(int8(u))
		case 0xd1:
			out[i] = int64(int16(u))
		case 0xd2:
			out[i] = int64(int32(u))
		case 0xca:
			out[i] = int64(math.Float32frombits(uint32(u)))
		case 0xcb:
			out[i] = int64(math.Float64frombits(u))
		default: // unsigned, and int 64
			out[i] = int64(u)
		}
	}
	if len(s) != 0 {
		return nil, errBad
	}
	return out, nil
}

// bigEndian is the unsigned big-endian number in s (at most 8 bytes).
func bigEndian(s string) uint64 {
	var u uint64
	for i := 0; i < len(s); i++ {
		u = u<<8 | uint64(s[i])
	}
	return u
}

// displayLimit is the number clients are shown for a limit.
func displayLimit(l *Limit) int64 {
	switch {
	case l.Kind == Bucket:
		return l.Requests
	case l.Soft && l.Cap > 0:
		return l.Cap
	default:
		return l.Max
	}
}

var unitCodes = map[plan.Unit]int64{plan.Hour: 1, plan.Day: 2, plan.Week: 3, plan.Month: 4, plan.Year: 5}

// maxArgsPerLimit is the most values decide.lua reads for one limit.
const maxArgsPerLimit = 9

// limitParams is a limit's values in decide.lua's order for its kind: a
// comparable array, so that the limits of a batch that share them are sent
// them once.
type limitParams [maxArgsPerLimit]int64

// values is p's values: as many as its kind has.
func (p *limitParams) values() []int64 {
	switch Kind(p[0]) {
	case Bucket:
		return p[:5]
	case Ledger:
		return p[:4]
	}
	return p[:9]
}

// paramsOf is l's parameters. The kinds' codes are decide.lua's: bucket 0,
// quota 1, ledger 2; flags are shadow + 2*debit + 4*quota-mode. A quota's
// include its period at now (Go's clock; the script checks that the
// store's clock is in it, and works the period out when it is not).
func paramsOf(l *Limit, now time.Time, periods *periodCache) limitParams {
	var flags int64
	if l.Shadow {
		flags |= 1
	}
	if l.Debit {
		flags |= 2
	}
	if inQuotaGroup(l) {
		flags |= 4
	}
	switch l.Kind {
	case Ledger:
		// never over: only the debit flag means anything
		return limitParams{2, l.Cost, flags & 2, int64(l.WindowSize / time.Second)}
	case Bucket:
		interval := bucketInterval(l)
		return limitParams{0, l.Cost, flags, interval, interval * l.Capacity()}
	}
	var aday, amonthSec int64
	if !l.Anchor.IsZero() {
		a := l.Anchor.UTC()
		aday = int64(a.Day())
		amonthSec = int64(a.Month())*100000 + int64(a.Hour()*3600+a.Minute()*60+a.Second())
	}
	p := periods.at(now, l)
	return limitParams{1, l.Cost, flags, unitCodes[l.Unit], quotaBound(l), aday, amonthSec, p.Start.Unix(), p.End.Unix()}
}

// Slot is the Redis Cluster hash slot of key (CRC16/XMODEM of its hash
// tag, mod 16384).
func Slot(key string) uint16 {
	return crc16(hashTag(key)) % 16384
}

func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// Outcomes of late decisions (levy_store_late_decisions_total).
const (
	lateRefunded     = "refunded"
	lateNotCharged   = "not_charged"
	lateRefundFailed = "refund_failed"
	lateUnknown      = "unknown"
)

// refundQueueSize bounds the give-backs waiting for the refunder; one that
// does not fit is a refund_failed.
const refundQueueSize = 4096

// lateCall is a decision its caller did not wait for.
type lateCall struct {
	limits []Limit
	d      Decision
}

// settle accounts for a script call whose reply came after some of its
// callers had stopped waiting (late), or that failed (err, for every call
// of it). A request whose caller saw an error (a 503, or the fallback's
// decision) must not stay charged: what a late decision took is given
// back. A failure before the call reached Redis took nothing; one after
// (the reply lost, the connection cut past replyWait) may have taken
// costs that cannot be known: those are counted and logged with their
// keys, the one case levy cannot reconcile by itself.
func (r *Redis) settle(calls []*call, late []lateCall, err error) {
	if err != nil {
		if unsent(err) {
			return
		}
		keys := make([]string, 0, len(calls))
		for _, c := range calls {
			for i := range c.limits {
				if c.limits[i].Cost > 0 {
					keys = append(keys, c.limits[i].Key)
				}
			}
		}
		r.late.WithLabelValues(lateUnknown).Add(float64(len(calls)))
		r.log.Warn("store call failed after it may have reached the store: whether these requests were charged is unknown",
			zap.Int("requests", len(calls)), zap.Strings("keys", keys), zap.Error(err))
		return
	}
	for _, lc := range late {
		took := tookBy(lc)
		if len(took) == 0 {
			r.late.WithLabelValues(lateNotCharged).Inc()
			continue
		}
		select {
		case r.refunds <- took:
		default:
			r.late.WithLabelValues(lateRefundFailed).Inc()
			r.log.Warn("give-back queue full: a late decision's costs stay taken", zap.Strings("keys", keysOf(took)))
		}
	}
}

// tookBy is what a decision took that its caller did not get: when it
// allowed, its limits that were within (a shadow or quota-mode limit that
// was over took nothing). Debits stay: they were spent whatever the caller
// heard (Envoy does not read the answer to apply_on_stream_done, nor
// retry it), and the fallback owes none for a call that reached Redis.
func tookBy(lc lateCall) []Limit {
	var took []Limit
	for i := range lc.limits {
		if lc.limits[i].Cost > 0 && !lc.limits[i].Debit && lc.d.OK && lc.d.Statuses[i].OK {
			took = append(took, lc.limits[i])
		}
	}
	return took
}

func keysOf(limits []Limit) []string {
	keys := make([]string, len(limits))
	for i := range limits {
		keys[i] = limits[i].Key
	}
	return keys
}

// refunder gives back late decisions' costs (decide.lua's give-back), one request per
// call, until Close.
func (r *Redis) refunder() {
	defer close(r.refunded)
	for limits := range r.refunds {
		err := r.draining.Err() // Close waited closeDrain: give up on the rest
		if err == nil {
			ctx, cancel := context.WithTimeout(r.draining, r.replyWait)
			_, err = r.giveBack(ctx, limits)
			cancel()
		}
		if err != nil {
			r.late.WithLabelValues(lateRefundFailed).Inc()
			r.log.Warn("give back a late decision's costs", zap.Strings("keys", keysOf(limits)), zap.Error(err))
			continue
		}
		r.late.WithLabelValues(lateRefunded).Inc()
	}
}

// partlyDecidedError is a request spanning cluster slots that some slots
// decided (and took its debits in) before another failed.
type partlyDecidedError struct{ err error }

func (e *partlyDecidedError) Error() string { return e.err.Error() }
func (e *partlyDecidedError) Unwrap() error { return e.err }

// unsent reports whether a failed store call certainly never reached
// Redis, or was refused by it: then it took nothing.
func unsent(err error) bool {
	var op *net.OpError
	var rerr redis.Error
	var partly *partlyDecidedError
	if errors.As(err, &partly) {
		return false
	}
	return errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrPoolExhausted) || errors.Is(err, redis.ErrClosed) ||
		errors.Is(err, ErrStoreDown) || (errors.As(err, &op) && op.Op == "dial") || errors.As(err, &rerr)
}
