// Package history is each consumer's usage over time: hourly and daily
// roll-ups of what was billed and refunded (read from the usage ledger's
// windows, the one source of truth `levy usage` and the Stripe export
// read too), what was denied and why (rate, quota, spend cap), and each
// API key's allowed and denied requests. The portal's chart and the
// admin API's /usage/series read it.
//
// Nothing here is on the decision path but a Counter: ext_authz adds one
// to an atomic counter of the key per decision, and a Keeper flushes the
// counters to the store in batches and, from the ledger, sets each
// touched hour's billed and refunded units to the sum of its windows
// (set, not added: replicas that roll up the same hour at once write the
// same value). The store keeps the buckets per consumer under package
// keyspace's History keys: bbolt locally, Redis (standalone or cluster)
// when shared.
package history

import (
	"context"
	"time"
)

// Step is a series' resolution.
type Step string

// The steps a series comes in.
const (
	Hour Step = "hour"
	Day  Step = "day"
)

// Size is the step's length.
func (s Step) Size() time.Duration {
	if s == Day {
		return 24 * time.Hour
	}
	return time.Hour
}

// Valid reports whether s is a step levy keeps.
func (s Step) Valid() bool { return s == Hour || s == Day }

// Floor is the start of the step (UTC) that holds t.
func (s Step) Floor(t time.Time) time.Time {
	return time.Unix(floorDiv(t.Unix(), int64(s.Size()/time.Second)), 0).UTC()
}

func floorDiv(u, size int64) int64 { return u - ((u%size)+size)%size }

// Denied counts denials by reason.
type Denied struct {
	// Rate: the plan's token bucket; Quota: a hard quota; Cap: a soft
	// quota's spend cap.
	Rate  int64 `json:"rate"`
	Quota int64 `json:"quota"`
	Cap   int64 `json:"cap"`
}

func (d *Denied) add(o Denied) { d.Rate += o.Rate; d.Quota += o.Quota; d.Cap += o.Cap }

// Total is every denial.
func (d Denied) Total() int64 { return d.Rate + d.Quota + d.Cap }

// KeyCounts are one API key's decisions.
type KeyCounts struct {
	Allowed int64 `json:"allowed"`
	Denied  int64 `json:"denied"`
}

// Bucket is what a store keeps for one consumer and one hour or day.
type Bucket struct {
	Consumer string
	Step     Step
	Start    time.Time
	// Billed and Refunded are the ledger windows' Units and Refunded
	// that start in the bucket, set by the roll-up.
	Billed, Refunded int64
	// Denied and Keys are counted at decision time and added by flushes.
	Denied Denied
	Keys   map[string]KeyCounts
}

// Usage sets a bucket's billed and refunded units (the roll-up).
type Usage struct {
	Consumer         string
	Step             Step
	Start            time.Time
	Billed, Refunded int64
}

// Counts adds one key's decisions in one hour (a flush); the store adds
// them to the hour's bucket and to its day's.
type Counts struct {
	Consumer, Key string
	Hour          time.Time
	Allowed       int64
	Denied        Denied
}

// Store keeps the buckets. Implementations: localstore's History (bbolt)
// and redisstore's History (Redis, standalone or cluster).
type Store interface {
	// SetUsage sets the billed and refunded units of buckets, creating
	// them: idempotent, so replicas may roll up the same hour at once.
	SetUsage(ctx context.Context, us []Usage) error
	// AddCounts adds decision counts to their hours' and days' buckets.
	AddCounts(ctx context.Context, cs []Counts) error
	// Buckets reads consumer's buckets of step that start in [from, to),
	// oldest first; buckets never written are left out.
	Buckets(ctx context.Context, consumer string, step Step, from, to time.Time) ([]Bucket, error)
}

// Pruner is a Store that forgets buckets past their retention itself
// when asked (the local store; Redis expires them).
type Pruner interface {
	Prune(ctx context.Context, now time.Time) error
}

// Retention is how long buckets are kept (usage.history.hourly and
// usage.history.daily), counted from the bucket's end.
type Retention struct {
	Hourly, Daily time.Duration
}

// DefaultRetention is the config's default: 35 days of hours (Stripe's
// window for usage), 400 days of days (a year, compared with the last).
var DefaultRetention = Retention{Hourly: 35 * 24 * time.Hour, Daily: 400 * 24 * time.Hour}

// Of is the retention of step.
func (r Retention) Of(s Step) time.Duration {
	if s == Day {
		return r.Daily
	}
	return r.Hourly
}

// ExpireAt is when a bucket of step starting at start may be forgotten.
func (r Retention) ExpireAt(s Step, start time.Time) time.Time {
	return start.Add(s.Size() + r.Of(s))
}
