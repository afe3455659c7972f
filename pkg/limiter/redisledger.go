package limiter

import (
	"context"
	"crypto/rand"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/usage"
)

//go:embed adjust.lua
var adjustLua string

//go:embed add.lua
var addLua string

//go:embed commit.lua
var commitLua string

// RedisLedger is the usage ledger in Redis. Admission writes it inside the
// decision script; this type settles, lists and accounts windows. A
// ledger key (usage.LedgerKey: a consumer under one set of billing terms;
// package keyspace names every key below) has a sorted set of the window
// starts with export work (the key itself), another of the windows
// accounted (keyspace.Done), a hash per window (keyspace.Window: u
// units, z size, r refunded, x reported, e exported, a accounted, b
// billed, n events, l and t the last event's value and time, p pending, j
// rejected) and a set of the requests settled in it (":<start>:seen").
// Settlement also moves the
// consumer's quota counter (usage.QuotaKey, decide.lua's hash) by the
// same requests' units, in the same script call.
type RedisLedger struct {
	client redis.UniversalClient
	// Window is the ledger window (billing.window): settlements without
	// their window find it with it.
	Window time.Duration
	// SeenTTL is how long a settled request is remembered across
	// replicas, after the last settlement of its window (default 10m).
	SeenTTL time.Duration
	adjust  *redis.Script
	add     *redis.Script
	commit  *redis.Script
	// backfilled: Due has entered every ledger in its consumer's set.
	backfilled atomic.Bool
}

var _ usage.Ledger = (*RedisLedger)(nil)

// NewRedisLedger returns the ledger on client.
func NewRedisLedger(client redis.UniversalClient, window time.Duration) *RedisLedger {
	return &RedisLedger{client: client, Window: window, SeenTTL: 10 * time.Minute,
		adjust: redis.NewScript(adjustLua), add: redis.NewScript(addLua), commit: redis.NewScript(commitLua)}
}

// adjustChunk bounds the requests one adjust script call takes, so that no
// single call holds Redis for long; each request is de-duplicated on its
// own, so splitting an adjustment is safe.
const adjustChunk = 256

// adjustCall is one adjust script call: an adjustment, or a part of one
// (reqs).
type adjustCall struct {
	adj  int      // index in the adjustments
	keys []string // the ledger, and the quota counter when there is one
	args []any
	reqs []usage.Settled
}

func (r *RedisLedger) adjustCalls(adjs []usage.Adjustment) []adjustCall {
	ttl := int64(max(r.SeenTTL, time.Second) / time.Second)
	var calls []adjustCall
	for i := range adjs {
		a := &adjs[i]
		keys := []string{a.LedgerKeyOf()}
		quotaStart := ""
		if sameHashTag(a.Quota, keys[0]) { // else a cross-slot call
			keys = append(keys, a.Quota)
			quotaStart = strconv.FormatInt(a.QuotaStart.Unix(), 10)
		}
		start := a.WindowStart(r.Window).Unix()
		head := []any{start, ttl, quotaStart}
		// Units without a fingerprint get a one-off one here, kept in the
		// requests a failed call hands back (part), so that the next
		// attempt, when the first did reach Redis, applies them once.
		reqs := withFingerprints(a)
		for len(reqs) > 0 {
			n := min(len(reqs), adjustChunk)
			args := append(make([]any, 0, len(head)+2*n), head...)
			for _, s := range reqs[:n] {
				args = append(args, string(s.ID[:]), s.Units)
			}
			calls = append(calls, adjustCall{adj: i, keys: keys, args: args, reqs: reqs[:n]})
			reqs = reqs[n:]
		}
	}
	return calls
}

// oneOff is a fingerprint for settled units without one (a request
// without x-request-id, or units a receiver kept without their requests):
// nothing de-duplicates them across replicas, but the call that carries
// them is tried again when its reply is lost (a read timeout after Redis
// ran it), and the retry must not apply them a second time.
func oneOff() usage.Fingerprint {
	var f usage.Fingerprint
	rand.Read(f[:])
	return f
}

