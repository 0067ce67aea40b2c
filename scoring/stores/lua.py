"""Lua scripts of the Redis store: each read-modify-write is one ``EVALSHA``, so it is atomic across instances.

They mirror :func:`stormguard.scoring.reputation.apply_op` and :func:`~stormguard.scoring.reputation.rank`
line by line; numbers travel as ``%.17g`` strings so no precision is lost between Python, Lua and Redis.

Key layout per hash tag ``{tag}`` (one slot in Redis Cluster, so every key a script touches is in one slot):
``{tag}:k:<client>`` hash (s score, t time of s, b last bad, u block until, r reasons joined by \\x1f),
``{tag}:z`` sorted set of rank (see ``rank``), ``{tag}:x`` sorted set of expected expiry, used to drop members of
``:z`` whose hash has expired (a few per write, so the set stays bounded without a sweeper), ``{tag}:b`` sorted
set of block-until for members whose last write left them blocked (the exporters' index: a hash lives at least as
long as its block, so an entry past its score is dropped by whoever lists the blocks; member ``\x1e`` at score 0
keeps the key in existence, as ``:z`` and ``:x`` are, because a multi-key script during a slot migration must find
all of its keys on one side). Every key a script writes
is declared in KEYS, so a slot migration answers ASK/TRYAGAIN before the script runs instead of failing inside it.

A batch load does not give each key an entry in ``:x`` (that insert was a quarter of its cost): per script call it
pushes the call's members to one list ``{tag}:x<token>`` and adds ``<token>`` = ``\\x1e<id>@<now>`` to ``:x``, due
when the last of those keys expires as written. A due token's members are checked like single entries, a few per
write and as many per load call as it loads: gone, unranked; alive and not written since the load (its ``t`` is the
token's ``now``: the clocks differ), an entry of its own at its real expiry; alive and written since, nothing (that
write left its own entry or token). The emptied list goes with its token. Invariant: the latest write of every live
hash has its entry (single or in a list) in ``:x``, so every member whose hash expires is eventually unranked.
"""

from __future__ import annotations

_COMMON = r"""
local function push_reason(old, reason, maxr)
  if reason == '' or maxr <= 0 then return old end
  if old == '' then return reason end
  local list = {}
  for r in string.gmatch(old, '[^\31]+') do list[#list + 1] = r end
  list[#list + 1] = reason
  while #list > maxr do table.remove(list, 1) end
  return table.concat(list, '\31')
end
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
-- One member due in :x. Gone: unranked. Alive: an entry of its own at its real expiry, unless it came from a load's
-- token (written at tnow) and has been written since (t > tnow): then that later write's entry covers it.
local function check(z, x, hprefix, m, now, tnow)
  local h = hprefix .. m
  local pttl = redis.call('PTTL', h)
  if pttl < 0 then
    redis.call('ZREM', z, m)
    redis.call('ZREM', x, m)
  elseif tnow == nil or (tonumber(redis.call('HGET', h, 't')) or 0) <= tnow then
    redis.call('ZADD', x, now + pttl / 1000.0, m)
  end
end
-- Check up to `budget` due members of :x (single entries, or members of due load tokens, see the module docstring).
local function sweep(z, x, hprefix, member, now, budget)
  local old = redis.call('ZRANGEBYSCORE', x, '-inf', now, 'LIMIT', 0, budget)
  for _, m in ipairs(old) do
    if budget <= 0 then break end
    local list = x .. m
    if string.byte(m, 1) == 30 and redis.call('EXISTS', list) == 1 then
      local tnow = tonumber(string.match(m, '@(.*)$'))
      for _, c in ipairs(redis.call('LPOP', list, budget)) do
        if c ~= member then check(z, x, hprefix, c, now, tnow) end
        budget = budget - 1
      end
      if redis.call('EXISTS', list) == 0 then redis.call('ZREM', x, m) end
    else
      if m ~= member then check(z, x, hprefix, m, now, nil) end
      budget = budget - 1
    end
  end
end
"""

