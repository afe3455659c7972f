-- Give back what decide.lua took for one request's limits (used when a
-- later hash slot of the same request denied). The KEYS and ARGV of a
-- decide.lua call for that one request (D = 1).
-- Returns decide.lua's shape with every limit marked ok and zeros.
local floor = math.floor
local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- the parameter sets: kind, cost, and a bucket's interval or a ledger's
-- window
local v = cmsgpack.unpack(ARGV[2])
local kinds, costs, vals = {}, {}, {}
local a = 3
for p = 1, v[2] do
  local kind = v[a]
  kinds[p], costs[p] = kind, v[a + 1]
  if kind == 0 then
    vals[p] = v[a + 3]
    a = a + 5
  elseif kind == 2 then
    vals[p] = v[a + 2]
    a = a + 3
  else
    a = a + 9
  end
end
local out = {floor(now / 1000000), now % 1000000, 0}
local n = v[a]
a = a + 1
for _ = 1, n do
  local ref = v[a]
  a = a + 1
  local p = ref % 1048576
  local key = KEYS[(ref - p) / 1048576 + 1]
  p = p + 1
  local kind, cost = kinds[p], costs[p]
  if cost > 0 then
    if kind == 0 then
      local v = redis.call("GET", key)
      if v then
        local tat = tonumber(v) - cost * vals[p]
        if tat > now then
          redis.call("SET", key, string.format("%d", tat), "PX", floor((tat - now) / 1000) + 1)
        else
          redis.call("DEL", key)
        end
      end
    elseif kind == 1 then
      local v = redis.call("HGET", key, "v")
      if v and tonumber(v) >= cost then
        redis.call("HINCRBY", key, "v", -cost)
      end
    elseif kind == 2 then
      local size = vals[p]
      local w = key .. ":" .. (floor(now / 1000000 / size) * size)
      local v = redis.call("HGET", w, "u")
      if v and tonumber(v) >= cost then
        redis.call("HINCRBY", w, "u", -cost)
      end
    end
  end
  -- decide.lua's shape: ok, remaining, reset, retry (and used, overage,
  -- period start for quotas and ledgers)
  local fields = 4
  if kind ~= 0 then fields = 7 end
  out[#out + 1] = 1
  for _ = 2, fields do out[#out + 1] = 0 end
end
return cmsgpack.pack(out)
