-- levy's atomic decisions: every limit of a request, evaluated against the
-- store's clock, then all taken (quota-mode limits that are over aside)
-- or, when the request is denied, none but debits, which are always
-- taken. One call decides a batch of requests, one after
-- the other, as if each were its own call. It runs for every decision, so
-- it is written for speed: each distinct key and each distinct set of
-- parameters is sent and parsed once per call, the few tables it needs
-- are reused across the batch, and a limit's answer is one value, from
-- which Go works out the rest. The semantics are Local.Decide's
-- (local.go), step for step: the two stores must agree to the
-- microsecond.
--
-- Reads: each distinct state once: every bucket of the batch with one
-- MGET first, a quota with an HMGET when first needed (a hash: no
-- multi-key read). A ledger window is not read to decide (a
-- ledger never denies): the HINCRBY that writes it answers its total,
-- from which its useds are made absolute; only a window the call leaves
-- untouched is read, with an HGET, and a give-back reads each window.
--
-- KEYS: the distinct keys of the batch's limits, the buckets' first: a
-- bucket's theoretical arrival time (negated while the bucket is in
-- debt), a quota hash {s = period start, v = count}, or a ledger's index
-- of unexported windows; all in one hash slot.
-- ARGV[1]: "" to use TIME, or a test clock in microseconds.
-- ARGV[2]: every other number of the batch, as MessagePack (Redis makes a
-- string of each argument, which costs more than decoding them all at
-- once): a stream of numbers, which cmsgpack.unpack returns as values, or
-- (past what Lua's stack holds) one array of them: D, the number of
-- requests, P, the number of distinct parameter sets, and B, the number
-- of bucket keys (KEYS[1..B]); then the P sets, by kind:
--   bucket (0): kind, cost, flags, interval_us, tolerance_us
--   quota (1):  kind, cost, flags, unit (1 hour, 2 day, 3 week, 4 month,
--               5 year), bound (the most it counts for a request to be
--               within: max, a soft quota's cap, -1 for none),
--               anchor_day (0 = calendar),
--               anchor_month*100000+anchor_second_of_day, and the period
--               [start, stop) in Unix seconds on Go's clock (plan.PeriodAt),
--               used when the store's clock is in it, else worked out
--   ledger (2): kind, cost, flags, window_s; the window itself is
--               key..":"..start
-- where flags is shadow + 2*debit + 4*quota_mode (quota_mode: one of the
-- request's quota-mode group, which denies only when all of it is over);
-- then each request: 2n + r, for its n limits, where r is 1 when two of
-- them name one key (else no limit of it can see another's take), and
-- n references, each key_index * 2^20 + set_index (both from 0).
-- ARGV[3]: absent to decide; present to give back what one request's
-- limits (D = 1) took, when the request, decided slot by slot in a
-- cluster, was denied or failed, or its reply came too late: a
-- MessagePack array of each limit's period start in the decision (Unix
-- seconds; a bucket's is ignored). Each limit's cost is returned to the
-- period the decision counted it in (a quota counting another period is
-- left alone), then each is answered as a check, in the current period,
-- that takes nothing.
-- Returns, packed as one MessagePack array (cheaper for Redis than a reply
-- of as many integers): now_s, now_us, then per request: denied_index
-- (0 = none), then one value per limit: the state it was last evaluated
-- against, from which Go evaluates it again, as Local does (redis.go's
-- answer: evalBucket, evalQuota), for its whole status:
--   bucket: how far ahead of now its state was, in microseconds
--           (-1 - that when the bucket was in debt)
--   quota:  its count (used) before it took
--   ledger: its window's units after (it always allows, bounds nothing)
-- A limit is last evaluated at its cost, but at 0 in a give-back and,
-- when its request is denied, a limit that was within and no debit (to
-- report what it has left): Go tells which from the same facts.

local floor, tonumber, call, KEYS = math.floor, tonumber, redis.call, KEYS
local now
-- Redis expires keys on its own clock; under a test clock a bucket key
-- must outlive the test's real time, so it gets a minute more.
local ttl_extra = 0
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
  ttl_extra = 60000
else
  local t = call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now_s = floor(now / 1000000)
-- Local.go's maxAhead and maxCount: how far beyond now a bucket's state
-- may lie (its time to fill and its debt), and the most a quota counts.
local max_ahead, max_count = 2251799813685248, 4503599627370496

-- Every number passed to redis.call is a string made with %d: Redis
-- 7.2.0 to 7.2.4 format a number argument with fpconv_dtoa, which writes
-- a whole number with eight or more trailing zeros in scientific
-- notation (1e+08): a PX or PEXPIRE of it is refused, and a count or a
-- window's start stored as it is no integer to HINCRBY or to Go. (7.0
-- formats one with snprintf("%.17g"), which costs about as much as a
-- command; 7.2.5 and later as an integer.)
local fmt = string.format
-- str is whole number n as a string, made once per call: the numbers a
-- batch repeats (a period's start, a cost) are formatted once, not per
-- decision, in a window's key and in commands' arguments.
local strs = {}
local function str(n)
  local s = strs[n]
  if not s then
    s = fmt("%d", n)
    strs[n] = s
  end
  return s
end

-- period returns [start, end) in seconds of the period containing t.
-- Only when the period Go sent is not the clock's (at its boundary, or
-- with Go's clock off Redis's): its helpers are made by the call.
local function period(t, unit, aday, amonth_sec)
  local day = floor(t / 86400)
  if unit == 1 then
    local s = floor(t / 3600) * 3600
    return s, s + 3600
  elseif unit == 2 then
    return day * 86400, day * 86400 + 86400
  elseif unit == 3 then
    local back = (day + 3) % 7 -- 1970-01-01 was a Thursday; weeks start Monday
    local s = (day - back) * 86400
    return s, s + 7 * 86400
  end

  local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m > 2) and (m - 3) or (m + 9)
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
  end

  local function civil_from_days(z)
    z = z + 719468
    local era = floor(z / 146097)
    local doe = z - era * 146097
    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
    local mp = floor((5 * doy + 2) / 153)
    local d = doy - floor((153 * mp + 2) / 5) + 1
    local m = (mp < 10) and (mp + 3) or (mp - 9)
    if m <= 2 then y = y + 1 end
    return y, m, d
  end

  local function add_months(y, m, n)
    local total = y * 12 + (m - 1) + n
    return floor(total / 12), total % 12 + 1
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

  local amonth = floor(amonth_sec / 100000)
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

-- The batch's parameter sets, parsed once, each a record: kind, cost,
-- flags (shadow, debit, qm: 0/1), the period it counts in now (start,
-- and as a string, sstart; a quota's stop too) and its kind's values: a
-- bucket's interval and tolerance in microseconds, a quota's bound, a
-- ledger's window size in seconds. A record's constructor sizes its table
-- once; a table grown from empty is rehashed at every power of two, and
-- growing tables (one per field, by set, by key) was the largest part of
-- the script's own cost.
local sets = {}
local any_debit, any_qm = false, false -- any set of the batch is a debit's, a quota-mode limit's
-- (A table made of values is made at its size; cmsgpack grows an array's.)
local v = {cmsgpack.unpack(ARGV[2])}
if type(v[1]) == "table" then v = v[1] end
local a = 4
for p = 1, v[2] do
  local kind, cost, f = v[a], v[a + 1], v[a + 2]
  local shadow, debit, qm = f % 2, floor(f / 2) % 2, floor(f / 4)
  if debit == 1 then any_debit = true end
  if qm == 1 then any_qm = true end
  if kind == 0 then
    sets[p] = {kind = 0, cost = cost, shadow = shadow, debit = debit, qm = qm, start = 0,
      interval = v[a + 3], tolerance = v[a + 4]}
    a = a + 5
  elseif kind == 2 then
    local size = v[a + 3]
    local start = floor(now_s / size) * size
    sets[p] = {kind = 2, cost = cost, shadow = shadow, debit = debit, qm = qm, start = start, sstart = str(start),
      size = size}
    a = a + 4
  else
    -- Go's period, which is the one the clock is in when it holds the clock
    -- (Go works it out as period does: periods of a unit and anchor tile time)
    local start, stop = v[a + 7], v[a + 8]
    if now_s < start or now_s >= stop then start, stop = period(now_s, v[a + 3], v[a + 5], v[a + 6]) end
    sets[p] = {kind = 1, cost = cost, shadow = shadow, debit = debit, qm = qm, start = start, sstart = str(start),
      stop = stop, bound = v[a + 4]}
    a = a + 9
  end
end

-- Tables are made at their size where it is known: one grown from empty
-- is rehashed at every power of two, which costs the script more than
-- anything else it does with tables. The requests' part of ARGV[2] (from
-- a) holds as many values as their answers: unpack copies it into a new
-- table's array part at once, as filler (up to a few thousand: its
-- values live on Lua's stack; a table grows past that as usual).
local fill = #v
if fill > a + 4000 then fill = a + 4000 end

-- The answers, packed at the end: now_s, now_us, then each request's.
local out, o = {now_s, now % 1000000, unpack(v, a, fill)}, 2

-- A request's limits: their parameter sets (whose start is the period
-- each counts in, but in a give-back's first pass), state keys (a
-- ledger's window), stored state, the state each leaves when it takes,
-- and whether each is ok. The tables are reused by every request of the
-- batch (only entries 1..n of the current one are read), made with room
-- for eight limits. Limit i's answer is out[req + i], after its
-- request's denied index, out[req].
local ls, keys, stored, nexts, oks = {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0},
  {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0}
local req = 0

-- eval decides limit i from state cur (nil: none), taking cost c; it
-- writes the limit's answer and the state it leaves when it takes
-- (nexts[i]). A check that takes nothing needs a unit left. A debit that
-- does not fit is over, and taken all the same. (Local.go's evalBucket
-- and evalQuota say why.)
local function eval(i, c, cur)
  local s = ls[i]
  local kind = s.kind
  local need = c
  if need < 1 then need = 1 end
  local ok, nxt, ans
  if kind == 0 then
    local interval, tolerance = s.interval, s.tolerance
    local tat, debt = cur or now, false
    if tat < 0 then tat, debt = -tat, true end
    if tat < now then tat = now end
    -- beyond the tolerance without debt: a lowered limit's state
    if not debt and tat > now + tolerance then tat = now + tolerance end
    local ahead = tat - now
    ans = ahead
    if debt then ans = -1 - ahead end
    if need * interval <= tolerance - ahead then
      ok, nxt = 1, tat + c * interval
    elseif s.debit == 0 or c == 0 then
      ok, nxt = 0, cur
    else
      -- a debit: into debt
      nxt = now + max_ahead
      if c * interval <= max_ahead - ahead then nxt = tat + c * interval end
      ok = 0
      if nxt - now > tolerance then nxt = -nxt end
    end
  elseif kind == 2 then
    ok, nxt = 1, (cur or 0) + c
    ans = nxt
  else
    local had, bound = cur or 0, s.bound
    nxt = had + c
    if nxt > max_count then nxt = max_count end
    ok, ans = 1, had
    if bound < 0 or had + need <= bound then
    elseif s.debit == 1 and c > 0 then
      ok = 0
    else
      ok, nxt = 0, had
    end
  end
  oks[i], nexts[i] = ok, nxt
  out[req + i] = ans
end

-- Whether two limits of the current request name one key.
local repeats = false

-- last_debit is what the last debit of the request before index e on
-- limit i's state leaves, or the stored state.
local function last_debit(i, e)
  if not repeats then return stored[i] end
  for j = e - 1, 1, -1 do
    if keys[j] == keys[i] and ls[j].start == ls[i].start and ls[j].debit == 1 then return nexts[j] end
  end
  return stored[i]
end

-- The state this call has read or taken, by key (a ledger's by window):
-- requests of a batch that share a key (a busy consumer, a global
-- descriptor) read it once and write it once, when the batch is decided.
-- The script runs atomically, so nobody can tell the difference.
local seen, seen_start = {}, {} -- key -> value (false: none), a quota's period start
local expiry_start, marked = {}, {} -- a quota key -> the period its stored expiry is for, its t as read
local dirty, nd = {}, 0         -- keys to write, in the order first taken
local dirty_set = {}            -- key -> the parameter set that took it last
-- A decision never depends on a ledger window's units (a ledger always
-- allows: its used counts, it bounds nothing), so deciding does not read
-- them. It counts from zero (seen[window] is relative: what the call
-- took), and learns the units the window had before the call
-- (window_base) when it writes: the flush's HINCRBY answers the new
-- total. A window nobody took (its requests were all denied) is read
-- then, with an HGET. The answers' useds are then made absolute. A
-- give-back reads the units first: what it may return depends on them.
local relative = ARGV[3] == nil
local window_base = {}
local patches, np = {}, 0 -- where out has a ledger's relative used, and its window: pairs

-- Every bucket of the batch, read at once: one MGET (its keys share a
-- hash slot in a cluster) instead of a GET per bucket, a redis.call
-- fewer per decision.
for first = 1, v[3], 1000 do -- unpack's arguments live on Lua's stack: a few at a time
  local last = first + 999
  if last > v[3] then last = v[3] end
  local got = call("MGET", unpack(KEYS, first, last))
  for j = first, last do
    local x = got[j - first + 1]
    seen[KEYS[j]] = x and tonumber(x)
  end
end

-- parse reads limit i's reference (key and parameter set) and its stored
-- state for the period starting at start (default: the current one).
local function parse(i, ref, start)
  local p = ref % 1048576
  local key = KEYS[(ref - p) / 1048576 + 1]
  local s = sets[p + 1]
  local kind = s.kind
  local sstart = s.sstart
  if start and start ~= s.start then sstart = str(start) else start = s.start end
  ls[i] = s
  if kind == 0 then
    keys[i] = key
    stored[i] = seen[key] or nil
    return
  end
  if kind == 2 then
    local w = key .. ":" .. sstart
    keys[i] = w
    local u = seen[w]
    if relative then
      if u == nil then
        u = 0
        seen[w] = 0
      end
      patches[np + 1], patches[np + 2] = req + i, w
      np = np + 2
    elseif u == nil then
      u = call("HGET", w, "u")
      u = u and tonumber(u)
      seen[w] = u
    end
    stored[i] = u or nil
    return
  end
  keys[i] = key
  if seen[key] == nil then
    local h = call("HMGET", key, "s", "v", "t")
    local st = h[1]
    -- mostly the period's start as this script writes it: no strtod then
    if st == sstart then st = start elseif st then st = tonumber(st) end
    seen_start[key] = st
    seen[key] = h[2] and tonumber(h[2]) or false
    -- the period the stored expiry was set for (none known: t is set,
    -- a settlement made the key and its expiry is a placeholder)
    if h[3] then marked[key] = true else expiry_start[key] = st end
  end
  if seen_start[key] == start then
    stored[i] = seen[key] or nil
  else
    stored[i] = nil
  end
end

-- take records what limit i took; flush writes it.
local function take(i)
  local s = ls[i]
  local kind = s.kind
  -- A ledger window is opened even at no cost: a route that costs
  -- nothing at admission may be settled later with the units its
  -- upstream reports, and settlement applies only to a window admission
  -- opened.
  if s.cost <= 0 and kind ~= 2 then return end
  local key = keys[i]
  if dirty_set[key] == nil then
    nd = nd + 1
    dirty[nd] = key
  end
  dirty_set[key] = s
  seen[key] = nexts[i]
  if kind == 1 then seen_start[key] = s.start end
end

-- set_bucket writes a bucket's state, kept until it is full again.
local function set_bucket(key, value)
  local tat = value
  if tat < 0 then tat = -tat end
  call("SET", key, fmt("%d", value), "PX", str(floor((tat - now) / 1000) + 1 + ttl_extra))
end

-- flush writes every state the batch took, in the period of the set that
-- took it last.
local function flush()
  for j = 1, nd do
    local key = dirty[j]
    local s, value = dirty_set[key], seen[key]
    local kind = s.kind
    if kind == 0 then
      set_bucket(key, value)
    elseif kind == 2 then
      -- value counts from zero: it is what the call took
      local total = call("HINCRBY", key, "u", str(value))
      window_base[key] = total - value
      if total == value then
        -- the window's first units: record its size and index it (all
        -- idempotent, so a window settled down to zero may do it again)
        -- (the ledger's key: the window's, cut before its start)
        local start = s.start
        local idx = string.sub(key, 1, -#str(start) - 2)
        local st = str(start)
        call("HSETNX", key, "z", str(s.size))
        call("ZADD", idx, st, st)
        -- and the consumer's list of ledgers knows the ledger
        -- (keyspace.LedgersOf: the ledger key cut after its hash tag)
        call("SADD", string.sub(idx, 1, string.find(idx, "}:ledger:", 1, true)) .. ":ledgers", idx)
      end
    else
      -- kept a day past the period's end, relative to the decision's
      -- clock: set when the period starts (or the key comes to be), not
      -- by every decision, which saves one command of about seven. Its
      -- stored start is the period's while its expiry is (as read).
      local start = s.start
      if expiry_start[key] == start then
        call("HSET", key, "v", fmt("%d", value))
      else
        call("HSET", key, "s", s.sstart, "v", fmt("%d", value))
        if marked[key] then call("HDEL", key, "t") end
        call("PEXPIRE", key, fmt("%d", floor((s.stop * 1000000 - now) / 1000) + 86400000))
        expiry_start[key] = start
      end
    end
  end
end

-- give_back returns what the request's n limits (references from v[a])
-- took: each limit's cost, in the period the decision counted it in
-- (decided[i]; this call's clock may be in the next one), then answers
-- each as a check.
local function give_back(n, decided)
  for i = 1, n do
    local ref = v[a + i - 1]
    local s = sets[ref % 1048576 + 1]
    local kind = s.kind
    if kind == 0 then parse(i, ref) else parse(i, ref, decided[i]) end
    local c, key, cur = s.cost, keys[i], stored[i]
    if c > 0 and cur then
      if kind == 0 then
        local tat = cur
        if tat < 0 then tat = -tat end
        tat = tat - c * s.interval
        if tat > now then
          if tat - now > s.tolerance then tat = -tat end
          set_bucket(key, tat)
          seen[key] = tat
        else
          call("DEL", key)
          seen[key] = false
        end
      elseif cur >= c then
        local field = "v"
        if kind == 2 then field = "u" end
        call("HINCRBY", key, field, str(-c))
        seen[key] = cur - c
      end
    end
  end
  for i = 1, n do
    parse(i, v[a + i - 1])
    eval(i, 0, stored[i])
  end
end

-- Each request: debits first (they are spent already, so the request's
-- checks see them), then the others in order, each against what the last
-- limit before it on the same state leaves, counting only limits that
-- take, else the stored state with the request's debits on it. Then the
-- denial: the first limit over and enforced, where a quota-mode limit
-- that is over denies only when the whole quota-mode group is (and then
-- the group's first does). Without debits in the batch (the common case)
-- each request takes one pass.
local decided = not relative and cmsgpack.unpack(ARGV[3])
for _ = 1, v[1] do
  local n = v[a]
  local r = n % 2
  n, repeats = (n - r) / 2, r == 1
  a = a + 1
  req = o + 1 -- out[req]: the request's denied index; its limits' answers follow
  o = req + n
  out[req] = 0
  local denied = 0
  if decided then
    give_back(n, decided)
  else
    local debits = false
    for i = 1, n do
      parse(i, v[a + i - 1])
      if any_debit and ls[i].debit == 1 then debits = true end
    end
    if debits then
      for i = 1, n do
        local s = ls[i]
        if s.debit == 1 then eval(i, s.cost, last_debit(i, i)) end
      end
    end
    local qm_first, qm_open = 0, false
    local plain = not debits and not repeats -- each limit against its stored state
    for i = 1, n do
      local s = ls[i]
      if plain then
        eval(i, s.cost, stored[i])
      elseif not debits or s.debit == 0 then
        local cur, hit = nil, false
        if repeats then
          for j = i - 1, 1, -1 do
            if keys[j] == keys[i] and ls[j].start == s.start and oks[j] == 1 and (not debits or ls[j].debit == 0) then
              cur, hit = nexts[j], true
              break
            end
          end
        end
        if not hit then
          if debits then cur = last_debit(i, n + 1) else cur = stored[i] end
        end
        eval(i, s.cost, cur)
      end
      if oks[i] == 0 then
        if s.shadow == 0 then
          if s.qm == 0 then
            if denied == 0 then denied = i end
          elseif qm_first == 0 then
            qm_first = i
          end
        end
      elseif any_qm and s.qm == 1 then
        qm_open = true
      end
    end
    if qm_first > 0 and not qm_open and (denied == 0 or qm_first < denied) then denied = qm_first end
    -- Take in the order evaluated (the last take of a state is what the
    -- request leaves): debits always, the others when allowed.
    if debits then
      for i = 1, n do
        if ls[i].debit == 1 then take(i) end
      end
    end
    if denied > 0 then
      -- Report what the other limits have left.
      for i = 1, n do
        if oks[i] == 1 and (not debits or ls[i].debit == 0) then
          if debits then eval(i, 0, last_debit(i, n + 1)) else eval(i, 0, stored[i]) end
        end
      end
    else
      for i = 1, n do
        if oks[i] == 1 and (not debits or ls[i].debit == 0) then take(i) end
      end
    end
  end
  out[req] = denied
  a = a + n
end
flush()
-- the ledgers' used, made absolute
for j = 1, np, 2 do
  local slot, w = patches[j], patches[j + 1]
  local base = window_base[w]
  if base == nil then
    base = tonumber(call("HGET", w, "u") or "0")
    window_base[w] = base
  end
  out[slot] = out[slot] + base
end
return cmsgpack.pack(out)
