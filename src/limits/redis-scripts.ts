/**
 * The Lua scripts of the Redis store. Each runs atomically in Redis, so a check and the write it allows
 * can never interleave with another replica's (no read-then-write race). Time is Redis's own clock
 * (TIME), so replicas with skewed clocks still agree on lease expiry and refill.
 *
 * Slot keys share the `{slots}` hash tag: on Redis Cluster a script may only touch keys of one hash slot.
 *   <prefix>{slots}:replicas     ZSET  replica id -> lease expiry (ms)
 *   <prefix>{slots}:c:<counter>  HASH  replica id -> slots this replica holds in that counter
 *   <prefix>{slots}:r:<replica>  SET   the counters a replica holds slots in (to free them when it dies)
 * A counter's count is the sum over live replicas only, so a dead replica's slots stop counting the moment
 * its lease expires, before anyone deletes them.
 */

/** Redis 7 replicates scripts by effects; 5 and 6 must be told to before a write follows TIME. */
const NOW = `
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/**
 * KEYS: replicas, this replica's set, then one counter per cap. ARGV: replica id, then each counter's cap.
 * Returns {1, count...} (counts after taking), {0, i} (counter i is full), or {-1} (this replica's lease is
 * gone: it must write its live slots back before it takes more).
 */
export const ACQUIRE = `${NOW}
local me = ARGV[1]
local mine = redis.call('ZSCORE', KEYS[1], me)
if not mine or tonumber(mine) < now then return {-1} end
local counts = {}
for i = 3, #KEYS do
  local key = KEYS[i]
  local fields = redis.call('HGETALL', key)
  local sum = 0
  for j = 1, #fields, 2 do
    local lease = redis.call('ZSCORE', KEYS[1], fields[j])
    if lease and tonumber(lease) >= now then
      sum = sum + tonumber(fields[j + 1])
    else
      redis.call('HDEL', key, fields[j])
    end
  end
  if sum >= tonumber(ARGV[i - 1]) then return {0, i - 2} end
  counts[#counts + 1] = sum + 1
end
for i = 3, #KEYS do
  redis.call('HINCRBY', KEYS[i], me, 1)
  redis.call('SADD', KEYS[2], KEYS[i])
end
table.insert(counts, 1, 1)
return counts
`;

/**
 * KEYS: this replica's set, then the counters of one lease. ARGV: replica id. A slot already freed (the
 * lease expired, or reconciliation rewrote it) is not freed twice: counts never go below zero.
 */
export const RELEASE = `
local me = ARGV[1]
for i = 2, #KEYS do
  local held = tonumber(redis.call('HGET', KEYS[i], me) or '0')
  if held <= 1 then
    redis.call('HDEL', KEYS[i], me)
    redis.call('SREM', KEYS[1], KEYS[i])
  else
    redis.call('HINCRBY', KEYS[i], me, -1)
  end
end
return 1
`;

/**
 * Frees the slots of up to 16 replicas whose lease expired; their set names the counters to clean.
 * ARGV[1] is the key of a replica's set without its id.
 */
const REAP = `
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 16)
for _, id in ipairs(dead) do
  local set = ARGV[1] .. id
  for _, counter in ipairs(redis.call('SMEMBERS', set)) do redis.call('HDEL', counter, id) end
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[1], id)
end
`;

/**
 * KEYS: replicas. ARGV: set key prefix, replica id, lease ttl (ms). Extends this replica's lease and reaps
 * dead replicas. Returns 1, or 0 when the lease was already gone (the replica must reconcile).
 */
export const RENEW = `${NOW}
local mine = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not mine or tonumber(mine) < now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
${REAP}
return 1
`;

/**
 * KEYS: replicas, this replica's set. ARGV: set key prefix, replica id, lease ttl (ms), then counter/count
 * pairs: the slots this replica really holds. Replaces whatever Redis had for it (stale after an outage, or
 * lost with a restarted Redis) and starts a new lease.
 */
export const RECONCILE = `${NOW}
local me = ARGV[2]
for _, counter in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('HDEL', counter, me) end
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 2 do
  redis.call('HSET', ARGV[i], me, ARGV[i + 1])
  redis.call('SADD', KEYS[2], ARGV[i])
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), me)
${REAP}
return 1
`;

/**
 * KEYS: replicas, this replica's set. ARGV: replica id. A replica leaving on purpose gives back its slots
 * at once instead of after leaseTtl.
 */
export const RESIGN = `
for _, counter in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('HDEL', counter, ARGV[1]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
`;

/**
 * GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): KEYS: the bucket. ARGV:
 * emission interval (ms per token), burst. Returns 0 when a token was taken, else the ms until one is due.
 */
export const TAKE_ONE = `${NOW}
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allowAt = tat + interval - interval * tonumber(ARGV[2])
if now < allowAt then return math.ceil(allowAt - now) end
redis.call('SET', KEYS[1], string.format('%.3f', tat + interval), 'PX', math.ceil(tat + interval - now) + 1)
return 0
`;

/**
 * Message tokens for one replica (limits.messages per user or ip): KEYS: the bucket (HASH tokens, at).
 * ARGV: tokens already used on credit, tokens wanted in advance, tokens per ms, burst. The used tokens are
 * always subtracted, so the bucket may go below zero: that debt is what the replicas overshot, and it
 * delays the next tokens. Of the wanted ones, only whole tokens the bucket has are granted.
 * Returns {granted, tokens left as text, ms until one token is there}.
 */
export const LEASE = `${NOW}
local perMs = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
if now > at then tokens = math.min(burst, tokens + (now - at) * perMs) end
tokens = tokens - tonumber(ARGV[1])
local granted = 0
if tokens >= 1 then granted = math.min(tonumber(ARGV[2]), math.floor(tokens)) end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / perMs) + 1000)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) / perMs) end
return {granted, string.format('%.6f', tokens), wait}
`;