// withFingerprints is a's requests, each with a fingerprint: a's own, or
// a one-off one (see oneOff); an adjustment without requests is made
// its refunded and reported units.
func withFingerprints(a *usage.Adjustment) []usage.Settled {
	if len(a.Requests) == 0 {
		if a.Refunded != 0 || a.Reported != 0 {
			return []usage.Settled{{ID: oneOff(), Units: -a.Refunded}, {ID: oneOff(), Units: a.Reported}}
		}
		return []usage.Settled{{ID: oneOff(), Units: a.Units}}
	}
	reqs := a.Requests
	for i := range reqs {
		if reqs[i].ID == (usage.Fingerprint{}) {
			if &reqs[0] == &a.Requests[0] {
				reqs = slices.Clone(reqs) // the caller's stay as they were
			}
			reqs[i].ID = oneOff()
		}
	}
	return reqs
}

// Adjust implements usage.Ledger: one pipeline of script calls, each
// request applied once across replicas. Adjustments whose window does not
// exist are handed back as Unmatched.
func (r *RedisLedger) Adjust(ctx context.Context, adjs []usage.Adjustment) error {
	calls := r.adjustCalls(adjs)
	pipe := r.client.Pipeline()
	for _, c := range calls {
		r.adjust.Run(ctx, pipe, c.keys, c.args...)
	}
	cmds, _ := pipe.Exec(ctx)
	// Commands that failed (NOSCRIPT on a node that restarted, a broken
	// connection) are tried once more on their own; the others are
	// applied and must not be again. A retried call that did get through
	// the first time is harmless: its requests are remembered. What still
	// fails is handed back call by call, so that the requests of another
	// call of the same adjustment (some without a fingerprint) are not
	// applied twice.
	var failed, unmatched []usage.Adjustment
	var last error
	for i, c := range cmds {
		call := calls[i]
		n, err := c.(*redis.Cmd).Int()
		if err != nil {
			n, err = r.adjust.Run(ctx, r.client, call.keys, call.args...).Int()
		}
		switch {
		case err != nil:
			failed, last = append(failed, call.part(&adjs[call.adj])), err
		case n < 0:
			unmatched = append(unmatched, call.part(&adjs[call.adj]))
		}
	}
	if len(failed) > 0 || len(unmatched) > 0 {
		if last != nil {
			last = fmt.Errorf("redis ledger adjust: %w", last)
		}
		return &usage.PartialError{Failed: failed, Unmatched: unmatched, Err: last}
	}
	return nil
}

// part is the share of a that the call applies.
func (c *adjustCall) part(a *usage.Adjustment) usage.Adjustment {
	if c.reqs == nil {
		return *a
	}
	p := *a
	p.Requests, p.Units, p.Refunded, p.Reported = c.reqs, 0, 0, 0
	for _, s := range c.reqs {
		p.Units += s.Units
		if s.Units < 0 {
			p.Refunded -= s.Units
		} else {
			p.Reported += s.Units
		}
	}
	return p
}

// AddUnits adds units counted elsewhere (by a replica while Redis was
// away) to the window of key starting at start, creating it; a window
// already exported is due again, corrected within its billing period.
func (r *RedisLedger) AddUnits(ctx context.Context, key string, start time.Time, size time.Duration, units int64, token string) error {
	if err := r.add.Run(ctx, r.client, []string{key}, start.Unix(), int64(size/time.Second), units, token, int64(ledgerKeep/time.Second)).Err(); err != nil {
		return fmt.Errorf("redis ledger add: %w", err)
	}
	return nil
}

// scanLedgers lists the ledger keys matching pattern on every master.
func (r *RedisLedger) scanLedgers(ctx context.Context, pattern string) ([]string, error) {
	var mu sync.Mutex
	seen := map[string]bool{}
	var keys []string
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.ScanType(ctx, 0, pattern, 1000, "zset").Iterator()
		for it.Next(ctx) {
			// A ledger whose windows are all accounted has only ":done".
			k := strings.TrimSuffix(it.Val(), keyspace.DoneSuffix)
			if _, _, ok := usage.ParseLedgerKey(k); ok {
				mu.Lock()
				if !seen[k] {
					seen[k] = true
					keys = append(keys, k)
				}
				mu.Unlock()
			}
		}
		return it.Err()
	}
	var err error
	switch c := r.client.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, scan)
	case *redis.Client:
		err = scan(ctx, c)
	default:
		err = fmt.Errorf("redis ledger: unsupported client %T", r.client)
	}
	if err != nil {
		return nil, fmt.Errorf("redis ledger scan: %w", err)
	}
	return keys, nil
}

