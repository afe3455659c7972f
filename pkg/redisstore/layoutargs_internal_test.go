package redisstore

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/redistest"
)

// TestLayoutScriptPassesRedisOnlyStrings merges an old key into a new one
// of every kind layout.lua merges, both with an expiry, through a script
// whose redis.call refuses numbers (redistest.ScriptArgGuard).
func TestLayoutScriptPassesRedisOnlyStrings(t *testing.T) {
	client := redistest.Start(t).Client()
	ctx := context.Background()
	script := redis.NewScript(redistest.ScriptArgGuard + layoutLua)
	ttl := 100000 * time.Second // 1e+08 ms: written 1e+08 by the broken versions
	for _, kind := range []struct {
		name  string
		write func(key string) error
	}{
		{"string", func(k string) error { // values apart, so that the merge writes the new key
			v := "5"
			if strings.HasSuffix(k, ":old") {
				v = "7"
			}
			return client.Set(ctx, k, v, ttl).Err()
		}},
		{"quota", func(k string) error { return client.HSet(ctx, k, "s", "1764547200", "v", "3").Err() }},
		{"ledger", func(k string) error { return client.HSet(ctx, k, "u", "4", "t", "1764547200", "l", "4").Err() }},
		{"zset", func(k string) error { return client.ZAdd(ctx, k, redis.Z{Score: 1764547200, Member: "w"}).Err() }},
		{"set", func(k string) error { return client.SAdd(ctx, k, "x").Err() }},
	} {
		old, new := "{c:"+kind.name+"}:old", "{c:"+kind.name+"}:new"
		for _, k := range []string{old, new} {
			if err := kind.write(k); err != nil {
				t.Fatal(err)
			}
			if err := client.PExpire(ctx, k, ttl).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := script.Run(ctx, client, []string{old, new}, keyspace.State).Err(); err != nil {
			t.Errorf("%s: %v", kind.name, err)
		}
		if d, err := client.PTTL(ctx, new).Result(); err != nil || d <= 0 {
			t.Errorf("%s: the merged key's TTL is %v (%v), want the later expiry kept", kind.name, d, err)
		}
	}
}
