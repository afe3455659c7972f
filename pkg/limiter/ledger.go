package limiter

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/levyhq/levy/pkg/usage"
)

var _ usage.Ledger = (*Local)(nil)

// Adjust implements usage.Ledger. One process holds the local ledger, so
// the Receiver's own de-duplication is all there is to do: Requests are
// not looked at. A window and the quota counter its adjustment names
// move under one lock (a consumer's keys share a hash tag, so a shard),
// together or not at all; a quota key of another hash tag is not moved
// (as in Redis Cluster, where it could not be).
func (l *Local) Adjust(_ context.Context, adjs []usage.Adjustment) error {
	for i := range adjs {
		a := &adjs[i]
		key := a.LedgerKeyOf()
		sh := l.shardFor(key)
		sh.mu.Lock()
		// A settlement for a window never counted has nothing to adjust.
		if size := sh.ledgerSize[key]; size > 0 {
			id := counterID{key, a.WindowStart(size).Unix()}
			if e, ok := sh.ledger[id]; ok && (a.Refunded != 0 || a.Reported != 0 || a.Units != 0) {
				refunded, reported := a.Refunded, a.Reported
				if refunded == 0 && reported == 0 {
					refunded, reported = max(-a.Units, 0), max(a.Units, 0)
				}
				// The quota first: when its counter cannot be read, neither
				// moves, and the adjustment is retried whole.
				if err := l.settleQuota(sh, key, a, reported-refunded); err != nil {
					sh.mu.Unlock()
					return &usage.PartialError{Failed: adjs[i:], Err: err}
				}
				e.Units = max(e.Units+reported-refunded, 0)
				e.Refunded += refunded
				e.Reported += reported
				l.markLedgerDirty(sh, id)
			}
		}
		sh.mu.Unlock()
	}
	return nil
}

// settleQuota moves the quota counter a names by units: a debit past the
// limit (later requests are denied until the period ends), a refund never
// below zero. A debit creates the counter when admission counted nothing
// in it (a route that costs nothing until its upstream reports units);
// its end, unknown here, is taken as a year on, for the sweep of ended
// counters. A counter outside the hash tag of the ledger key (the shard
// sh, which is locked) is left alone, and so is the new period's counter
// when the request's period rolled over: settlement names the period.
func (l *Local) settleQuota(sh *shard, key string, a *usage.Adjustment, units int64) error {
	if !sameHashTag(a.Quota, key) || units == 0 {
		return nil
	}
	now := l.clock()
	id := counterID{a.Quota, a.QuotaStart.Unix()}
	c, err := l.counter(sh, id, now)
	if err != nil {
		return err
	}
	if _, ok := sh.counters[id]; !ok && units < 0 {
		return nil
	}
	l.setCounter(sh, id, min(max(c.value+units, 0), maxCount), a.QuotaStart.AddDate(1, 0, 1), now)
	l.changed()
	return nil
}

// sameHashTag reports whether quota is a key with the hash tag of key:
// one Redis Cluster slot, one local shard.
func sameHashTag(quota, key string) bool {
	return quota != "" && hashTag(quota) != quota && hashTag(quota) == hashTag(key)
}

// Due implements usage.Ledger.
func (l *Local) Due(_ context.Context, before time.Time) ([]usage.Window, error) {
	var out []usage.Window
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for id, e := range sh.ledger {
			start := time.Unix(id.start, 0).UTC()
			if start.Add(e.Size).After(before) {
				continue
			}
			if w, ok := window(id, e); ok && w.Due() {
				out = append(out, w)
			}
		}
		sh.mu.Unlock()
	}
	sortWindows(out)
	return out, nil
}

// Windows implements usage.Ledger.
func (l *Local) Windows(_ context.Context, consumer string, from, to time.Time) ([]usage.Window, error) {
	prefix := usage.LedgerPrefix(consumer)
	sh := l.shardFor(prefix)
	sh.mu.Lock()
	var out []usage.Window
	for id, e := range sh.ledger {
		start := time.Unix(id.start, 0)
		if !strings.HasPrefix(id.key, prefix) || start.Before(from) || !start.Before(to) {
			continue
		}
		if w, ok := window(id, e); ok {
			out = append(out, w)
		}
	}
	sh.mu.Unlock()
	sortWindows(out)
	return out, nil
}

