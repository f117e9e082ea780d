-- One breaker step, applied atomically: a line-for-line port of resilience_crm/breakers/machine.py's
-- ``step`` and its helpers (Lua 5.1 + cjson, as Redis runs it). Keep the two in lockstep:
-- tests/test_redis_store.py drives both with the same inputs and compares every result and
-- every stored state.
--
-- KEYS[1]  the circuit's state key; its value is the state as one JSON string
-- ARGV[1]  config JSON (core.Config.as_step_config(): integer ms times)
-- ARGV[2]  rand, a float in [0, 1) for the backoff jitter
-- ARGV[3]  entries JSON: [[generation, outcome, count, permit_id], ...]
-- ARGV[4]  op: "acquire", "set", "config", or "" for a read-only step (core's None)
-- ARGV[5]  arg JSON ("{}" when there is none)
-- ARGV[6]  now in ms, FOR TESTS ONLY; "" (the normal case) takes the time from Redis TIME
-- ARGV[7]  the key's time to live in ms, refreshed on every step ("" for 7 days)
-- ARGV[8]  "1": when the key is missing, change nothing and answer {"missing": true}
-- ARGV[9]  seed JSON: the state to start from when the key is missing ("" for a new state)
--
-- Returns core.step's result dict as a JSON string. cjson encodes an empty table as {}: the
-- caller turns an empty ``transitions`` back into a list. Numbers are encoded with 14
-- significant digits, enough for 13-digit millisecond timestamps.

-- Redis < 5 needs this before a write that follows TIME; later versions always replicate
-- effects and keep it as a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local CLOSED = 'closed'
local OPEN = 'open'
local HALF_OPEN = 'half_open'
local FORCED_OPEN = 'forced_open'
local FORCED_CLOSED = 'forced_closed'
local DISABLED = 'disabled'
local METRICS_ONLY = 'metrics_only'
local FORCEABLE = {[FORCED_OPEN] = true, [FORCED_CLOSED] = true, [DISABLED] = true,
                   [METRICS_ONLY] = true}
local PASSING = {[CLOSED] = true, [FORCED_CLOSED] = true, [DISABLED] = true,
                 [METRICS_ONLY] = true}
local COUNTING = {[CLOSED] = true, [FORCED_CLOSED] = true, [METRICS_ONLY] = true}

local SLOW = 'slow'
local FAILURE = 'failure'

local BUCKETS = 10
local MAX_BACKOFF_DOUBLINGS = 30
local DEFAULT_TTL_MS = 7 * 24 * 3600 * 1000

-- Python truthiness of a decoded JSON value (for ``x or default`` and ``if permit``).
local function truthy(value)
  return value ~= nil and value ~= false and value ~= cjson.null and value ~= '' and value ~= 0
end

-- Python's ``int(value or 0)``: truncates toward zero.
local function to_int(value)
  if not truthy(value) then
    return 0
  end
  local number = tonumber(value)
  if number >= 0 then
    return math.floor(number)
  end
  return math.ceil(number)
end

local function new_state()
  return {
    state = CLOSED,
    gen = 0,
    opened_at = 0,
    ['until'] = 0,
    opens = 0,
    consec = 0,
    hs = 0,
    permits = {},
    buckets = {},
    reason = '',
    actor = '',
    cv = 0,
    cfg = '',
  }
end

-- core._count
local function count(st, cfg, now, outcome, n)
  local width = math.max(1, math.floor(cfg.window_ms / BUCKETS))
  local index = math.floor(now / width)
  local slot = string.format('%d', index % BUCKETS)
  local bucket = st.buckets[slot]
  if bucket == nil or bucket[1] ~= index then
    bucket = {index, 0, 0, 0}
    st.buckets[slot] = bucket
  end
  bucket[2] = bucket[2] + n
  if outcome == FAILURE then
    bucket[3] = bucket[3] + n
    st.consec = st.consec + n
  else
    st.consec = 0
    if outcome == SLOW then
      bucket[4] = bucket[4] + n
    end
  end
end

-- core._totals
local function totals(st, cfg, now)
  local width = math.max(1, math.floor(cfg.window_ms / BUCKETS))
  local oldest = math.floor(now / width) - BUCKETS
  local calls, failures, slow = 0, 0, 0
  for _, bucket in pairs(st.buckets) do
    if bucket[1] > oldest then
      calls = calls + bucket[2]
      failures = failures + bucket[3]
      slow = slow + bucket[4]
    end
  end
  return calls, failures, slow
end

-- core._trip_reason
local function trip_reason(st, cfg, now)
  if cfg.failure_threshold > 0 and st.consec >= cfg.failure_threshold then
    return 'consecutive_failures'
  end
  local calls, failures, slow = totals(st, cfg, now)
  if calls > 0 and calls >= cfg.minimum_calls then
    if cfg.failure_rate_threshold > 0 and failures / calls >= cfg.failure_rate_threshold then
      return 'failure_rate'
    end
    if cfg.slow_call_rate_threshold > 0 and slow / calls >= cfg.slow_call_rate_threshold then
      return 'slow_calls'
    end
  end
  return ''
end

-- core._transition
local function transition(st, to, now, reason)
  local change = {from = st.state, to = to, gen = st.gen + 1, reason = reason, at = now,
                  actor = ''}
  st.state = to
  st.gen = st.gen + 1
  st.reason = reason
  st.actor = ''
  st['until'] = 0
  return change
end

-- core._open
local function open(st, cfg, now, rand, reason)
  local change = transition(st, OPEN, now, reason)
  st.opens = st.opens + 1
  if change.from ~= HALF_OPEN then
    st.opened_at = now
  end
  local doublings = math.min(st.opens - 1, MAX_BACKOFF_DOUBLINGS)
  local base = math.min(cfg.reset_ms * 2 ^ doublings, cfg.max_reset_ms)
  local duration = math.min(math.floor(base * (0.9 + 0.2 * rand)), cfg.max_reset_ms)
  st['until'] = now + math.max(1, duration)
  st.permits = {}
  st.hs = 0
  return change
end

-- core._close
local function close(st, now, reason)
  local change = transition(st, CLOSED, now, reason)
  st.opens = 0
  st.consec = 0
  st.hs = 0
  st.permits = {}
  st.buckets = {}
  return change
end

-- core.step
local key = KEYS[1]
local cfg = cjson.decode(ARGV[1])
local rand = tonumber(ARGV[2])
local entries = cjson.decode(ARGV[3])
local op = ARGV[4]
local arg = cjson.decode(ARGV[5])

local now
if ARGV[6] ~= nil and ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local ttl_ms = DEFAULT_TTL_MS
if ARGV[7] ~= nil and ARGV[7] ~= '' then
  ttl_ms = tonumber(ARGV[7])
end

local raw = redis.call('GET', key)
local st
if raw then
  st = cjson.decode(raw)
elseif ARGV[9] ~= nil and ARGV[9] ~= '' then
  -- The circuit's state was lost (eviction, restart, flush): go on from the durable record.
  st = new_state()
  for field, value in pairs(cjson.decode(ARGV[9])) do
    st[field] = value
  end
elseif ARGV[8] == '1' then
  return cjson.encode({missing = true})
else
  st = new_state()
end

local transitions = {}
local counted = 0
for _, entry in ipairs(entries) do
  local gen, outcome, n, permit = entry[1], entry[2], entry[3], entry[4]
  if gen == st.gen then
    counted = counted + n
    if COUNTING[st.state] then
      count(st, cfg, now, outcome, n)
      if st.state == CLOSED then
        local reason = trip_reason(st, cfg, now)
        if reason ~= '' then
          transitions[#transitions + 1] = open(st, cfg, now, rand, reason)
        end
      end
    elseif st.state == HALF_OPEN and truthy(permit) and st.permits[permit] ~= nil then
      st.permits[permit] = nil
      if outcome == FAILURE then
        transitions[#transitions + 1] = open(st, cfg, now, rand, 'trial_failed')
      else
        st.hs = st.hs + 1
        if st.hs >= cfg.success_threshold then
          transitions[#transitions + 1] = close(st, now, 'trial_succeeded')
        end
      end
    end
  end
end

local result = {allowed = false, permit = '', retry_after = 0}
if st.state ~= CLOSED and st['until'] > 0 and now >= st['until'] then
  if st.state == OPEN then
    transitions[#transitions + 1] = transition(st, HALF_OPEN, now, 'reset_timeout')
    st.hs = 0
    st.permits = {}
  elseif FORCEABLE[st.state] then
    transitions[#transitions + 1] = close(st, now, 'forced_state_expired')
  end
end

if op == 'acquire' then
  local state = st.state
  if PASSING[state] then
    result.allowed = true
  elseif state == HALF_OPEN then
    local permits = st.permits
    local expired = {}
    for pid, expiry in pairs(permits) do
      if expiry <= now then
        expired[#expired + 1] = pid
      end
    end
    for _, pid in ipairs(expired) do
      permits[pid] = nil
    end
    local held = 0
    local earliest = nil
    for _, expiry in pairs(permits) do
      held = held + 1
      if earliest == nil or expiry < earliest then
        earliest = expiry
      end
    end
    if st.hs + held < cfg.half_open_max_calls then
      permits[arg.permit] = now + cfg.permit_lease_ms
      result.allowed = true
      result.permit = arg.permit
    elseif earliest ~= nil then
      result.retry_after = earliest - now
    else
      result.retry_after = 0
    end
  elseif st['until'] > 0 then
    result.retry_after = st['until'] - now
  end
elseif op == 'set' then
  local target = arg.state
  local change
  if target == CLOSED then
    change = close(st, now, truthy(arg.reason) and arg.reason or 'reset')
  else
    change = transition(st, target, now, truthy(arg.reason) and arg.reason or 'forced')
    st['until'] = to_int(arg['until'])
    if target == FORCED_OPEN then
      st.opened_at = now
    end
  end
  transitions[#transitions + 1] = change
  st.actor = truthy(arg.actor) and arg.actor or ''
  change.actor = st.actor
elseif op == 'config' then
  st.cfg = arg.config
  st.cv = (st.cv or 0) + 1
end

local calls, failures, slow = totals(st, cfg, now)
result.state = st.state
result.gen = st.gen
result['until'] = st['until']
result.opened_at = st.opened_at
result.now = now
result.calls = calls
result.failures = failures
result.slow = slow
result.counted = counted
result.transitions = transitions
result.cv = st.cv or 0
result.cfg = st.cfg or ''

redis.call('SET', key, cjson.encode(st), 'PX', ttl_ms)
return cjson.encode(result)
