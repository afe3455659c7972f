-- Settle one ledger window: apply each settled request once (across every
-- replica sharing this Redis), never below zero, only to a window that
-- admission counted. A window already accounted to Stripe goes back into
-- the index of windows with work: its change is a correction. The quota
-- counter the requests were counted in moves with the window, by the same
-- new requests' units: past its limit for a debit (decide.lua then denies
-- until the period ends), never below zero for a refund, and only while
-- it still counts the period the requests were counted in.
-- KEYS[1]: the ledger (index of windows with export work); KEYS[2], when
-- given: the quota counter, a hash {s = period start, v = count} (the
-- consumer's hash tag, like the ledger's).
-- ARGV: start, seen_ttl_s, the quota's period start ("" for none), then
-- pairs of fingerprint ("" for a request without one: always applied) and
-- units (negative: a refund).
-- Returns -1 when admission never counted the window, else 1.
-- Numbers go to redis.call as strings made with %d (decide.lua says why).
local w = KEYS[1] .. ":" .. ARGV[1] -- the window (keyspace.Window)
if redis.call("EXISTS", w) == 0 then return -1 end
local seen = w .. ":seen"
local refunded, reported, used = 0, 0, false
for i = 4, #ARGV, 2 do
  local fp, n = ARGV[i], tonumber(ARGV[i + 1])
  local new = true
  if fp ~= "" then
    used = true
    new = redis.call("SADD", seen, fp) == 1
  end
  if new then
    if n < 0 then refunded = refunded - n else reported = reported + n end
  end
end
if used then redis.call("EXPIRE", seen, ARGV[2]) end
if refunded == 0 and reported == 0 then return 1 end
if KEYS[2] and ARGV[3] ~= "" and reported ~= refunded then
  local q = redis.call("HMGET", KEYS[2], "s", "v")
  local start = tonumber(ARGV[3])
  if q[1] and tonumber(q[1]) == start then
    local v = tonumber(q[2] or "0") + reported - refunded
    if v < 0 then v = 0 end
    -- 2^52: a debit has no other bound, and Lua's numbers are doubles
    if v > 4503599627370496 then v = 4503599627370496 end
    redis.call("HSET", KEYS[2], "v", string.format("%d", v))
  elseif reported > refunded and not q[1] then
    -- admission counted nothing (a route that costs nothing until its
    -- upstream reports units): the debit starts the period's count. A
    -- counter of another period is left alone: it may be a later plan's
    -- longer period, which starts earlier. Its end is not known here: kept
    -- a year and a day, until a decision that takes sets its own expiry
    -- (t says it has to: decisions set it only when a period starts).
    local v = reported - refunded
    if v > 4503599627370496 then v = 4503599627370496 end
    redis.call("HSET", KEYS[2], "s", ARGV[3], "v", string.format("%d", v), "t", "1")
    redis.call("EXPIRE", KEYS[2], "31708800")
  end
end
local before = tonumber(redis.call("HGET", w, "u") or "0")
local u = before + reported - refunded
if u < 0 then u = 0 end
redis.call("HSET", w, "u", string.format("%d", u))
if refunded ~= 0 then redis.call("HINCRBY", w, "r", string.format("%d", refunded)) end
if reported ~= 0 then redis.call("HINCRBY", w, "x", string.format("%d", reported)) end
if redis.call("HGET", w, "e") == "1" then
  if redis.call("HEXISTS", w, "a") == 0 then
    -- exported before levy kept "a": it was accounted as it stood
    redis.call("HSET", w, "a", string.format("%d", before))
  end
  redis.call("ZADD", KEYS[1], ARGV[1], ARGV[1])
end
return 1
