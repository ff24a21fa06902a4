"""The Lua scripts behind the Redis broker.

Redis runs a script as one step: no other command, on any connection, runs
in the middle.  So ``APPEND`` makes dedupe, store and publish indivisible
(a record is never published without being stored, nor stored twice), and
``REPLAY`` reads epoch, head, the first retained offset and the entries as
one consistent snapshot.

Both take ``KEYS = [meta, log, seen]`` (see :mod:`.redis_keys`) and share
the prelude below.  Offsets are stream ids ``<offset>-0``, so "after
offset N" is ``XRANGE log N+1 +``: no scan.  Ages use the server's clock
(``TIME``), one clock for every replica.

Each script starts with a Redis 7 shebang naming its flags.  ``APPEND`` has
none, so Redis refuses it before it runs when memory is above ``maxmemory``
(an ``OOM`` error, answered ``RETRY``).  ``REPLAY`` may run then
(``allow-oom``): it only trims, refreshes expiries and, for a user without a
current epoch, drops the old history and writes a meta hash of three short
fields, so a client can still open a stream and replay.  ``PROBE`` writes nothing but is
refused exactly when ``APPEND`` would be: readiness asks Redis itself.

``APPEND`` and ``REVOKE`` announce what they wrote on the user's channel;
the message format, and the Lua that writes it, are in :mod:`.redis_messages`.
``REVOKE`` keeps a user's latest sign-out and announces it.  ``REPLAY``
returns the stored sign-out with every read, so a stream learns it when it
opens, with no round trip of its own.

Both history scripts read ``INFO server replication`` (about 8 µs of Redis
CPU, measured with Redis 7.0) to learn which server process holds the data;
see ``load_epoch``.
"""

from __future__ import annotations

from .redis_messages import LUA_PUBLISH_RECORD, LUA_PUBLISH_REVOKED

__all__ = ["APPEND", "PROBE", "REPLAY", "REVOKE"]

_PRELUDE = """
local meta, log, seen = KEYS[1], KEYS[2], KEYS[3]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function offset_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- Which server process holds the data, and which replication history it
-- follows: run_id is new on every start (a restore from RDB or AOF included)
-- and master_replid is new whenever a replica is promoted.
local function incarnation()
  local info = redis.call('INFO', 'server', 'replication')
  return (string.match(info, 'run_id:(%x+)') or '') .. ':' ..
         (string.match(info, 'master_replid:(%x+)') or '')
end

-- The epoch names this incarnation of the history.  It is renewed when the
-- meta hash is gone (expired, evicted, flushed) and when the hash was
-- written by another incarnation: the data may then be an older copy (a
-- snapshot, a lagging replica) whose offsets readers already hold with
-- other records.  Whatever is left of log and seen goes with the old
-- epoch, so no old offset is ever served under the new one.
local function load_epoch(candidate)
  local here = incarnation()
  local stored = redis.call('HMGET', meta, 'epoch', 'head', 'server')
  if stored[1] and stored[3] == here then
    return stored[1], tonumber(stored[2]) or 0
  end
  redis.call('DEL', log, seen)
  redis.call('HSET', meta, 'epoch', candidate, 'head', 0, 'server', here)
  return candidate, 0
end

-- Drop entries older than the TTL (entries are in time order, so they form
-- a prefix), drop dedupe keys of trimmed entries, return the first
-- retained offset (head + 1 when nothing is retained).  Usually the oldest
-- entry is young enough and one single-entry read settles it.
local function trim(ttl_ms, head)
  local cutoff = now_ms() - ttl_ms
  local first_offset = head + 1
  while true do
    local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
    if #oldest == 0 then
      break
    end
    -- fields are written as d, <data>, t, <ms>
    if tonumber(oldest[1][2][4]) >= cutoff then
      first_offset = offset_of(oldest[1][1])
      break
    end
    local batch = redis.call('XRANGE', log, '-', '+', 'COUNT', 64)
    local keep = nil
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][4]) >= cutoff then
        keep = entry[1]
        break
      end
    end
    redis.call('XTRIM', log, 'MINID', keep or (offset_of(batch[#batch][1]) + 1))
  end
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. first_offset)
  return first_offset
end
"""

#: ARGV: candidate epoch, dedupe key, data, history size, ttl ms, key ttl ms,
#: meta ttl ms, channel.  Returns ``{epoch, offset, duplicate, data}``
#: (``data`` only for a duplicate: the stored record's).
APPEND = "#!lua\n" + _PRELUDE + LUA_PUBLISH_RECORD + """
local key, data = ARGV[2], ARGV[3]
local size, ttl_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch, head = load_epoch(ARGV[1])
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
publish_record(ARGV[8], epoch, head, data)
return {epoch, head, 0}
"""

#: KEYS: meta, log, seen, revoked.  ARGV: candidate epoch, after epoch ('' for
#: "from now"), after offset, ttl ms, meta ttl ms.  Returns ``{epoch, head,
#: resync, revoked_before, offset1, data1, ...}`` with ``resync`` '' when the
#: replay is honoured and ``revoked_before`` '' when there is no sign-out.
REPLAY = "#!lua flags=allow-oom\n" + _PRELUDE + """
local revoked = redis.call('GET', KEYS[4]) or ''
local epoch, head = load_epoch(ARGV[1])
-- A reader keeps the epoch alive: its position stays meaningful while it
-- keeps coming back, even when no event arrives for a long time.
redis.call('PEXPIRE', meta, ARGV[5])
local first = trim(tonumber(ARGV[4]), head)

if ARGV[2] == '' then
  return {epoch, head, '', revoked}
end
if ARGV[2] ~= epoch then
  return {epoch, head, 'unknown_epoch', revoked}
end
local after = tonumber(ARGV[3])
if after > head then
  return {epoch, head, 'unknown_position', revoked}
end
if after < first - 1 then
  return {epoch, head, 'expired', revoked}
end

local reply = {epoch, head, '', revoked}
for _, entry in ipairs(redis.call('XRANGE', log, after + 1, '+')) do
  reply[#reply + 1] = entry[1]
  reply[#reply + 1] = entry[2][2]
end
return reply
"""

#: KEYS: revoked.  ARGV: not_before (unix seconds), ttl ms, channel.  Keeps the
#: later of the stored and the given not_before, renews the key's lifetime and
#: announces the value kept; returns it.  No flags: refused out of memory, like
#: ``APPEND``, so the delivery is retried.
REVOKE = "#!lua\n" + LUA_PUBLISH_REVOKED + """
local given = tonumber(ARGV[1])
local stored = tonumber(redis.call('GET', KEYS[1]) or '')
if stored == nil or given > stored then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  -- A redelivered or older sign-out: the later one stays, at least as long.
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
end
local kept = redis.call('GET', KEYS[1])
publish_revoked(ARGV[3], kept)
return kept
"""

#: No keys, no ARGV; returns 1.  Declares no flags, so like ``APPEND`` it is
#: refused while Redis is out of memory or read-only, and it reads ``INFO`` as
#: both other scripts do (a server that hides it fails here, not at each append).
PROBE = "#!lua\nredis.call('INFO', 'server', 'replication')\nreturn 1\n"
