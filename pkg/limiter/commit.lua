-- Record an export step of one billing period: the event of window K (its
-- value accepted by Stripe, 0 when nothing was sent, negative when K's last
-- event was cancelled) and the windows it
-- accounted, each at the units it held when the value was worked out. A
-- window whose units moved since stays in the index: the next pass
-- accounts the difference. With a reason, the windows are set aside as
-- rejected instead.
-- KEYS[1]: K's ledger; KEYS[2..]: each accounted window's ledger.
-- ARGV: K's start, value, keep_s, reason, then per accounted window its
-- start and units (integers, as Go formats them). Numbers go to redis.call
-- as strings made with %d (decide.lua says why).
local kw = KEYS[1] .. ":" .. ARGV[1] -- the window (keyspace.Window)
local value = tonumber(ARGV[2])
if redis.call("EXISTS", kw) == 1 then
  if value > 0 then
    redis.call("HINCRBY", kw, "b", ARGV[2])
    redis.call("HINCRBY", kw, "n", "1")
    redis.call("HSET", kw, "l", ARGV[2], "t", redis.call("TIME")[1])
  elseif value < 0 then
    -- the last event was cancelled
    redis.call("HINCRBY", kw, "b", ARGV[2])
    redis.call("HSET", kw, "l", "0")
  end
  redis.call("HDEL", kw, "p")
end
local reason = ARGV[4]
for i = 2, #KEYS do
  local s, units = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local w = KEYS[i] .. ":" .. s
  if redis.call("EXISTS", w) == 1 then
    if reason ~= "" then
      -- and "a" stays what Stripe has
      redis.call("HSET", w, "j", reason)
    else
      redis.call("HSET", w, "e", "1", "a", units)
    end
    redis.call("EXPIRE", w, ARGV[3])
    local u = tonumber(redis.call("HGET", w, "u") or "0")
    if reason ~= "" or (u == tonumber(units) and tonumber(redis.call("HGET", w, "p") or "0") == 0) then
      redis.call("ZREM", KEYS[i], s)
    end
    redis.call("ZADD", KEYS[i] .. ":done", s, s)
    redis.call("ZREMRANGEBYSCORE", KEYS[i] .. ":done", "-inf", string.format("%d", tonumber(s) - tonumber(ARGV[3])))
  end
end
return 1
