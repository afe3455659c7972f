// Package keyspace names every key levy keeps in a store: the one place
// that spells them. It is a leaf (the standard library only).
//
// # State keys
//
// The limiters' and the usage ledger's state (token buckets, quota
// counters, ledger windows, and the RLS rules' buckets and quotas) lives
// under State, "levy:1:": the product's prefix and the layout's version,
// so that a later layout can be told apart and moved to. Each key keeps a
// Redis Cluster hash tag, "{c:<consumer>}" for everything of one consumer
// (admission, settlement and export touch a consumer's keys in one atomic
// script call) and "{rl:<rule>}" for an RLS rule without a consumer:
//
//	levy:1:{c:ID}:rate:PLAN            a plan's token bucket (string)
//	levy:1:{c:ID}:units                the quota or usage counter (hash s, v)
//	levy:1:{c:ID}:ledgers              the consumer's ledger keys (set)
//	levy:1:{c:ID}:ledger:TERMS         windows with export work (sorted set)
//	levy:1:{c:ID}:ledger:TERMS:done    windows accounted (sorted set)
//	levy:1:{c:ID}:ledger:TERMS:START   one window (hash)
//	levy:1:{c:ID}:ledger:TERMS:START:seen   requests settled in it (set)
//	levy:1:{c:ID}:ledger:TERMS:START:added  units added after an outage (set)
//	levy:1:{c:ID}:rl:MATCH:b:PER       an RLS bucket of a consumer
//	levy:1:{rl:MATCH}:q:UNIT           an RLS quota of no consumer
//	levy:1:{rl:MATCH}:override:PER     an RLS limit override (or :UNIT, :zero)
//
// The Lua scripts derive a few of them from the keys they are given, as
// these builders do: a window is the ledger key, ":" and its start, its
// sets add ":seen" and ":added", and the consumer's ledger set is the
// ledger key cut after its hash tag, then ":ledgers" (LedgersOf).
//
// # The move from the unversioned layout
//
// Before layout 1, state keys were the same without "levy:1:" (for
// example "{c:ID}:units"). Upgrade names an old key's new name; the hash
// tag is unchanged, so both are in one slot and one script call can move
// one onto the other. Redis deployments are migrated, not read both ways:
// a sweep (redisstore.MigrateLayout) renames each old key, merging it
// into the new one when an older replica wrote both during a rolling
// update. The local store renames its saved counters and windows when it
// opens a file of the old layout.
//
// # Directory keys
//
// The key and consumer records, their indexes, the replica registry,
// leases and Stripe event claims keep the names they had ("levy:key:{..}",
// "{levy}:replicas"): they already carry levy's name, they are records
// rather than counters that change layout, and renaming them would move
// every API key of a deployment for no gain. They are built here all the
// same, so that one file lists everything levy writes.
package keyspace

import (
	"strconv"
	"strings"
)

// Version is the state keys' layout version.
const Version = 1

// State starts every state key: levy's prefix and the layout version.
const State = "levy:1:"

const (
	consumerTag = "{c:"
	ruleTag     = "{rl:"
	ledgerInfix = "}:ledger:"
	quotaSuffix = "}:units"
)

// Rate is the token bucket of a consumer on a plan: per plan, so that an
// upgrade starts on the new plan's full bucket at once.
func Rate(consumer, plan string) string {
	return State + consumerTag + consumer + "}:rate:" + plan
}

// Quota is a consumer's quota counter (or usage counter, for a plan
// without a quota). It is not per plan: usage so far in the period
// carries over to a new plan's quota.
func Quota(consumer string) string { return State + consumerTag + consumer + quotaSuffix }

// IsQuota reports whether key is consumer's quota key, without building
// it.
func IsQuota(consumer, key string) bool {
	rest, ok := strings.CutPrefix(key, State+consumerTag)
	return ok && len(rest) == len(consumer)+len(quotaSuffix) && strings.HasPrefix(rest, consumer) && strings.HasSuffix(rest, quotaSuffix)
}

// Ledger is a consumer's usage ledger under one set of billing terms,
// encoded by the caller (usage.LedgerKey) without a ':'.
func Ledger(consumer, terms string) string { return LedgerPrefix(consumer) + terms }

// LedgerPrefix is what every ledger key of consumer starts with.
func LedgerPrefix(consumer string) string { return State + consumerTag + consumer + ledgerInfix }

// ParseLedger splits a Ledger key into its consumer and encoded terms.
func ParseLedger(key string) (consumer, terms string, ok bool) {
	rest, found := strings.CutPrefix(key, State+consumerTag)
	if !found {
		return "", "", false
	}
	i := strings.Index(rest, ledgerInfix)
	if i < 0 {
		return "", "", false
	}
	return rest[:i], rest[i+len(ledgerInfix):], true
}

// IsLedger reports whether key is one of consumer's ledger keys.
func IsLedger(consumer, key string) bool {
	rest, ok := strings.CutPrefix(key, State+consumerTag)
	return ok && strings.HasPrefix(rest, consumer) && strings.HasPrefix(rest[len(consumer):], ledgerInfix)
}

// Ledgers is the set of a consumer's ledger keys: admission adds a key
// when it opens a window, so that a consumer's windows are found without
// scanning the keyspace.
func Ledgers(consumer string) string { return State + consumerTag + consumer + "}:ledgers" }