_APPLY = r"""
local function apply(h, z, x, b, member, now, op, val, reason, lam, bscore, bsec, maxr, idle, init)
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
  reasons = push_reason(reasons, reason, maxr)
  redis.call('HSET', h, 's', fmt(s), 't', fmt(t), 'b', fmt(lastbad), 'u', fmt(u), 'r', reasons)
  local l = life(s, t, u, lam, idle)
  redis.call('EXPIRE', h, l)
  redis.call('ZADD', z, rank(s, t, lam), member)
  redis.call('ZADD', x, t + l, member)
  if u > t then redis.call('ZADD', b, u, member) else redis.call('ZREM', b, member) end
  redis.call('ZADD', b, 0, '\30')  -- the index always exists, like :z and :x: a slot migration then ASKs for it
  return {fmt(s), fmt(t), fmt(lastbad), fmt(u), reasons}
end
"""

# KEYS: hash, zset, expiry zset, block index.  ARGV: member, now, op, value, reason, lam, block_score ('' = none),
# block_seconds, max_reasons, idle_ttl, initial_score, hash key prefix.
UPDATE = _COMMON + _APPLY + r"""
local res = apply(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5],
                  tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
                  tonumber(ARGV[11]))
if res == nil then return redis.error_reply('unknown op ' .. ARGV[3]) end
sweep(KEYS[2], KEYS[3], ARGV[12], ARGV[1], tonumber(ARGV[2]), 4)
return res
"""

# KEYS: zset, expiry zset.  ARGV: now, lam, idle_ttl, reason, max_reasons, hash key prefix, token, token due, n,
# then three blocks prepared by the caller for the common case (the entry is new or its clock is not ahead of
# ``now``, and its block-until does not outlive the score): 2n arguments "rank, member" ready for ZADD on the rank
# set, n scores (clamped, ``repr``-formatted) and n TTLs (whole seconds); the token due is ``now`` + the longest of
# those TTLs.
# A model's verdict: the same result as one ``set`` update per member, but lean, because it runs a million times
# per load. Per key: one HMGET, HSET and EXPIRE, no parsing, no float formatting, no log; per call one ZADD on the
# rank set straight from ARGV (``unpack``, no table building) and, instead of one expiry entry per key, one list of
# the members plus one token in ``:x`` (see the module docstring). The few keys whose stored state differs from the
# common case (a clock ahead of ``now``, a long block) get rank and TTL recomputed here, exactly as ``apply`` does:
# a second ZADD overrides their prepared ranks and they get expiry entries of their own. The hash keys are derived
# from the prefix, which carries the same hash tag as KEYS[1], so they live in the declared slot.
LOAD = _COMMON + r"""
local z, x = KEYS[1], KEYS[2]
local nows, lam, idle, reason = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now, maxr, hprefix = tonumber(nows), tonumber(ARGV[5]), ARGV[6]
local token, due, n = ARGV[7], ARGV[8], tonumber(ARGV[9])
local zo, so, lo = 9, 9 + 2 * n, 9 + 3 * n
local members = {}
local fz, fx = nil, nil
for i = 1, n do
  local member = ARGV[zo + 2 * i]
  local sval, l = ARGV[so + i], ARGV[lo + i]
  members[i] = member
  local h = hprefix .. member
  local cur = redis.call('HMGET', h, 't', 'u', 'r')
  local ts = nows
  local reasons = push_reason(cur[3] or '', reason, maxr)
  if cur[1] then
    local t0 = tonumber(cur[1])
    local u = tonumber(cur[2]) or 0
    if t0 > now or u - now > tonumber(l) then
      local t = now
      if t0 > now then t = t0; ts = cur[1] end
      local s = tonumber(sval)
      l = life(s, t, u, lam, idle)
      if fz == nil then fz, fx = {}, {} end
      fz[#fz + 1] = rank(s, t, lam)
      fz[#fz + 1] = member
      fx[#fx + 1] = t + l
      fx[#fx + 1] = member
    end
  end
  redis.call('HSET', h, 's', sval, 't', ts, 'r', reasons)
  redis.call('EXPIRE', h, l)
end
if n > 0 then
  redis.call('ZADD', z, unpack(ARGV, zo + 1, zo + 2 * n))
  redis.call('RPUSH', x .. token, unpack(members))
  redis.call('ZADD', x, due, token)
  if fz ~= nil then
    redis.call('ZADD', z, unpack(fz))
    redis.call('ZADD', x, unpack(fx))
  end
  sweep(z, x, hprefix, nil, now, n)  -- loads drain due tokens as fast as they add them, even with no other writes
end
return n
"""

# KEYS: hash, zset, expiry zset, block index.  ARGV: member.  Forget one key everywhere, atomically (also on Cluster).
DELETE = r"""
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
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
