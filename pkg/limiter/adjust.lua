-- Settle one ledger window: add (possibly negative) units, never below
-- zero, only to a window that admission counted.
-- KEYS[1]: the ledger (index of unexported windows); ARGV: start, units.
local w = KEYS[1] .. ":" .. ARGV[1]
if redis.call("EXISTS", w) == 0 then return 0 end
local u = tonumber(redis.call("HGET", w, "u") or "0") + tonumber(ARGV[2])
if u < 0 then u = 0 end
redis.call("HSET", w, "u", u)
return 1