// LedgersOf is the ledger set of the consumer of ledger key, as the Lua
// scripts derive it: the key up to its hash tag's end, then ":ledgers".
func LedgersOf(ledger string) string {
	i := strings.Index(ledger, ledgerInfix)
	if i < 0 {
		return ""
	}
	return ledger[:i+1] + ":ledgers"
}

// LedgerPattern matches every ledger key (and its windows and sets) in a
// SCAN.
const LedgerPattern = State + consumerTag + "*" + ledgerInfix + "*"

// Window is the window of ledger that starts at start (unix seconds).
func Window(ledger string, start int64) string {
	return ledger + ":" + strconv.FormatInt(start, 10)
}

// Done is the set of ledger's accounted windows.
func Done(ledger string) string { return ledger + DoneSuffix }

// DoneSuffix ends a Done key.
const DoneSuffix = ":done"

// The kinds of RLS rule state, appended to Rule's key.
const (
	RuleBucket = ":b:" // then the bucket's period in nanoseconds
	RuleQuota  = ":q:" // then the quota's unit
	RuleZero   = ":zero"
	// RuleOverride is a descriptor's limit override: then ":" and its
	// bucket's period in nanoseconds, its quota's unit, or "zero".
	RuleOverride = ":override"
)

// Rule is the state of an RLS descriptor matched as matchKey, with its
// kind suffix: hash-tagged by consumer when the descriptor names one (so
// that one consumer's limits share a Redis slot), else by the rule. One
// concatenation: one allocation on the RLS hot path.
func Rule(matchKey, consumer string, suffix []byte) string {
	if consumer != "" {
		return State + consumerTag + consumer + "}:rl:" + matchKey + string(suffix)
	}
	return State + ruleTag + matchKey + "}" + string(suffix)
}

// LegacyPatterns match, in a SCAN, the state keys of the layout before
// Version: they began with their hash tag.
var LegacyPatterns = []string{consumerTag + "*", ruleTag + "*"}

// Upgrade is the current name of a state key of the layout before
// Version, and false for a key that is not one.
func Upgrade(old string) (string, bool) {
	if !strings.HasPrefix(old, consumerTag) && !strings.HasPrefix(old, ruleTag) || !strings.Contains(old, "}") {
		return "", false
	}
	return State + old, true
}

// Directory keys: records, indexes and coordination, under the names they
// always had.

// APIKey is an API key's record, by the key's hash.
func APIKey(hash string) string { return "levy:key:{" + hash + "}" }

// APIKeyPattern matches every APIKey in a SCAN.
const APIKeyPattern = "levy:key:{*"

// KeyID maps a key id to its hash.
func KeyID(id string) string { return "levy:keyid:{" + id + "}" }

// Consumer is a consumer's record.
func Consumer(id string) string { return consumerRecord + id + "}" }

const consumerRecord = "levy:consumer:{"

// ConsumerPattern matches every Consumer record in a SCAN.
const ConsumerPattern = consumerRecord + "*"

// ParseConsumer is the id of a Consumer record's key.
func ParseConsumer(key string) string {
	return strings.TrimSuffix(strings.TrimPrefix(key, consumerRecord), "}")
}

// StripeCustomer maps a Stripe customer to its consumer.
func StripeCustomer(customer string) string { return "levy:stripe:{" + customer + "}" }

// ConsumerKeys is the set of a consumer's key ids, in its consumer's slot.
func ConsumerKeys(id string) string { return "levy:consumer-keys:{" + id + "}" }

// StripeEvent claims a Stripe event id applied.
func StripeEvent(id string) string { return "levy:stripe-event:{" + id + "}" }

// PortalLink holds a developer-portal sign-in link's record under the
// hash of its token (a used link keeps its record, marked used, until
// the key expires).
func PortalLink(hash string) string { return "levy:portal:link:{" + hash + "}" }

// PortalSession holds a portal session's record under the hash of its id.
func PortalSession(hash string) string { return "levy:portal:session:{" + hash + "}" }

// Invalidate is the pub/sub channel that carries the hashes and consumer
// ids whose cached lookups every replica drops at once (a deleted
// consumer, a revoked or rotated key).
const Invalidate = "levy:invalidate"

// Coordination keys share the hash tag {levy}.
const (
	// Consumers is every consumer id, in a sorted set with score 0 so
	// that it is ordered by id (ZRANGE BYLEX): the listing's index.
	Consumers = "{levy}:consumers"
	// Indexed marks a Redis whose consumers and keys are all in the
	// listing and ownership indexes (redisstore's Backfill).
	Indexed = "{levy}:indexed"
	// Replicas is the replica registry.
	Replicas = "{levy}:replicas"
	// DemoKeys holds the demo keys of `make run`.
	DemoKeys = "{levy}:demo-keys"
)

// Usage alerts: every key under the coordination tag, so that one script
// call claims an alert and queues it, in one slot of a cluster.
const (
	// AlertOutbox orders the queued alerts' ids by when each is due (a
	// sorted set, score Unix milliseconds).
	AlertOutbox = "{levy}:alerts:outbox"
	// AlertRecords holds the queued alerts' records by id (a hash).
	AlertRecords = "{levy}:alerts:records"
)

// AlertClaim marks the alert with id (consumer, threshold, period) fired:
// set once, by the replica that queues it, until after its period ends.
func AlertClaim(id string) string { return "{levy}:alerts:claim:" + id }

// Lease is the lease named name.
func Lease(name string) string { return "{levy}:lease:" + name }
