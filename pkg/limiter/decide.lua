-- levy's atomic decisions: every limit of a request, evaluated against the
-- store's clock, then all taken or (when any denies) none. One call
-- decides a batch of requests, one after the other, as if each were its
-- own call.
--
-- KEYS: the state of each limit of each request, in order (a bucket's
-- theoretical arrival time, or a quota hash {s = period start, v = count});
-- all in one hash slot.
-- ARGV[1]: "" to use TIME, or a test clock in microseconds.
-- ARGV[2]: D, the number of requests; ARGV[3..2+D]: each request's number
-- of limits. Then, from ARGV[3+D], 10 values per limit:
--   kind (0 bucket, 1 quota), cost, shadow (0/1),
--   bucket: interval_us, tolerance_us, -, -, -, -, -
--   quota:  unit (1 hour, 2 day, 3 week, 4 month, 5 year), max, soft (0/1), cap,
--           anchor_day (0 = calendar), anchor_month*100000+anchor_second_of_day
--   ledger (kind 2): window_s, -, -, -, -, -; KEYS[i] is the ledger's index
--           of unexported windows, the window itself is KEYS[i]..":"..start
-- Returns {now_s, now_us, then per request: denied_index (0 = none), then
-- per limit: ok (0/1), remaining, reset_us, retry_us, used, overage,
-- period_start_s, period_end_s}

local now
-- Redis expires keys on its own clock; under a test clock a bucket key
-- must outlive the test's real time, so it gets a minute more.
local ttl_extra = 0
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
  ttl_extra = 60000
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now_s = math.floor(now / 1000000)

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function add_months(y, m, n)
  local total = y * 12 + (m - 1) + n
  return math.floor(total / 12), total % 12 + 1
end

local function days_in(y, m)
  local ny, nm = add_months(y, m, 1)
  return days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)
end

-- boundary: the anchor's day (clamped) and second of day in month m of y.
local function boundary(y, m, aday, asec)
  local d = aday
  local last = days_in(y, m)
  if d > last then d = last end
  return days_from_civil(y, m, d) * 86400 + asec
end

-- period returns [start, end) in seconds of the period containing t.
local function period(t, unit, aday, amonth_sec)
  local day = math.floor(t / 86400)
  if unit == 1 then
    local s = math.floor(t / 3600) * 3600
    return s, s + 3600
  elseif unit == 2 then
    return day * 86400, day * 86400 + 86400
  elseif unit == 3 then
    local back = (day + 3) % 7 -- 1970-01-01 was a Thursday; weeks start Monday
    local s = (day - back) * 86400
    return s, s + 7 * 86400
  end
  local amonth = math.floor(amonth_sec / 100000)
  local asec = amonth_sec % 100000
  if aday == 0 then aday, amonth, asec = 1, 1, 0 end
  local step = (unit == 5) and 12 or 1
  local y, m = civil_from_days(day)
  if unit == 5 then m = amonth end
  local s = boundary(y, m, aday, asec)
  while s > t do
    y, m = add_months(y, m, -step)
    s = boundary(y, m, aday, asec)
  end
  local ny, nm = add_months(y, m, step)
  return s, boundary(ny, nm, aday, asec)
end


-- eval decides one limit (its values start at ARGV[base]) from its stored
-- state; it returns the status and the state it would leave.
local function eval(base, cost, stored)
  local kind = tonumber(ARGV[base])
  if kind == 2 then
    local size = tonumber(ARGV[base + 3])
    local start = math.floor(now_s / size) * size
    local units = (stored or 0) + cost
    return {1, -1, 0, 0, units, 0, start, start + size}, units
  end
  if kind == 0 then
    local interval = tonumber(ARGV[base + 3])
    local tolerance = tonumber(ARGV[base + 4])
    local tat = stored or now
    if tat < now then tat = now end
    if tat > now + tolerance then tat = now + tolerance end
    if cost * interval > tolerance then
      -- more than the bucket ever holds: never passes
      return {0, math.floor((tolerance - (tat - now)) / interval), tat - now, tolerance, 0, 0, 0, 0}, tat
    end
    local nxt = tat + cost * interval
    if nxt - now > tolerance then
      return {0, math.floor((tolerance - (tat - now)) / interval), tat - now, nxt - now - tolerance, 0, 0, 0, 0}, tat
    end
    return {1, math.floor((tolerance - (nxt - now)) / interval), nxt - now, 0, 0, 0, 0, 0}, nxt
  end
  local max = tonumber(ARGV[base + 4])
  local soft = tonumber(ARGV[base + 5]) == 1
  local cap = tonumber(ARGV[base + 6])
  local ps, pe = period(now_s, tonumber(ARGV[base + 3]), tonumber(ARGV[base + 7]), tonumber(ARGV[base + 8]))
  local used = stored or 0
  local after = used + cost
  local reset = pe * 1000000 - now
  if not soft then
    if after > max then
      local rem = max - used
      if rem < 0 then rem = 0 end
      return {0, rem, reset, reset, used, 0, ps, pe}, used
    end
    return {1, max - after, reset, 0, after, 0, ps, pe}, after
  end
  local over = after - max
  if over < 0 then over = 0 end
  if cap > 0 then
    if after > cap then
      local rem = cap - used
      if rem < 0 then rem = 0 end
      local o = used - max
      if o < 0 then o = 0 end
      return {0, rem, reset, reset, used, o, ps, pe}, used
    end
    return {1, cap - after, reset, 0, after, over, ps, pe}, after
  end
  return {1, -1, reset, 0, after, over, ps, pe}, after
