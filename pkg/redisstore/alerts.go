package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/keyspace"
)

// Alerts is the usage alerts' outbox in Redis, shared by every replica:
// a claim per alert (SET NX), the queued records in a hash and their due
// times in a sorted set, all in keyspace's {levy} slot so that one script
// changes them together.
type Alerts struct {
	Client redis.UniversalClient
}

var _ alert.Store = Alerts{}

// addAlert claims KEYS[1] for ARGV[1] ms and, only when the claim is new,
// queues ARGV[3] under id ARGV[2], due at ARGV[4] (Unix ms).
var addAlert = redis.NewScript(`
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
return 1
`)

// takeAlerts returns up to ARGV[3] ids and records due at ARGV[1] and
// makes them due at ARGV[2].
var takeAlerts = redis.NewScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', '0', ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out+1] = id
    out[#out+1] = rec
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
`)

// retryAlert updates a record still queued (not done meanwhile).
var retryAlert = redis.NewScript(`
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
`)

// Add implements alert.Store: one pipeline (and a second for the claims
// a Redis that had not loaded the script refused: a refused script ran
// nothing, so running it again claims nothing twice).
func (a Alerts) Add(ctx context.Context, claims []alert.Claim) ([]bool, error) {
	out := make([]bool, len(claims))
	if len(claims) == 0 {
		return out, nil
	}
	calls := make([]scriptCall, len(claims))
	for i, c := range claims {
		if c.Keep <= 0 {
			return nil, errors.New("redis add alert: keep must be positive")
		}
		calls[i] = scriptCall{[]string{keyspace.AlertClaim(c.ID), keyspace.AlertOutbox, keyspace.AlertRecords},
			[]any{c.Keep.Milliseconds(), c.ID, c.Rec, c.Due.UnixMilli()}}
	}
	cmds := runScript(ctx, a.Client, addAlert, calls)
	for i, cmd := range cmds {
		n, err := cmd.Int()
		if err != nil {
			return nil, fmt.Errorf("redis add alerts: %w", err)
		}
		out[i] = n == 1
	}
	return out, nil
}

// Take implements alert.Store.
func (a Alerts) Take(ctx context.Context, now time.Time, hide time.Duration, n int) ([]alert.Entry, error) {
	v, err := takeAlerts.Run(ctx, a.Client, []string{keyspace.AlertOutbox, keyspace.AlertRecords},
		now.UnixMilli(), now.Add(hide).UnixMilli(), n).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redis take alerts: %w", err)
	}
	out := make([]alert.Entry, 0, len(v)/2)
	for i := 0; i+1 < len(v); i += 2 {
		out = append(out, alert.Entry{ID: v[i], Rec: []byte(v[i+1])})
	}
	return out, nil
}

// Retry implements alert.Store.
func (a Alerts) Retry(ctx context.Context, id string, rec []byte, due time.Time) error {
	if err := retryAlert.Run(ctx, a.Client, []string{keyspace.AlertOutbox, keyspace.AlertRecords}, id, rec, strconv.FormatInt(due.UnixMilli(), 10)).Err(); err != nil {
		return fmt.Errorf("redis retry alert: %w", err)
	}
	return nil
}

// Done implements alert.Store.
func (a Alerts) Done(ctx context.Context, id string) error {
	_, err := a.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, keyspace.AlertOutbox, id)
		p.HDel(ctx, keyspace.AlertRecords, id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis alert done: %w", err)
	}
	return nil
}

// Queued implements alert.Store.
func (a Alerts) Queued(ctx context.Context) (int64, error) {
	n, err := a.Client.ZCard(ctx, keyspace.AlertOutbox).Result()
	if err != nil {
		return 0, fmt.Errorf("redis queued alerts: %w", err)
	}
	return n, nil
}
