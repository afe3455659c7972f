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
//	levy:1:{c:ID}:history:hour:START   usage history: an hour's billed, refunded and denied units and per-key counts (hash)
//	levy:1:{c:ID}:history:day:START    the same for a day (hash)
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
// example "{c:ID}:units"). Upgrade names an old key's new name (only for
// the shapes levy wrote); the hash tag is unchanged, so both are in one
// slot and one script call can move one onto the other. Redis deployments
// are migrated, not read both ways: a sweep (redisstore.MigrateLayout)
// renames each old key, merging it into the new one when an older replica
// wrote both during a rolling update. Until then the two layouts count
// apart: a hard quota may admit up to its limit under each name, and an
// access log that reaches an older replica for a request a newer one
// admitted is not settled by the older code. Replicas register the
// layout they write (ReplicaMember); exports wait (LayoutDone) until no
// older replica is registered and a sweep finds no old key, so that the
// two copies of a window are billed once, merged. The local store folds
// old names into new ones every time it opens its file (what an older
// levy wrote after a rollback too).
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

// History is a consumer's usage-history bucket of step ("hour" or "day")
// that starts at start (unix seconds, written with ten digits so that a
// consumer's buckets of one step sort by time: the local store reads a
// range with one cursor).
func History(consumer, step string, start int64) string {
	return HistoryPrefix(consumer, step) + tenDigits(start)
}

// HistoryPrefix is what every History key of consumer and step starts
// with.
func HistoryPrefix(consumer, step string) string {
	return State + consumerTag + consumer + historyInfix + step + ":"
}

const historyInfix = "}:history:"

// ParseHistory splits a History key into its consumer, step and start.
func ParseHistory(key string) (consumer, step string, start int64, ok bool) {
	rest, found := strings.CutPrefix(key, State+consumerTag)
	if !found {
		return "", "", 0, false
	}
	i := strings.LastIndex(rest, historyInfix)
	if i < 0 {
		return "", "", 0, false
	}
	step, num, found := strings.Cut(rest[i+len(historyInfix):], ":")
	if !found || step == "" {
		return "", "", 0, false
	}
	start, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return "", "", 0, false
	}
	return rest[:i], step, start, true
}

// tenDigits is n with leading zeros to ten digits (every unix second
// from 1970 to 2286).
func tenDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	if n >= 0 && len(s) < 10 {
		s = strings.Repeat("0", 10-len(s)) + s
	}
	return s
}

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
// Version: they began with their hash tag. Other applications' keys in a
// shared Redis may match them too: Upgrade tells levy's apart.
var LegacyPatterns = []string{consumerTag + "*", ruleTag + "*"}

// Upgrade is the current name of a state key of the layout before
// Version, and false for a key that is not one: only the shapes levy
// wrote (the list in the package doc without "levy:1:") are levy's, so
// that a sweep of a shared Redis leaves another application's "{c:..}"
// keys alone.
func Upgrade(old string) (string, bool) {
	if !isLegacy(old) {
		return "", false
	}
	return State + old, true
}

// UpgradeStored is Upgrade for a name the local store keeps: a state key,
// then ":" and the start of its period or window.
func UpgradeStored(old string) (string, bool) {
	i := strings.LastIndexByte(old, ':')
	if i < 0 || !isDigits(old[i+1:]) || !isLegacy(old[:i]) {
		return "", false
	}
	return State + old, true
}

// isLegacy reports whether key has the shape of a state key of the layout
// before Version.
func isLegacy(key string) bool {
	tag := consumerTag
	if strings.HasPrefix(key, ruleTag) {
		tag = ruleTag
	} else if !strings.HasPrefix(key, consumerTag) {
		return false
	}
	end := strings.IndexByte(key, '}')
	if end <= len(tag) {
		return false
	}
	rest := key[end+1:]
	if tag == ruleTag {
		return rest != "" && ruleSuffix(rest) == len(rest)
	}
	switch {
	case rest == ":units" || rest == ":ledgers":
		return true
	case strings.HasPrefix(rest, ":rate:"):
		return len(rest) > len(":rate:")
	case strings.HasPrefix(rest, ":ledger:"):
		return isLedgerTail(rest[len(":ledger:"):])
	case strings.HasPrefix(rest, ":rl:"):
		match := rest[len(":rl:"):]
		n := ruleSuffix(match)
		return n > 0 && n < len(match)
	}
	return false
}

// isLedgerTail reports whether s is what follows a ledger key's
// ":ledger:": its terms, then nothing, DoneSuffix, or a window's start
// and perhaps its ":seen" or ":added" set.
func isLedgerTail(s string) bool {
	parts := strings.Split(s, ":")
	if parts[0] == "" {
		return false
	}
	switch len(parts) {
	case 1:
		return true
	case 2:
		return ":"+parts[1] == DoneSuffix || isDigits(parts[1])
	case 3:
		return isDigits(parts[1]) && (parts[2] == "seen" || parts[2] == "added")
	}
	return false
}

// ruleSuffix is the length of the RLS state kind that s ends with
// (RuleBucket and a period, RuleQuota and a unit, RuleZero, RuleOverride
// and a period, a unit or "zero"), or 0.
func ruleSuffix(s string) int {
	if strings.HasSuffix(s, RuleZero) {
		return len(RuleZero)
	}
	j := strings.LastIndexByte(s, ':')
	if j < 0 {
		return 0
	}
	head, tail := s[:j+1], s[j+1:]
	var kind string
	switch {
	case strings.HasSuffix(head, RuleBucket) && isDigits(tail):
		kind = RuleBucket
	case strings.HasSuffix(head, RuleQuota) && isWord(tail):
		kind = RuleQuota
	case strings.HasSuffix(head, RuleOverride+":") && (isDigits(tail) || isWord(tail)):
		kind = RuleOverride + ":"
	default:
		return 0
	}
	return len(kind) + len(tail)
}

func isDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func isWord(s string) bool {
	for i := range len(s) {
		if s[i] < 'a' || s[i] > 'z' {
			return false
		}
	}
	return s != ""
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
	// Replicas is the replica registry: a sorted set of ReplicaMember
	// scored by each replica's last beat (unix milliseconds).
	Replicas = "{levy}:replicas"
	// LayoutDone holds Version once the layout sweep has found no state
	// key of an older layout while no replica of an older levy was
	// registered; a sweep deletes it when one registers again. Exports
	// wait for it (redisstore.LayoutComplete).
	LayoutDone = "{levy}:layout"
	// DemoKeys holds the demo keys of `make run`.
	DemoKeys = "{levy}:demo-keys"
	// Activity holds every consumer's activity record, by consumer id (a
	// hash of "seen period denied", unix seconds and a count), kept by
	// the usage history's flushes: one key, so that a list of every
	// consumer reads a thousand records a command.
	Activity = "{levy}:activity"
)

// ReplicaMember is a replica's member in Replicas: its id, then the state
// layout it writes. A levy of the unversioned layout registers its bare
// id and reads only the registry's size, so it counts these members as it
// counts its own, and ReplicaLayout tells its members apart (0).
func ReplicaMember(id string) string { return id + replicaLayout + strconv.Itoa(Version) }

const replicaLayout = ";layout="

// ReplicaLayout is the state layout of a Replicas member: 0 for a
// replica of the unversioned layout.
func ReplicaLayout(member string) int {
	i := strings.LastIndex(member, replicaLayout)
	if i < 0 {
		return 0
	}
	v, err := strconv.Atoi(member[i+len(replicaLayout):])
	if err != nil {
		return 0
	}
	return v
}

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
