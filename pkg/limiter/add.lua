-- Add units counted while Redis was away to a ledger window, creating it.
-- A window already accounted to Stripe goes back into the index of windows
-- with work: the units are a correction of its billing period, as a late
-- settlement is (adjust.lua).
-- KEYS[1]: the ledger (index of windows with export work); ARGV: start,
-- size, units, token, keep_s. A token already applied to the window adds
-- nothing (a retry after a lost answer). Returns 1.
local w = KEYS[1] .. ":" .. ARGV[1] -- the window (keyspace.Window)
if ARGV[4] ~= "" then
  local added = w .. ":added"
  if redis.call("SADD", added, ARGV[4]) == 0 then return 1 end
  redis.call("EXPIRE", added, ARGV[5])
end
local before = tonumber(redis.call("HGET", w, "u") or "0")
redis.call("HINCRBY", w, "u", ARGV[3])
redis.call("HSETNX", w, "z", ARGV[2])
if redis.call("HGET", w, "e") == "1" and redis.call("HEXISTS", w, "a") == 0 then
  -- exported before levy kept "a": it was accounted as it stood
  redis.call("HSET", w, "a", string.format("%d", before))
end
redis.call("ZADD", KEYS[1], ARGV[1], ARGV[1])
-- the consumer's set of ledgers (keyspace.LedgersOf) knows the ledger
redis.call("SADD", string.sub(KEYS[1], 1, string.find(KEYS[1], "}:ledger:", 1, true)) .. ":ledgers", KEYS[1])
return 1