// Due implements usage.Ledger. It scans the keyspace for ledgers and reads
// their indexes in one pipeline. The first pass also enters each ledger in
// its consumer's set of ledgers (ledgers written before admission kept
// that set); admission keeps it from then on.
func (r *RedisLedger) Due(ctx context.Context, before time.Time) ([]usage.Window, error) {
	keys, err := r.scanLedgers(ctx, keyspace.LedgerPattern)
	if err != nil {
		return nil, err
	}
	if !r.backfilled.Load() {
		pipe := r.client.Pipeline()
		for _, key := range keys {
			c, _, _ := usage.ParseLedgerKey(key)
			pipe.SAdd(ctx, keyspace.Ledgers(c), key)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("redis ledger: %w", err)
		}
		r.backfilled.Store(true)
	}
	// Windows that started before `before` may have ended; the size is
	// checked per window below.
	pipe := r.client.Pipeline()
	ranges := make([]*redis.StringSliceCmd, len(keys))
	for i, key := range keys {
		ranges[i] = pipe.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(before.Unix(), 10)})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redis ledger: %w", err)
	}
	var out []usage.Window
	for i, key := range keys {
		ws, err := r.read(ctx, key, ranges[i].Val())
		if err != nil {
			return nil, err
		}
		for _, w := range ws {
			if w.Due() && !w.End().After(before) {
				out = append(out, w)
			}
		}
	}
	sortWindows(out)
	return out, nil
}

var windowFields = []string{"u", "z", "r", "x", "e", "a", "b", "n", "p", "j", "l", "t"}

// read reads the windows of key that start at starts; windows that are
// gone are left out.
func (r *RedisLedger) read(ctx context.Context, key string, starts []string) ([]usage.Window, error) {
	if len(starts) == 0 {
		return nil, nil
	}
	consumer, terms, ok := usage.ParseLedgerKey(key)
	if !ok {
		return nil, nil
	}
	pipe := r.client.Pipeline()
	cmds := make([]*redis.SliceCmd, len(starts))
	for i, s := range starts {
		start, _ := strconv.ParseInt(s, 10, 64)
		cmds[i] = pipe.HMGet(ctx, keyspace.Window(key, start), windowFields...)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redis ledger: %w", err)
	}
	out := make([]usage.Window, 0, len(starts))
	for i, s := range starts {
		vals := cmds[i].Val()
		if len(vals) != len(windowFields) || vals[0] == nil && vals[1] == nil {
			continue // expired
		}
		f := func(j int) string { v, _ := vals[j].(string); return v }
		n := func(j int) int64 { v, _ := strconv.ParseInt(f(j), 10, 64); return v }
		start, _ := strconv.ParseInt(s, 10, 64)
		w := usage.Window{Consumer: consumer, Meter: terms.Meter, Terms: terms, Key: key,
			Start: time.Unix(start, 0).UTC(), Size: time.Duration(n(1)) * time.Second,
			Units: n(0), Refunded: n(2), Reported: n(3), Exported: f(4) == "1", Accounted: n(5),
			Billed: n(6), Events: int(n(7)), Pending: n(8), Rejected: f(9),
			LastValue: n(10), LastSent: time.Unix(n(11), 0).UTC()}
		if w.Exported && vals[5] == nil {
			w.Accounted = w.Units // exported before levy kept "a"
		}
		out = append(out, w)
	}
	return out, nil
}

// Prepare implements usage.Ledger.
func (r *RedisLedger) Prepare(ctx context.Context, w usage.Window, value int64) error {
	if err := r.client.HSet(ctx, keyspace.Window(w.Key, w.Start.Unix()), "p", value).Err(); err != nil {
		return fmt.Errorf("redis ledger prepare: %w", err)
	}
	return nil
}

// ledgerKeep is how long an accounted window is kept: Stripe takes no
// usage older than 35 days.
const ledgerKeep = 35 * 24 * time.Hour

