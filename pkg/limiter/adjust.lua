-- Settle one ledger window: add (possibly negative) units and billable
-- units, never below zero, only to a window that admission counted.
-- KEYS[1]: the ledger (index of unexported windows); ARGV: start, units, billable.
local w = KEYS[1] .. ":" .. ARGV[1]
if redis.call("EXISTS", w) == 0 then return 0 end
local u = tonumber(redis.call("HGET", w, "u") or "0") + tonumber(ARGV[2])
local b = tonumber(redis.call("HGET", w, "b") or "0") + tonumber(ARGV[3])
if u < 0 then u = 0 end
if b < 0 then b = 0 end
redis.call("HSET", w, "u", u, "b", b)
return 1
