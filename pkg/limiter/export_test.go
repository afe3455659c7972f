package limiter

import (
	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/redistest"
)

// argGuard: see redistest.ScriptArgGuard.
const argGuard = redistest.ScriptArgGuard

// GuardScriptArgs makes r's scripts refuse a number passed to redis.call.
// Call it before r decides anything.
func GuardScriptArgs(r *Redis) {
	r.decideScript = newScript(argGuard + decideLua)
	r.peekScript = newScript(argGuard + peekLua)
}

// GuardLedgerScriptArgs makes l's scripts refuse a number passed to
// redis.call. Call it before l is used.
func GuardLedgerScriptArgs(l *RedisLedger) {
	l.adjust = redis.NewScript(argGuard + adjustLua)
	l.add = redis.NewScript(argGuard + addLua)
	l.commit = redis.NewScript(argGuard + commitLua)
}
