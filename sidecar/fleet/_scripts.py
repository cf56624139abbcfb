"""The fleet quota's state in Redis, and the two Lua scripts that change it atomically.

Keys (``P`` = ``{key_prefix}:{{{key}}}``; the braces are a Redis Cluster hash tag, so
every key of one quota lives on one shard and a script may touch them all):

========================  ======  ====================================================
``P:slots``               zset    slot id -> lease expiry (ms, Redis clock): running tasks
``P:queue``               zset    ticket -> arrival number: the waiters, oldest first
``P:tickets``             zset    ticket -> expiry (ms): a waiter's lease on its place
``P:gone``                zset    id -> forget-at (ms): ids released or given up, kept one
                                  TTL so a late script cannot bring them back
``P:seq``                 string  the arrival counter (INCR)
``P:meta``                hash    ``reclaimed`` (slots taken back after their lease ran
                                  out, fleet-wide total), ``quota`` (the last one used)
``P:wake:<instance>``     channel a waiter's ticket, published when it is granted
``P:starts:...``          list    the start-rate moving window (kept by ``limits``)
========================  ======  ====================================================

A ticket is ``<instance>.<n>``; once granted, the ticket is the slot's id. Every
script first takes back what expired (slots, tickets, tombstones) and ends by
handing free slots to the oldest live tickets, publishing each grant on its
instance's channel, so no waiter polls. Both scripts read the time from Redis
(``TIME``), never from the sidecars, whose clocks need not agree. Redis 7
replicates a script's effects, not the script, so reading ``TIME`` before
writing is allowed.

* ``ACQUIRE(ticket)``: one round trip per call. Queues the ticket (unless it is
  already queued, granted, or gone), grants, and says whether this ticket holds
  a slot now or its place in the queue.
* ``SYNC(released, held, waiting)``: one round trip per renew interval and per
  batch of returns, for all the slots and tickets of one process. Frees the
  released ids (and remembers them as gone); renews the held slots, adding
  those Redis lost (*adopted*: a restarted Redis without persistence, or a
  partition longer than the TTL, while the task kept running); renews the
  waiting tickets, queueing again at the back those Redis lost; grants; and
  reports which of the waiting tickets hold a slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ACQUIRE", "SYNC", "AcquireReply", "FleetKeys", "SyncReply"]

_PRELUDE: Final = """
local slots, queue, tickets, gone, seq, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local quota = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local wake = ARGV[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local stored_quota = tonumber(redis.call('HGET', meta, 'quota')) or quota
redis.call('HSET', meta, 'quota', quota)

-- Take back what expired: slots whose holder stopped renewing (crashed, cut off),
-- waiters that stopped renewing their ticket, tombstones older than one TTL.
local function prune()
  local reclaimed = redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if reclaimed > 0 then redis.call('HINCRBY', meta, 'reclaimed', reclaimed) end
  local stale = redis.call('ZRANGEBYSCORE', tickets, '-inf', now, 'LIMIT', 0, 1000)
  if #stale > 0 then
    redis.call('ZREM', queue, unpack(stale))
    redis.call('ZREM', tickets, unpack(stale))
  end
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', now)
end

-- Hand free slots to the oldest live tickets. A granted slot keeps its ticket's
-- expiry: a waiter that died just before its turn frees it as soon as it would
-- have freed its place. Each grant wakes the waiter's process (but not the
-- caller of this very script, who reads its answer).
local function grant(caller_ticket)
  local free = quota - redis.call('ZCARD', slots)
  while free > 0 do
    local head = redis.call('ZPOPMIN', queue)
    if #head == 0 then break end
    local ticket = head[1]
    local expiry = tonumber(redis.call('ZSCORE', tickets, ticket))
    redis.call('ZREM', tickets, ticket)
    if expiry and expiry > now then
      redis.call('ZADD', slots, expiry, ticket)
      free = free - 1
      if ticket ~= caller_ticket then
        redis.call('PUBLISH', wake .. string.match(ticket, '^(.*)%.'), ticket)
      end
    end
  end
end

-- The fleet now; while tickets wait, also the ms until the first lease runs out, so
-- waiting processes run a script right then and the slot is handed on without delay.
local function summary()
  local waiting = redis.call('ZCARD', queue)
  local next_expiry = -1
  if waiting > 0 then
    local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
    if #first == 2 then next_expiry = tonumber(first[2]) - now end
  end
  return {redis.call('ZCARD', slots), waiting,
          tonumber(redis.call('HGET', meta, 'reclaimed')) or 0, stored_quota, next_expiry}
end
"""

ACQUIRE: Final = (
    _PRELUDE
    + """