// Prepare implements usage.Ledger. The pending event is on disk when it
// returns, not only in the write-behind: the exporter sends the event
// next, and a restart that did not know of it would bill its units again
// under another identifier.
func (l *Local) Prepare(_ context.Context, w usage.Window, value int64) error {
	id := counterID{w.Key, w.Start.Unix()}
	sh := l.shardFor(id.key)
	sh.mu.Lock()
	e, ok := sh.ledger[id]
	if ok {
		e.Pending = value
		l.markLedgerDirty(sh, id)
	}
	sh.mu.Unlock()
	if !ok || l.store == nil {
		return nil
	}
	if _, err := l.commit(false); err != nil {
		return fmt.Errorf("record the pending meter event: %w", err)
	}
	return nil
}

// Commit implements usage.Ledger. Every window of one consumer is in one
// shard (the consumer's hash tag), so one lock makes it atomic.
func (l *Local) Commit(_ context.Context, w usage.Window, value int64, accounted []usage.Window) error {
	now := l.clock().Unix()
	return l.settleAccount(w, accounted, func(k *LedgerEntry) {
		switch {
		case value > 0:
			k.Billed += value
			k.Events++
			k.LastValue, k.LastSent = value, now
		case value < 0:
			k.Billed += value
			k.LastValue = 0
		}
	}, "")
}

// Reject implements usage.Ledger.
func (l *Local) Reject(_ context.Context, w usage.Window, reason string, accounted []usage.Window) error {
	return l.settleAccount(w, accounted, func(*LedgerEntry) {}, reason)
}

func (l *Local) settleAccount(w usage.Window, accounted []usage.Window, apply func(*LedgerEntry), rejected string) error {
	kid := counterID{w.Key, w.Start.Unix()}
	sh := l.shardFor(kid.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if k, ok := sh.ledger[kid]; ok {
		apply(k)
		k.Pending = 0
		l.markLedgerDirty(sh, kid)
	}
	for _, a := range accounted {
		id := counterID{a.Key, a.Start.Unix()}
		e, ok := sh.ledger[id]
		if !ok {
			continue
		}
		if rejected != "" {
			e.Rejected = rejected // and Accounted stays what Stripe has
		} else {
			e.Exported, e.Accounted = true, a.Units
		}
		l.markLedgerDirty(sh, id)
	}
	return nil
}

func window(id counterID, e *LedgerEntry) (usage.Window, bool) {
	consumer, terms, ok := usage.ParseLedgerKey(id.key)
	if !ok {
		return usage.Window{}, false
	}
	return usage.Window{Consumer: consumer, Meter: terms.Meter, Terms: terms, Key: id.key,
		Start: time.Unix(id.start, 0).UTC(), Size: e.Size,
		Units: e.Units, Refunded: e.Refunded, Reported: e.Reported,
		Exported: e.Exported, Accounted: e.Accounted, Billed: e.Billed, Events: e.Events,
		LastValue: e.LastValue, LastSent: time.Unix(e.LastSent, 0).UTC(),
		Pending: e.Pending, Rejected: e.Rejected}, true
}

func sortWindows(ws []usage.Window) {
	sort.Slice(ws, func(i, j int) bool {
		a, b := ws[i], ws[j]
		if !a.Start.Equal(b.Start) {
			return a.Start.Before(b.Start)
		}
		return a.Key < b.Key
	})
}

// due is usage.Window.Due for an entry.
func (e *LedgerEntry) due() bool {
	return e.Rejected == "" && (!e.Exported || e.Units != e.Accounted || e.Pending != 0)
}

// Consumers lists the consumers with a window that starts in [from, to)
// (levy billing reconcile finds whom to reconcile with it).
func (l *Local) Consumers(_ context.Context, from, to time.Time) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for id := range sh.ledger {
			start := time.Unix(id.start, 0)
			if start.Before(from) || !start.Before(to) {
				continue
			}
			if c, _, ok := usage.ParseLedgerKey(id.key); ok && !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
		sh.mu.Unlock()
	}
	sort.Strings(out)
	return out, nil
}
