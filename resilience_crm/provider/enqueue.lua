-- Queue one write unless its idempotency key is already queued: atomically record the key
-- with its payload hash and append the write to the stream.
-- KEYS[1] the key's marker, KEYS[2] the stream.
-- ARGV: payload hash, handler name, idempotency key, payload JSON, entity.
-- Returns the hash already recorded for the key, or false when this call queued the write.
local previous = redis.call('GET', KEYS[1])
if previous then
  return previous
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'name', ARGV[2], 'key', ARGV[3], 'payload', ARGV[4],
           'hash', ARGV[1], 'entity', ARGV[5])
return false
