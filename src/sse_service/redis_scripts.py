"""The two Lua scripts behind the Redis broker.

Redis runs a script as one step: no other command, on any connection, runs
in the middle.  So ``APPEND`` makes dedupe, store and publish indivisible
(a record is never published without being stored, nor stored twice), and
``REPLAY`` reads epoch, head, the first retained offset and the entries as
one consistent snapshot.

Both scripts take ``KEYS = [meta, log, seen]`` (see :mod:`.redis_keys`) and
share the prelude below.  Offsets are stream ids ``<offset>-0``, so "after
offset N" is ``XRANGE log N+1 +``: no scan.  Ages use the server's clock
(``TIME``), one clock for every replica.
"""

from __future__ import annotations

__all__ = ["APPEND", "REPLAY"]

_PRELUDE = """
local meta, log, seen = KEYS[1], KEYS[2], KEYS[3]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function offset_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The epoch names this incarnation of the history.  Without one, whatever
-- is left of log and seen belongs to a lost epoch (the hash was evicted or
-- deleted) and must go, or its offsets would clash with the new ones.
local function load_epoch(candidate)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then
    return epoch
  end
  redis.call('DEL', log, seen)
  redis.call('HSET', meta, 'epoch', candidate, 'head', 0)
  return candidate
end

-- Drop entries older than the TTL (entries are in time order, so they form
-- a prefix), drop dedupe keys of trimmed entries, return the first
-- retained offset (head + 1 when nothing is retained).
local function trim(ttl_ms, head)
  local cutoff = now_ms() - ttl_ms
  while true do
    local batch = redis.call('XRANGE', log, '-', '+', 'COUNT', 64)
    local keep = nil
    for index, entry in ipairs(batch) do
      -- fields are written as d, <data>, t, <ms>
      if tonumber(entry[2][4]) >= cutoff then
        keep = index
        break
      end
    end
    if keep then
      if keep > 1 then
        redis.call('XTRIM', log, 'MINID', batch[keep][1])
      end
      break
    end
    if #batch == 0 then
      break
    end
    redis.call('XTRIM', log, 'MINID', offset_of(batch[#batch][1]) + 1)
  end
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
  local first_offset = head + 1
  if #first == 1 then
    first_offset = offset_of(first[1][1])
  end
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. first_offset)
  return first_offset
end
"""

#: ARGV: candidate epoch, dedupe key, data, history size, ttl ms, key ttl ms,
#: meta ttl ms, channel.  Returns ``{epoch, offset, duplicate, data}``
#: (``data`` only for a duplicate: the stored record's).
APPEND = _PRELUDE + """
local key, data = ARGV[2], ARGV[3]
local size, ttl_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch = load_epoch(ARGV[1])
local head = tonumber(redis.call('HGET', meta, 'head')) or 0
trim(ttl_ms, head)

local known = redis.call('ZSCORE', seen, key)
if known then
  local entry = redis.call('XRANGE', log, known, known)
  if #entry == 1 then
    return {epoch, known, 1, entry[1][2][2]}
  end
end

head = redis.call('HINCRBY', meta, 'head', 1)
redis.call('XADD', log, 'MAXLEN', size, head .. '-0', 'd', data, 't', now_ms())
redis.call('ZADD', seen, head, key)
redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. (head - size + 1))
redis.call('PEXPIRE', log, ARGV[6])
redis.call('PEXPIRE', seen, ARGV[6])
redis.call('PEXPIRE', meta, ARGV[7])

-- Sharded pub/sub (Redis 7+) keeps a message on the node of its slot;
-- older servers only have the broadcast kind.
local message = epoch .. ' ' .. head .. ' ' .. data
if redis.REDIS_VERSION_NUM and redis.REDIS_VERSION_NUM >= 0x070000 then
  redis.call('SPUBLISH', ARGV[8], message)
else
  redis.call('PUBLISH', ARGV[8], message)
end
return {epoch, head, 0}
"""

#: ARGV: candidate epoch, after epoch ('' for "from now"), after offset,
#: ttl ms, meta ttl ms.  Returns ``{epoch, head, resync, offset1, data1, ...}``
#: with ``resync`` '' when the replay is honoured.
REPLAY = _PRELUDE + """
local epoch = load_epoch(ARGV[1])
-- A reader keeps the epoch alive: its position stays meaningful while it
-- keeps coming back, even when no event arrives for a long time.
redis.call('PEXPIRE', meta, ARGV[5])
local head = tonumber(redis.call('HGET', meta, 'head')) or 0
local first = trim(tonumber(ARGV[4]), head)

if ARGV[2] == '' then
  return {epoch, head, ''}
end
if ARGV[2] ~= epoch then
  return {epoch, head, 'unknown_epoch'}
end
local after = tonumber(ARGV[3])
if after > head then
  return {epoch, head, 'unknown_position'}
end
if after < first - 1 then
  return {epoch, head, 'expired'}
end

local reply = {epoch, head, ''}
for _, entry in ipairs(redis.call('XRANGE', log, after + 1, '+')) do
  reply[#reply + 1] = entry[1]
  reply[#reply + 1] = entry[2][2]
end
return reply
"""