-- ARGV[4]: the ticket. Returns {granted (1/0, -1: gone), rank or -1, summary...}.
local ticket = ARGV[4]
prune()
if redis.call('ZSCORE', gone, ticket) then
  local reply = {-1, -1}
  for _, v in ipairs(summary()) do table.insert(reply, v) end
  return reply
end
if not redis.call('ZSCORE', slots, ticket) then
  if not redis.call('ZSCORE', queue, ticket) then
    redis.call('ZADD', queue, redis.call('INCR', seq), ticket)
  end
  redis.call('ZADD', tickets, now + ttl, ticket)
  grant(ticket)
end
local reply = {1, -1}
if not redis.call('ZSCORE', slots, ticket) then
  reply = {0, redis.call('ZRANK', queue, ticket)}
end
for _, v in ipairs(summary()) do table.insert(reply, v) end
return reply
"""
)

SYNC: Final = (
    _PRELUDE
    + """
-- ARGV[4..]: n, released ids..., m, held ids..., waiting tickets...
-- Returns {summary..., adopted, granted tickets...}.
prune()
local i = 4
local n = tonumber(ARGV[i])
for k = i + 1, i + n do
  local id = ARGV[k]
  redis.call('ZREM', slots, id)
  redis.call('ZREM', queue, id)
  redis.call('ZREM', tickets, id)
  redis.call('ZADD', gone, now + ttl, id)
end
i = i + n + 1
n = tonumber(ARGV[i])
local adopted = 0
for k = i + 1, i + n do
  if not redis.call('ZSCORE', gone, ARGV[k]) then
    adopted = adopted + redis.call('ZADD', slots, now + ttl, ARGV[k])
  end
end
i = i + n + 1
for k = i, #ARGV do
  local id = ARGV[k]
  if redis.call('ZSCORE', queue, id) then
    redis.call('ZADD', tickets, now + ttl, id)
  elseif not redis.call('ZSCORE', slots, id) and not redis.call('ZSCORE', gone, id) then
    redis.call('ZADD', queue, redis.call('INCR', seq), id)
    redis.call('ZADD', tickets, now + ttl, id)
  end
end
grant('')
local reply = summary()
table.insert(reply, adopted)
for k = i, #ARGV do
  if redis.call('ZSCORE', slots, ARGV[k]) then
    redis.call('ZADD', slots, now + ttl, ARGV[k])
    table.insert(reply, ARGV[k])
  end
end
return reply
"""
)


@dataclass(frozen=True)
class FleetKeys:
    """The Redis names of one quota (see the module docstring)."""

    prefix: str
    key: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.key}}}"

    @property
    def script_keys(self) -> list[str]:
        """KEYS of both scripts, in the order the prelude names them."""
        return [
            f"{self.base}:{name}" for name in ("slots", "queue", "tickets", "gone", "seq", "meta")
        ]

    @property
    def wake_prefix(self) -> str:
        return f"{self.base}:wake:"

    def wake_channel(self, instance: str) -> str:
        """The channel on which ``instance`` hears that one of its tickets was granted."""
        return f"{self.wake_prefix}{instance}"

    @property
    def starts_prefix(self) -> str:
        return f"{self.base}:starts"


@dataclass(frozen=True)
class Summary:
    """The fleet as one script saw it."""

    in_use: int
    queued: int
    reclaimed: int
    stored_quota: int
    next_expiry_ms: int
    """While tickets wait: ms until the first lease runs out (-1: none waits)."""

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> Summary:
        in_use, queued, reclaimed, stored_quota, next_expiry_ms = (int(v) for v in raw[:5])
        return cls(in_use, queued, reclaimed, stored_quota, next_expiry_ms)


@dataclass(frozen=True)
class AcquireReply:
    """What ``ACQUIRE`` found: granted, still queued at ``rank`` (0 = next), or gone."""

    granted: bool
    gone: bool
    rank: int
    summary: Summary

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> AcquireReply:
        state, rank = int(raw[0]), int(raw[1])
        return cls(state == 1, state == -1, rank, Summary.parse(raw[2:7]))


@dataclass(frozen=True)
class SyncReply:
    """What ``SYNC`` found: the fleet, the slots it adopted, the waiting tickets granted."""

    summary: Summary
    adopted: int
    granted: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> SyncReply:
        granted = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in raw[6:])
        return cls(Summary.parse(raw[:5]), int(raw[5]), granted)


def sync_args(
    released: Sequence[str], held: Sequence[str], waiting: Sequence[str]
) -> list[str | int]:
    """ARGV of ``SYNC`` after the common three (quota, TTL, wake-up prefix)."""
    return [len(released), *released, len(held), *held, *waiting]
