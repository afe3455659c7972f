-- Add units counted while Redis was away to a ledger window, creating it.
-- KEYS[1]: the ledger (index of unexported windows); ARGV: start, size, units.
-- Returns 0 when the window was already exported (the caller adds the units
-- to a later window), 1 otherwise.
local w = KEYS[1] .. ":" .. ARGV[1]
if redis.call("HGET", w, "e") == "1" then return 0 end
redis.call("HINCRBY", w, "u", ARGV[3])
redis.call("HSETNX", w, "z", ARGV[2])
redis.call("ZADD", KEYS[1], ARGV[1], ARGV[1])
redis.call("SADD", string.sub(KEYS[1], 1, string.find(KEYS[1], "}:ledger:", 1, true)) .. ":ledgers", KEYS[1])
return 1
