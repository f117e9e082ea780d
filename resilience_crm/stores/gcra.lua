-- GCRA over every limit of one request, all or none: a port of resilience_crm.gcra.evaluate.
--
-- KEYS[i]   the TAT key of limit i (one whole number of microseconds, or absent)
-- ARGV[1]   now in microseconds, or "" for the Redis server's clock (TIME)
-- ARGV[2]   cost (whole number of requests)
-- ARGV[3]   every limit, in KEYS order, as "interval tolerance shadow " (microseconds, and
--           1 or 0), all in one string: fewer arguments to send and parse
--
-- Returns one string "allowed conform_1 remaining_1 reset_1 retry_1 ..." (one reply to parse,
-- not an array). A charged key is set to its new TAT and expires when its bucket is full
-- again, so an idle key costs nothing.

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local cost = tonumber(ARGV[2])
local n = #KEYS
local specs = {}
for number in string.gmatch(ARGV[3], "%d+") do specs[#specs + 1] = tonumber(number) end

local tats, new_tats, conforms = {}, {}, {}
local allowed = true
for i = 1, n do
  local interval, tolerance = specs[i * 3 - 2], specs[i * 3 - 1]
  local tat = tonumber(redis.call("GET", KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local conform = new_tat - now <= tolerance
  if not conform and specs[i * 3] == 0 then allowed = false end
  tats[i], new_tats[i], conforms[i] = tat, new_tat, conform
end

-- Durations below stay far under 1e14 us, so Lua's own number format writes them exactly.
local reply = {allowed and 1 or 0}
for i = 1, n do
  local interval, tolerance = specs[i * 3 - 2], specs[i * 3 - 1]
  local tat, new_tat = tats[i], new_tats[i]
  if allowed and conforms[i] then
    redis.call("SET", KEYS[i], string.format("%d", new_tat), "PX",
               math.max(math.ceil((new_tat - now) / 1000), 1))
    reply[#reply + 1] = 1
    reply[#reply + 1] = math.floor((tolerance - (new_tat - now)) / interval)
    reply[#reply + 1] = new_tat - now
    reply[#reply + 1] = 0
  else
    local retry = 0
    if not conforms[i] then retry = new_tat - now - tolerance end
    reply[#reply + 1] = conforms[i] and 1 or 0
    reply[#reply + 1] = math.max(0, math.floor((tolerance - (tat - now)) / interval))
    reply[#reply + 1] = tat - now
    reply[#reply + 1] = retry
  end
end
return table.concat(reply, " ")
