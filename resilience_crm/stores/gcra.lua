-- GCRA over every limit of one request, all or none: a port of resilience_crm.gcra.evaluate.
--
-- KEYS[i]   the TAT key of limit i (one whole number of microseconds, or absent)
-- ARGV[1]   now in microseconds, or "" for the Redis server's clock (TIME)
-- ARGV[2]   cost (whole number of requests)
-- ARGV[2+3i-2 .. 2+3i]  limit i: emission interval (us), tolerance (us), shadow ("1"/"0")
--
-- Returns {allowed, now, conform_1, remaining_1, reset_1, retry_1, ...}; a charged key is set
-- to its new TAT and expires when its bucket is full again, so an idle key costs nothing.

local now
if ARGV[1] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local cost = tonumber(ARGV[2])
local n = #KEYS
local staged = {}
local allowed = true

for i = 1, n do
  local base = 2 + (i - 1) * 3
  local interval = tonumber(ARGV[base + 1])
  local tolerance = tonumber(ARGV[base + 2])
  local shadow = ARGV[base + 3] == "1"
  local stored = redis.call("GET", KEYS[i])
  local tat = now
  if stored then
    stored = tonumber(stored)
    if stored > now then tat = stored end
  end
  local new_tat = tat + interval * cost
  local conform = new_tat - now <= tolerance
  if not conform and not shadow then allowed = false end
  staged[i] = {interval, tolerance, tat, new_tat, conform}
end

local result = {allowed and 1 or 0, now}
for i = 1, n do
  local interval, tolerance, tat, new_tat, conform = unpack(staged[i])
  if allowed and conform then
    local ttl_ms = math.ceil((new_tat - now) / 1000)
    redis.call("SET", KEYS[i], string.format("%d", new_tat), "PX", math.max(ttl_ms, 1))
    result[#result + 1] = 1
    result[#result + 1] = math.floor((tolerance - (new_tat - now)) / interval)
    result[#result + 1] = new_tat - now
    result[#result + 1] = 0
  else
    local retry = 0
    if not conform then retry = new_tat - now - tolerance end
    result[#result + 1] = conform and 1 or 0
    result[#result + 1] = math.max(0, math.floor((tolerance - (tat - now)) / interval))
    result[#result + 1] = tat - now
    result[#result + 1] = retry
  end
end
return result
