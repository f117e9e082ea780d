-- GCRA over every limit of one request, all or none: a port of resilience_crm.gcra.evaluate.
--
-- KEYS[i]       the TAT key of limit i (one whole number of microseconds, or absent), i <= n
-- KEYS[n + i]   where limit i keeps when it last refused a request (microseconds), for a day
-- ARGV[1]       now in microseconds, or "" for the Redis server's clock (TIME)
-- ARGV[2]       cost (whole number of requests)
-- ARGV[3i..3i+2] limit i: interval and tolerance (microseconds), then its mode: "0" enforced,
--               "1" shadow (never refuses), "2" checked (refuses, never charged)
--
-- Returns a flat array of integers: allowed (1 or 0), then for each limit conform (1 or 0),
-- remaining, reset and retry (microseconds). Integers cross the wire as they are, with no
-- number formatting on either side. A charged key is set to its new TAT and expires when its
-- bucket is full again, so an idle key costs nothing.

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = t[1] * 1000000 + t[2]
else
  now = tonumber(ARGV[1])
end
local cost = tonumber(ARGV[2])
local n = #KEYS / 2

local tats = {}
local allowed = 1
for i = 1, n do
  local tat = tonumber(redis.call("GET", KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
  if tat + ARGV[i * 3] * cost - now > tonumber(ARGV[i * 3 + 1]) and ARGV[i * 3 + 2] ~= "1" then
    allowed = 0
  end
end

-- Durations stay far under 2^53 us, so every number here is an exact integer.
local reply = {allowed}
for i = 1, n do
  local interval, tolerance = tonumber(ARGV[i * 3]), tonumber(ARGV[i * 3 + 1])
  local tat = tats[i]
  local new_tat = tat + interval * cost
  local at = #reply
  if new_tat - now > tolerance then
    reply[at + 1], reply[at + 2], reply[at + 3], reply[at + 4] =
      0, math.max(0, math.floor((tolerance - (tat - now)) / interval)), tat - now,
      new_tat - now - tolerance
    if ARGV[i * 3 + 2] == "0" then
      redis.call("SET", KEYS[n + i], string.format("%d", now), "PX", 86400000)
    end
  elseif allowed == 1 and ARGV[i * 3 + 2] ~= "2" then
    -- string.format: the TAT is stored as digits, which Redis keeps as a compact integer.
    redis.call("SET", KEYS[i], string.format("%d", new_tat), "PX",
               math.max(math.ceil((new_tat - now) / 1000), 1))
    reply[at + 1], reply[at + 2], reply[at + 3], reply[at + 4] =
      1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now, 0
  else
    reply[at + 1], reply[at + 2], reply[at + 3], reply[at + 4] =
      1, math.max(0, math.floor((tolerance - (tat - now)) / interval)), tat - now, 0
  end
end
return reply
