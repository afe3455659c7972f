-- Give back what decide.lua took for one request's limits (used when a
-- later hash slot of the same request denied). The KEYS and ARGV of a
-- decide.lua call for that one request (ARGV[2] = 1, ARGV[3] = n).
-- Returns decide.lua's shape with every limit marked ok and zeros.
local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local out = {math.floor(now / 1000000), now % 1000000, 0}
local a = 4
for i = 1, #KEYS do
  local kind = tonumber(ARGV[a])
  local cost = tonumber(ARGV[a + 1])
  if cost > 0 then
    if kind == 0 then
      local v = redis.call("GET", KEYS[i])
      if v then
        local tat = tonumber(v) - cost * tonumber(ARGV[a + 3])
        if tat > now then
          redis.call("SET", KEYS[i], string.format("%d", tat), "PX", math.floor((tat - now) / 1000) + 1)
        else
          redis.call("DEL", KEYS[i])
        end
      end
    elseif kind == 1 then
      local v = redis.call("HGET", KEYS[i], "v")
      if v and tonumber(v) >= cost then
        redis.call("HINCRBY", KEYS[i], "v", -cost)
      end
    elseif kind == 2 then
      local size = tonumber(ARGV[a + 2])
      local w = KEYS[i] .. ":" .. (math.floor(now / 1000000 / size) * size)
      local v = redis.call("HGET", w, "u")
      if v and tonumber(v) >= cost then
        redis.call("HINCRBY", w, "u", -cost)
      end
    end
  end
  -- decide.lua's shape: ok, remaining, reset, retry (and used, overage,
  -- period start for quotas and ledgers)
  local fields, step = 4, 5
  if kind == 1 then fields, step = 7, 9 elseif kind == 2 then fields, step = 7, 3 end
  out[#out + 1] = 1
  for _ = 2, fields do out[#out + 1] = 0 end
  a = a + step
end
return out
