-- Peek's script: reads the state of limits without writing anything (no
-- bucket refilled, no period rolled, no key's TTL touched). The status
-- each limit reports is worked out in Go (peek.go), as Local.Peek does.
--
-- KEYS: the limits' keys, all in one hash slot.
-- ARGV[1]: "" to use TIME, or a test clock in microseconds.
-- ARGV[2], ARGV[3], ...: for each key, its kind (0 bucket, 1 quota,
-- 2 ledger) and a ledger's window size in seconds (0 for the others).
-- Returns, packed as one MessagePack array: now_s, now_us, then two
-- values per key: a bucket's stored state and 0, a quota's period start
-- and count, a ledger's current window start and units (0 for none).
local floor = math.floor
local now
if ARGV[1] ~= "" then
  now = tonumber(ARGV[1])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local now_s = floor(now / 1000000)
local out = {now_s, now % 1000000}
for i, key in ipairs(KEYS) do
  local kind, size = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local a, b = 0, 0
  if kind == 0 then
    a = tonumber(redis.call("GET", key) or "0")
  elseif kind == 1 then
    local h = redis.call("HMGET", key, "s", "v")
    a, b = tonumber(h[1] or "0"), tonumber(h[2] or "0")
  else
    a = floor(now_s / size) * size
    b = tonumber(redis.call("HGET", key .. ":" .. a, "u") or "0")
  end
  out[#out + 1], out[#out + 2] = a, b
end
return cmsgpack.pack(out)
