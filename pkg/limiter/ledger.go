package limiter

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/levyhq/levy/pkg/usage"
)

// LedgerKey is the state key of a consumer's usage ledger on one meter:
// hash-tagged by consumer like the consumer's limits, so that admission
// counts the ledger in the same atomic store call.
func LedgerKey(consumer, meter string) string {
	return "{c:" + consumer + "}:ledger:" + meter
}

// parseLedgerKey splits a LedgerKey.
func parseLedgerKey(key string) (consumer, meter string, ok bool) {
	rest, found := strings.CutPrefix(key, "{c:")
	if !found {
		return "", "", false
	}
	i := strings.Index(rest, "}:ledger:")
	if i < 0 {
		return "", "", false
	}
	return rest[:i], rest[i+len("}:ledger:"):], true
}

var _ usage.Ledger = (*Local)(nil)

// Adjust implements usage.Ledger.
func (l *Local) Adjust(_ context.Context, adjs []usage.Adjustment) error {
	adjusted := false
	for _, a := range adjs {
		key := LedgerKey(a.Consumer, a.Meter)
		sh := l.shardFor(key)
		sh.mu.Lock()
		// A settlement for a window never counted has nothing to adjust.
		if size := sh.ledgerSize[key]; size > 0 {
			id := counterID{key, a.At.Truncate(size).Unix()}
			if e, ok := sh.ledger[id]; ok {
				e.Units = max(e.Units+a.Units, 0)
				sh.ledgerDirty[id] = struct{}{}
				adjusted = true
			}
		}
		sh.mu.Unlock()
	}
	if adjusted {
		l.changed()
	}
	return nil
}

// Closed implements usage.Ledger.
func (l *Local) Closed(_ context.Context, before time.Time, maxWindows int) ([]usage.Window, error) {
	var out []usage.Window
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for id, e := range sh.ledger {
			start := time.Unix(id.start, 0).UTC()
			if e.Exported || start.Add(e.Size).After(before) {
				continue
			}
			if w, ok := window(id, e); ok {
				out = append(out, w)
			}
		}
		sh.mu.Unlock()
	}
	sortWindows(out)
	if maxWindows > 0 && len(out) > maxWindows {
		out = out[:maxWindows]
	}
	return out, nil
}

// MarkExported implements usage.Ledger.
func (l *Local) MarkExported(_ context.Context, w usage.Window) error {
	id := counterID{LedgerKey(w.Consumer, w.Meter), w.Start.Unix()}
	sh := l.shardFor(id.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e, ok := sh.ledger[id]; ok {
		e.Exported = true
		sh.ledgerDirty[id] = struct{}{}
		l.changed()
	}
	return nil
}

// Windows implements usage.Ledger.
func (l *Local) Windows(_ context.Context, consumer string, from, to time.Time) ([]usage.Window, error) {
	prefix := "{c:" + consumer + "}:ledger:"
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

func window(id counterID, e *LedgerEntry) (usage.Window, bool) {
	consumer, meter, ok := parseLedgerKey(id.key)
	if !ok {
		return usage.Window{}, false
	}
	return usage.Window{Consumer: consumer, Meter: meter, Start: time.Unix(id.start, 0).UTC(), Size: e.Size,
		Units: e.Units, Exported: e.Exported}, true
}

func sortWindows(ws []usage.Window) {
	sort.Slice(ws, func(i, j int) bool {
		a, b := ws[i], ws[j]
		if !a.Start.Equal(b.Start) {
			return a.Start.Before(b.Start)
		}
		if a.Consumer != b.Consumer {
			return a.Consumer < b.Consumer
		}
		return a.Meter < b.Meter
	})
}
