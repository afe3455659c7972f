-- Move one state key of the layout before keyspace.Version onto its
-- current name (the same key behind keyspace.State, so in the same hash
-- slot): a RENAME when the new key does not exist. When it does (a replica
-- of the older levy kept writing the old name during a rolling update),
-- the old state is merged into the new, as if one replica had written both:
--   string, a token bucket's theoretical arrival time (negated while in
--     debt): the more spent of the two (the larger magnitude);
--   hash with s, a quota counter {s = period start, v = count}: in the
--     same period the counts are summed (at most 2^52), else the later
--     period's counter is kept;
--   other hash, a ledger window (redisledger.go names its fields): units,
--     refunds, reports, billed value and events summed; exported when
--     either was, and accounted what both had accounted, so that what
--     Stripe has not got is due, once; the size, pending value, rejection
--     and last event of the one that has them (the new one first);
--   sorted set (a ledger's index of windows, its accounted windows) and
--     set (a window's requests seen or units added): the union;
--   a consumer's set of ledger keys (":ledgers"): its members are old
--     ledger keys, renamed as their ledgers are.
-- The merged key keeps the later of the two expiries (none outlives any).
-- KEYS[1]: the old key; KEYS[2]: the new; ARGV[1]: keyspace.State.
-- Returns 1 when it moved a key, 0 when the old one was gone, and -1,
-- changing nothing, for a key it cannot merge: of a type levy never
-- writes, of another type than the new key, or with a value that is not a
-- number where levy keeps one. The sweep skips it and goes on.
local old, new, state = KEYS[1], KEYS[2], ARGV[1]
local kind = redis.call("TYPE", old).ok
if kind == "none" then return 0 end
if kind ~= "string" and kind ~= "hash" and kind ~= "zset" and kind ~= "set" then return -1 end
local new_kind = redis.call("TYPE", new).ok
if new_kind ~= "none" and new_kind ~= kind then return -1 end
if kind == "set" and string.sub(old, -8) == ":ledgers" then
  for _, m in ipairs(redis.call("SMEMBERS", old)) do
    if string.sub(m, 1, #state) ~= state then m = state .. m end
    redis.call("SADD", new, m)
  end
  redis.call("DEL", old)
  return 1
end
if redis.call("EXISTS", new) == 0 then
  redis.call("RENAME", old, new)
  return 1
end
local ttl_old, ttl_new = redis.call("PTTL", old), redis.call("PTTL", new)
local ttl = ttl_old
if ttl_old < 0 or ttl_new < 0 then ttl = -1 elseif ttl_new > ttl then ttl = ttl_new end
local max_count = 4503599627370496

local function fields(key)
  local h, flat = {}, redis.call("HGETALL", key)
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end
-- bad is set when a field levy keeps as a number holds something else:
-- the merge then returns -1 before it writes anything.
local bad = false
local function num(h, f)
  local v = tonumber(h[f] or "0")
  if v == nil then
    bad = true
    return 0
  end
  return v
end
-- accounted is what Stripe has of window h: nothing unless exported, and
-- its units when exported before levy kept "a".
local function accounted(h)
  if h.e ~= "1" then return 0 end
  if h.a then return num(h, "a") end
  return num(h, "u")
end

if kind == "string" then
  local o, n = tonumber(redis.call("GET", old)), tonumber(redis.call("GET", new))
  if o == nil or n == nil then return -1 end
  if math.abs(o) > math.abs(n) then redis.call("SET", new, string.format("%d", o)) end
elseif kind == "hash" then
  local o, n = fields(old), fields(new)
  if o.s or n.s then
    local so, sn = num(o, "s"), num(n, "s")
    local v = num(o, "v") + num(n, "v")
    if bad then return -1 end
    if so == sn then
      if v > max_count then v = max_count end
      redis.call("HSET", new, "v", string.format("%d", v))
    elseif so > sn then
      redis.call("HSET", new, "s", o.s, "v", o.v or "0")
    end
  else
    local m = {}
    for _, f in ipairs({"u", "r", "x", "b", "n"}) do
      m[#m + 1] = f
      m[#m + 1] = string.format("%d", num(o, f) + num(n, f))
    end
    if o.e == "1" or n.e == "1" then
      m[#m + 1] = "e"
      m[#m + 1] = "1"
      m[#m + 1] = "a"
      m[#m + 1] = string.format("%d", accounted(o) + accounted(n))
    end
    for _, f in ipairs({"z", "p", "j"}) do
      local v = n[f]
      if v == nil or v == "" or v == "0" then v = o[f] end
      if v ~= nil then
        m[#m + 1] = f
        m[#m + 1] = v
      end
    end
    local last = n
    if num(o, "t") > num(n, "t") then last = o end
    if bad then return -1 end
    if last.t then
      m[#m + 1] = "l"
      m[#m + 1] = last.l or "0"
      m[#m + 1] = "t"
      m[#m + 1] = last.t
    end
    redis.call("HSET", new, unpack(m))
  end
elseif kind == "zset" then
  redis.call("ZUNIONSTORE", new, "2", new, old, "AGGREGATE", "MIN")
elseif kind == "set" then
  redis.call("SUNIONSTORE", new, new, old)
end
redis.call("DEL", old)
-- A TTL as a string: Redis 7.2.0-7.2.4 pass a round Lua number on as
-- 1e+08, which PEXPIRE refuses (after the DEL above).
if ttl < 0 then redis.call("PERSIST", new) else redis.call("PEXPIRE", new, string.format("%d", ttl)) end
return 1