end

-- read returns a limit's stored state for the current period, and the
-- period (or window) start that names it.
local function read(key, base)
  local kind = tonumber(ARGV[base])
  if kind == 0 then
    local v = redis.call("GET", key)
    return v and tonumber(v) or nil, 0
  end
  if kind == 2 then
    local size = tonumber(ARGV[base + 3])
    local start = math.floor(now_s / size) * size
    local v = redis.call("HGET", key .. ":" .. start, "u")
    return v and tonumber(v) or nil, start
  end
  local ps = period(now_s, tonumber(ARGV[base + 3]), tonumber(ARGV[base + 7]), tonumber(ARGV[base + 8]))
  local h = redis.call("HMGET", key, "s", "v")
  if h[1] and tonumber(h[1]) == ps then
    return tonumber(h[2]), ps
  end
  return nil, ps
end

-- write stores what an allowed limit took.
local function write(key, base, value, st)
  local kind = tonumber(ARGV[base])
  local cost = tonumber(ARGV[base + 1])
  if cost <= 0 then return end
  if kind == 0 then
    local ttl = math.floor((value - now) / 1000) + 1 + ttl_extra
    redis.call("SET", key, string.format("%d", value), "PX", ttl)
  elseif kind == 2 then
    local w = key .. ":" .. st[7]
    if redis.call("HINCRBY", w, "u", cost) == cost then
      -- the window's first units: record its size and index it (both
      -- idempotent, so a window settled down to zero may do it again)
      redis.call("HSETNX", w, "z", tonumber(ARGV[base + 3]))
      redis.call("ZADD", key, st[7], st[7])
    end
  else
    redis.call("HSET", key, "s", st[7], "v", value)
    -- kept a day past the period's end, relative to the decision's clock
    redis.call("PEXPIRE", key, math.floor((st[8] * 1000000 - now) / 1000) + 86400000)
  end
end

-- decide decides one request: n limits, keys from KEYS[k0], values from
-- ARGV[a0]; it appends its answer to out.
local function decide(k0, a0, n, out)
  local pending = {} -- key|period -> the state earlier limits of this request leave
  local stored, statuses, values, skips = {}, {}, {}, {}
  local denied = 0
  for i = 1, n do
    local key, base = KEYS[k0 + i - 1], a0 + (i - 1) * 10
    local v, ps = read(key, base)
    stored[i] = v
    local pk = key .. "|" .. ps
    local cur = v
    if pending[pk] ~= nil then cur = pending[pk] end
    local st, nv = eval(base, tonumber(ARGV[base + 1]), cur)
    statuses[i], values[i] = st, nv
    if st[1] == 0 then
      if tonumber(ARGV[base + 2]) == 1 then skips[i] = true elseif denied == 0 then denied = i end
    end
    if not skips[i] then pending[pk] = nv end
  end
  if denied > 0 then
    -- Nothing is taken: report what the other limits have left.
    for i = 1, n do
      if i ~= denied and statuses[i][1] == 1 then
        statuses[i] = eval(a0 + (i - 1) * 10, 0, stored[i])
      end
    end
  else
    for i = 1, n do
      if not skips[i] then
        write(KEYS[k0 + i - 1], a0 + (i - 1) * 10, values[i], statuses[i])
      end
    end
  end
  table.insert(out, denied)
  for i = 1, n do
    for _, v in ipairs(statuses[i]) do
      table.insert(out, v)
    end
  end
end

local out = {now_s, now % 1000000}
local count = tonumber(ARGV[2])
local k0, a0 = 1, 3 + count
for d = 1, count do
  local n = tonumber(ARGV[2 + d])
  decide(k0, a0, n, out)
  k0, a0 = k0 + n, a0 + n * 10
end
return out