// Commit implements usage.Ledger.
func (r *RedisLedger) Commit(ctx context.Context, w usage.Window, value int64, accounted []usage.Window) error {
	return r.settle(ctx, w, value, "", accounted)
}

// Reject implements usage.Ledger.
func (r *RedisLedger) Reject(ctx context.Context, w usage.Window, reason string, accounted []usage.Window) error {
	if reason == "" {
		reason = "rejected"
	}
	return r.settle(ctx, w, 0, reason, accounted)
}

// commitChunk bounds the windows one commit script call accounts, so
// that accounting a long backlog (a day of windows after a Stripe outage)
// never holds Redis, and every decision, for long.
const commitChunk = 500

// settle records w's event and accounts the windows in chunks: the first
// call carries the event; a crash between calls leaves the rest due, and
// the next pass accounts them (what is owed is worked out from the
// windows' units and the events recorded, not from which are accounted).
func (r *RedisLedger) settle(ctx context.Context, w usage.Window, value int64, reason string, accounted []usage.Window) error {
	for first := true; first || len(accounted) > 0; first = false {
		n := min(len(accounted), commitChunk)
		chunk := accounted[:n]
		accounted = accounted[n:]
		keys := make([]string, 0, 1+len(chunk))
		args := make([]any, 0, 4+2*len(chunk))
		keys = append(keys, w.Key)
		args = append(args, w.Start.Unix(), value, int64(ledgerKeep/time.Second), reason)
		for _, a := range chunk {
			keys = append(keys, a.Key)
			args = append(args, a.Start.Unix(), a.Units)
		}
		if err := r.commit.Run(ctx, r.client, keys, args...).Err(); err != nil {
			return fmt.Errorf("redis ledger commit: %w", err)
		}
		value = 0 // recorded by the first call
	}
	return nil
}

// Windows implements usage.Ledger.
func (r *RedisLedger) Windows(ctx context.Context, consumer string, from, to time.Time) ([]usage.Window, error) {
	keys, err := r.client.SMembers(ctx, keyspace.Ledgers(consumer)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis ledger: %w", err)
	}
	sort.Strings(keys)
	var out []usage.Window
	for _, key := range keys {
		if c, _, ok := usage.ParseLedgerKey(key); !ok || c != consumer {
			continue
		}
		var starts []string
		seen := map[string]bool{}
		for _, set := range []string{key, keyspace.Done(key)} {
			ss, err := r.client.ZRangeByScore(ctx, set, &redis.ZRangeBy{Min: strconv.FormatInt(from.Unix(), 10), Max: "(" + strconv.FormatInt(to.Unix(), 10)}).Result()
			if err != nil {
				return nil, fmt.Errorf("redis ledger: %w", err)
			}
			for _, s := range ss {
				if !seen[s] { // a corrected window is in both
					seen[s] = true
					starts = append(starts, s)
				}
			}
		}
		ws, err := r.read(ctx, key, starts)
		if err != nil {
			return nil, err
		}
		out = append(out, ws...)
	}
	sortWindows(out)
	return out, nil
}

// Consumers lists the consumers with a window that starts in [from, to)
// (levy billing reconcile finds whom to reconcile with it).
func (r *RedisLedger) Consumers(ctx context.Context, from, to time.Time) ([]string, error) {
	keys, err := r.scanLedgers(ctx, keyspace.LedgerPattern)
	if err != nil {
		return nil, err
	}
	lo, hi := strconv.FormatInt(from.Unix(), 10), "("+strconv.FormatInt(to.Unix(), 10)
	pipe := r.client.Pipeline()
	counts := make([][2]*redis.IntCmd, len(keys))
	for i, key := range keys {
		// Windows with export work, and those accounted.
		counts[i] = [2]*redis.IntCmd{pipe.ZCount(ctx, key, lo, hi), pipe.ZCount(ctx, keyspace.Done(key), lo, hi)}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redis ledger consumers: %w", err)
	}
	seen := map[string]bool{}
	var out []string
	for i, key := range keys {
		c, _, _ := usage.ParseLedgerKey(key)
		if !seen[c] && counts[i][0].Val()+counts[i][1].Val() > 0 {
			seen[c] = true
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out, nil
}
