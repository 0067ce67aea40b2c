"""Lua scripts of the Redis store: each read-modify-write is one ``EVALSHA``, so it is atomic across instances.

They mirror :func:`stormguard.scoring.reputation.apply_op` and :func:`~stormguard.scoring.reputation.rank`
line by line; numbers travel as ``%.17g`` strings so no precision is lost between Python, Lua and Redis.

Key layout per hash tag ``{tag}`` (one slot in Redis Cluster, so every key a script touches is in one slot):
``{tag}:k:<client>`` hash (s score, t time of s, b last bad, u block until, r reasons joined by \\x1f),
``{tag}:z`` sorted set of rank (see ``rank``), ``{tag}:x`` sorted set of expected expiry, used to drop members of
``:z`` whose hash has expired (a few per write, so the set stays bounded without a sweeper).
"""

from __future__ import annotations

_COMMON = r"""
local function fmt(v) return string.format('%.17g', v) end
local function rank(s, t0, lam)
  if s > -1e-12 and s < 1e-12 then return 0 end
  local inner = math.log(math.abs(s)) + lam * t0 + 30.0
  if s > 0 then return inner else return -inner end
end
local function life(s, t, u, lam, idle)
  local l = idle
  local a = math.abs(s)
  if lam > 0 and a > 0.5 then
    local d = math.log(a / 0.5) / lam
    if d > l then l = d end
  end
  if u - t > l then l = u - t end
  return math.ceil(l)
end
local function sweep(z, x, hprefix, member, now)
  local old = redis.call('ZRANGEBYSCORE', x, '-inf', now, 'LIMIT', 0, 4)
  for _, m in ipairs(old) do
    if m ~= member then
      local pttl = redis.call('PTTL', hprefix .. m)
      if pttl < 0 then
        redis.call('ZREM', z, m)
        redis.call('ZREM', x, m)
      else
        redis.call('ZADD', x, now + pttl / 1000.0, m)
      end
    end
  end
end
"""

_APPLY = r"""
local function apply(h, z, x, member, now, op, val, reason, lam, bscore, bsec, maxr, idle, init)
  local cur = redis.call('HMGET', h, 's', 't', 'b', 'u', 'r')
  local s = tonumber(cur[1])
  local t0 = tonumber(cur[2])
  if s == nil then
    s = math.max(-100, math.min(100, init))
    t0 = now
  end
  local lastbad = tonumber(cur[3]) or 0
  local u = tonumber(cur[4]) or 0
  local reasons = cur[5] or ''
  local t = now
  if t0 > t then t = t0 end
  local dt = t - t0
  if dt > 0 and lam ~= 0 and s ~= 0 then s = s * math.exp(-lam * dt) end
  if op == 'add' then
    s = s + val
    if s > 100 then s = 100 elseif s < -100 then s = -100 end
    if val < 0 then lastbad = t end
    if val < 0 and bscore ~= '' and bsec > 0 and s <= tonumber(bscore) + 0.01 then  -- BLOCK_TOLERANCE
      if t + bsec > u then u = t + bsec end
    end
  elseif op == 'set' then
    s = val
    if s > 100 then s = 100 elseif s < -100 then s = -100 end
  elseif op == 'block' then
    u = val
  elseif op == 'unblock' then
    if u <= 0 or u > t then u = t end
  else
    return nil
  end
  if reason ~= '' and maxr > 0 then
    local list = {}
    for r in string.gmatch(reasons, '[^\31]+') do list[#list + 1] = r end
    list[#list + 1] = reason
    while #list > maxr do table.remove(list, 1) end
    reasons = table.concat(list, '\31')
  end
  redis.call('HSET', h, 's', fmt(s), 't', fmt(t), 'b', fmt(lastbad), 'u', fmt(u), 'r', reasons)
  local l = life(s, t, u, lam, idle)
  redis.call('EXPIRE', h, l)
  redis.call('ZADD', z, rank(s, t, lam), member)
  redis.call('ZADD', x, t + l, member)
  return {fmt(s), fmt(t), fmt(lastbad), fmt(u), reasons}
end
"""

# KEYS: hash, zset, expiry zset.  ARGV: member, now, op, value, reason, lam, block_score ('' = none),
# block_seconds, max_reasons, idle_ttl, initial_score, hash key prefix.
UPDATE = _COMMON + _APPLY + r"""
local res = apply(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5],
                  tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
                  tonumber(ARGV[11]))
if res == nil then return redis.error_reply('unknown op ' .. ARGV[3]) end
sweep(KEYS[2], KEYS[3], ARGV[12], ARGV[1], tonumber(ARGV[2]))
return res
"""

# KEYS: zset, expiry zset.  ARGV: now, lam, idle_ttl, reason, max_reasons, hash key prefix, payload.
# payload = "member\30score\30member\30score..." (scores already clamped and formatted by the caller).
# A model's verdict: the same result as one ``set`` update per member, but lean, because it runs a million times
# per load: one HMGET, HSET and EXPIRE per key, no float formatting, one ZADD per sorted set per call, and one
# packed argument instead of three per key (packing arguments is what costs the Python side most). The hash keys
# are derived from the prefix, which carries the same hash tag as KEYS[1], so they live in the declared slot.
LOAD = _COMMON + r"""
local z, x = KEYS[1], KEYS[2]
local nows, lam, idle, reason = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now, maxr, hprefix = tonumber(nows), tonumber(ARGV[5]), ARGV[6]
local zargs, xargs = {}, {}
local n = 0
for member, sval in string.gmatch(ARGV[7], '([^\30]*)\30([^\30]+)\30?') do
  local h = hprefix .. member
  local cur = redis.call('HMGET', h, 't', 'u', 'r')
  local t0 = tonumber(cur[1])
  local u = tonumber(cur[2]) or 0
  local t, ts = now, nows
  if t0 ~= nil and t0 > now then t = t0; ts = fmt(t0) end
  local reasons = reason
  if cur[3] and cur[3] ~= '' and maxr > 0 then
    local list = {}
    for r in string.gmatch(cur[3], '[^\31]+') do list[#list + 1] = r end
    list[#list + 1] = reason
    while #list > maxr do table.remove(list, 1) end
    reasons = table.concat(list, '\31')
  elseif maxr <= 0 then
    reasons = cur[3] or ''
  end
  redis.call('HSET', h, 's', sval, 't', ts, 'r', reasons)
  local s = tonumber(sval)
  local l = life(s, t, u, lam, idle)
  redis.call('EXPIRE', h, l)
  zargs[#zargs + 1] = rank(s, t, lam)
  zargs[#zargs + 1] = member
  xargs[#xargs + 1] = t + l
  xargs[#xargs + 1] = member
  n = n + 1
end
if n > 0 then
  redis.call('ZADD', z, unpack(zargs))
  redis.call('ZADD', x, unpack(xargs))
end
return n
"""

# KEYS: hash, zset, expiry zset.  ARGV: member.  Forget one key everywhere, atomically (also on Cluster).
DELETE = r"""
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""

# KEYS: zset, expiry zset.  ARGV: hash key prefix, members.  Drop ranked members whose hash is gone (``top`` found
# them stale), re-checked here so that an entry written since the caller looked is never unranked (every live hash
# keeps its member in the rank set).
PRUNE = r"""
local n = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""
