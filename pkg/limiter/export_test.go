package limiter

import "github.com/redis/go-redis/v9"

// argGuard, put before a script, makes its redis.call refuse any argument
// that is not a string: Redis 7.2.0 to 7.2.4 write a whole number with
// eight or more trailing zeros in scientific notation (decide.lua says
// more), so the scripts pass every number as a string made with %d. The
// guard finds a number passed as it is on any Redis, whatever its value.
const argGuard = `local redis = setmetatable({call = function(...)
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    if type(a) ~= "string" then
      error("redis.call(" .. tostring((...)) .. ", ...): argument " .. i .. " is a " .. type(a) .. ", not a string")
    end
  end
  return redis.call(...)
end}, {__index = redis})
`

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
