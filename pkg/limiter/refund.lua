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
for i = 1, #KEYS do
  local base = 4 + (i - 1) * 10
  local kind = tonumber(ARGV[base])
  local cost = tonumber(ARGV[base + 1])
  if cost > 0 then
    if kind == 0 then
      local v = redis.call("GET", KEYS[i])
      if v then
        local tat = tonumber(v) - cost * tonumber(ARGV[base + 3])
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
      local size = tonumber(ARGV[base + 3])
      local w = KEYS[i] .. ":" .. (math.floor(now / 1000000 / size) * size)
      local v = redis.call("HGET", w, "u")
      if v and tonumber(v) >= cost then
        redis.call("HINCRBY", w, "u", -cost)
      end
    end
  end
  for _ = 1, 8 do table.insert(out, 0) end
  out[#out - 7] = 1
end
return out
