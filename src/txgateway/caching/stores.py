# -*- test-case-name: tests.test_caching_store -*-
"""
Where cached responses live: a bounded in-process LRU, or Redis shared by replicas.

Both are L{ICacheStore}s and never fail: a broken store is a miss.  The
Redis store falls back to the memory store while Redis is unreachable, so a
Redis outage costs hit rate, never a request.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgateway.caching.policy import StoredResponse
from txgateway.interfaces import ICacheStore
from txgateway.stores import StoreHealth

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.observe import Metrics

__all__ = ["MemoryStore", "Record", "RedisStore", "VaryIndex", "decodeRecord", "encodeRecord"]

log = Logger(namespace="txgateway.cache")


class VaryIndex:
    """
    What the primary key (the URI) holds when the origin's response varies:
    the nominated request fields, and a generation that is part of every
    secondary key, so that deleting the index (invalidation, §4.4) makes
    every variant unreachable at once without enumerating them.
    """

    __slots__ = ("fields", "generation")

    def __init__(self, fields: tuple[bytes, ...], generation: bytes) -> None:
        self.fields = fields
        self.generation = generation

    def __repr__(self) -> str:
        return f"<VaryIndex {self.fields!r} {self.generation!r}>"

    @property
    def size(self) -> int:
        return 100 + sum(len(f) for f in self.fields)


Record = StoredResponse | VaryIndex


# ---------------------------------------------------------------------------
# Serialisation (Redis): a short JSON head, a newline, then the body as is.

_RESPONSE = b"R1"
_VARY = b"V1"


def encodeRecord(record: Record) -> bytes:
    if isinstance(record, VaryIndex):
        return _VARY + json.dumps([[f.decode("latin-1") for f in record.fields],
                                   record.generation.decode("latin-1")], separators=(",", ":")).encode()
    head = [
        record.code, record.phrase.decode("latin-1"), record.requestTime, record.responseTime,
        [x.decode("latin-1") for kv in record.headers for x in kv],
        [f.decode("latin-1") for f in record.varyFields],
        [None if v is None else v.decode("latin-1") for v in record.varyValues],
    ]
    return _RESPONSE + json.dumps(head, separators=(",", ":")).encode() + b"\n" + record.body


def decodeRecord(data: bytes) -> Record | None:
    """The record, or None for anything unreadable (an old format, a foreign key): a miss."""
    try:
        kind = data[:2]
        if kind == _VARY:
            fields, generation = json.loads(data[2:])
            return VaryIndex(tuple(f.encode("latin-1") for f in fields), generation.encode("latin-1"))
        if kind == _RESPONSE:
            nl = data.index(b"\n")
            code, phrase, requestTime, responseTime, flat, vf, vv = json.loads(data[2:nl])
            flatBytes = [x.encode("latin-1") for x in flat]
            headers = list(zip(flatBytes[0::2], flatBytes[1::2], strict=True))
            return StoredResponse(int(code), phrase.encode("latin-1"), headers, data[nl + 1:], float(requestTime),
                                  float(responseTime), tuple(f.encode("latin-1") for f in vf),
                                  tuple(None if v is None else v.encode("latin-1") for v in vv))
    except (ValueError, TypeError, AttributeError, UnicodeError):
        return None
    return None


# ---------------------------------------------------------------------------
# Memory


@implementer(ICacheStore)
class MemoryStore:
    """
    An LRU bounded by C{maxBytes} (the sum of entry sizes), with expiry
    computed lazily from the clock on read, so no timer runs per entry.
    """

    def __init__(self, clock: IReactorTime, maxBytes: int) -> None:
        self.clock = clock
        self.maxBytes = maxBytes
        self.bytes = 0
        self.evictions = 0  # entries dropped for room (not expiry, not deletes): for the status page
        self._entries: OrderedDict[bytes, tuple[Any, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, maxBytes: int) -> None:
        self.maxBytes = maxBytes
        self._evict()

    def lookup(self, key: bytes) -> Any:
        found = self._entries.get(key)
        if found is None:
            return None
        record, expires, size = found
        if expires <= self.clock.seconds():
            del self._entries[key]
            self.bytes -= size
            return None
        self._entries.move_to_end(key)
        return record

    def put(self, key: bytes, record: Any, ttl: float) -> None:
        self.remove(key)
        if ttl <= 0:
            return
        size = int(getattr(record, "size", 256)) + len(key)
        if size > self.maxBytes:
            return
        self._entries[key] = (record, self.clock.seconds() + ttl, size)
        self.bytes += size
        self._evict()

    def remove(self, key: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[2]

    def _evict(self) -> None:
        entries = self._entries
        while self.bytes > self.maxBytes and entries:
            _, (_, _, size) = entries.popitem(last=False)
            self.bytes -= size
            self.evictions += 1

    def purgeWhere(self, matches: Callable[[bytes, Any], bool]) -> int:
        """Delete every entry C{matches(key, record)} accepts; how many stored responses went."""
        doomed = [(k, r) for k, (r, _, _) in self._entries.items() if matches(k, r)]
        for k, _ in doomed:
            self.remove(k)
        return sum(1 for _, r in doomed if isinstance(r, StoredResponse))

    # ICacheStore

    def get(self, key: bytes) -> Deferred[Any]:
        return succeed(self.lookup(key))

    def set(self, key: bytes, entry: Any, ttl: float) -> Deferred[None]:
        self.put(key, entry, ttl)
        return succeed(None)

    def delete(self, key: bytes) -> Deferred[None]:
        self.remove(key)
        return succeed(None)


# ---------------------------------------------------------------------------
# Redis


@implementer(ICacheStore)
class RedisStore:
    """
    Entries in Redis (so replicas share them), expiring by Redis TTL.

    Every call is bounded by C{timeout}.  Whether Redis is usable is
    L{txgateway.stores.StoreHealth}'s call (shared with the other Redis
    users): while it says no (no connection, or a recent failure), the
    memory store answers at once instead; the outage is logged once when it
    starts and once when it ends, and every operation served by the memory
    store because of it counts in
    C{txgateway_store_fallbacks{store="redis",use="cache"}}.  Deletes always
    reach the memory store too, so an invalidation is never undone by the
    fallback.
    """

    def __init__(self, redis: Any, clock: IReactorTime, timeout: float, fallback: MemoryStore,
                 metrics: Metrics | None = None, prefix: bytes = b"txgateway:cache:",
                 health: StoreHealth | None = None) -> None:
        self.redis = redis
        self.clock = clock
        self.timeout = timeout
        self.fallback = fallback
        self.prefix = prefix
        self.health = health if health is not None else StoreHealth(clock, metrics, "redis", "cache", log=log)

    @property
    def down(self) -> bool:
        return not self.health.healthy

    def _try(self) -> bool:
        if self.redis is not None and self.health.shouldTry(self.redis):
            return True
        self.health.fellBack()
        return False

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        try:
            d: Deferred[Any] = getattr(self.redis, method)(*args, **kwargs)
        except Exception as e:  # a pool that raises synchronously is as down as one that errs
            return fail(e)
        d.addTimeout(self.timeout, self.clock)
        return d

    def _failed(self, why: Failure) -> None:
        if why.check(CancelledError):
            self.health.abandoned()
        else:
            self.health.failed(why.value)
        self.health.fellBack()

    def get(self, key: bytes) -> Deferred[Any]:
        if not self._try():
            return self.fallback.get(key)
        result: Deferred[Any] = Deferred()

        def got(value: Any) -> None:
            self.health.succeeded()
            if value is None:
                # The memory store holds only what was written while Redis failed (a write that
                # reaches Redis removes the memory copy): this gateway reads its own writes across
                # an outage.
                result.callback(self.fallback.lookup(key))
                return
            if isinstance(value, str):  # a client that decodes valid UTF-8 (ours does not): back to bytes
                value = value.encode("utf-8")
            result.callback(decodeRecord(value) if isinstance(value, bytes) else None)

        def failed(why: Failure) -> None:
            self._failed(why)
            self.fallback.get(key).chainDeferred(result)

        self._call("get", self.prefix + key).addCallbacks(got, failed)
        return result

    def set(self, key: bytes, entry: Any, ttl: float) -> Deferred[None]:
        seconds = int(ttl + 0.999)
        if seconds <= 0:
            return self.delete(key)
        if not self._try():
            return self.fallback.set(key, entry, ttl)
        self.fallback.remove(key)  # the memory copy would otherwise outlive a newer Redis copy
        result: Deferred[None] = Deferred()

        def done(_: Any) -> None:
            self.health.succeeded()
            result.callback(None)

        def failed(why: Failure) -> None:
            self._failed(why)
            self.fallback.set(key, entry, ttl).chainDeferred(result)

        self._call("set", self.prefix + key, encodeRecord(entry), expire=seconds).addCallbacks(done, failed)
        return result

    def delete(self, key: bytes) -> Deferred[None]:
        self.fallback.remove(key)
        if self.redis is None or not self.health.shouldTry(self.redis):
            return succeed(None)
        result: Deferred[None] = Deferred()

        def done(_: Any) -> None:
            self.health.succeeded()
            result.callback(None)

        def failed(why: Failure) -> None:
            if why.check(CancelledError):
                self.health.abandoned()
            else:
                self.health.failed(why.value)
            result.callback(None)

        self._call("delete", self.prefix + key).addCallbacks(done, failed)
        return result


# Purging in Redis: one script per request, so a purge is one round trip and
# sees no half-deleted state.  Counting reads each value's two-byte format
# tag (L{encodeRecord}): a stored response counts, a Vary index does not.
_PURGE_MATCHING = b"""
local n = 0
for i = 1, #ARGV do
  local cursor = "0"
  repeat
    local r = redis.call("SCAN", cursor, "MATCH", KEYS[1] .. ARGV[i], "COUNT", 1000)
    cursor = r[1]
    for _, k in ipairs(r[2]) do
      if redis.call("TYPE", k)["ok"] == "string" and redis.call("GETRANGE", k, 0, 1) == "R1" then n = n + 1 end
      redis.call("DEL", k)
    end
  until cursor == "0"
end
return n
"""

_PURGE_TAG = b"""
local n = 0
for _, k in ipairs(redis.call("SMEMBERS", KEYS[1])) do
  if redis.call("GETRANGE", k, 0, 1) == "R1" then n = n + 1 end
  redis.call("DEL", k)
end
redis.call("DEL", KEYS[1])
return n
"""

_TAG = b"""
for i = 2, #KEYS do
  redis.call("SADD", KEYS[i], KEYS[1])
  if redis.call("TTL", KEYS[i]) < tonumber(ARGV[1]) then redis.call("EXPIRE", KEYS[i], ARGV[1]) end
end
return 0
"""


def globEscape(raw: bytes) -> bytes:
    """C{raw} as a literal in a Redis C{MATCH} pattern."""
    out = bytearray()
    for c in raw:
        if c in b"*?[]\\":
            out.append(0x5C)
        out.append(c)
    return bytes(out)


class RedisPurging:
    """
    Purging and tag indexing for a L{RedisStore}, which keeps the plain
    C{ICacheStore} calls: tags are sets under C{PREFIX tags:TAG} naming the
    stored keys (they cannot clash with URIs, which start with a scheme).
    Purges also reach the memory fallback, and fail (the admin API says so)
    rather than pretend when Redis is not there.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def tag(self, key: bytes, tags: list[bytes], ttl: float) -> Deferred[None]:
        """Index C{key} under C{tags} for at least C{ttl} seconds; never fails (a lost tag misses a purge)."""
        store = self.store
        if not tags or store.redis is None or store.down:
            return succeed(None)
        keys = [store.prefix + key] + [store.prefix + b"tags:" + t for t in tags]
        d = store._call("eval", _TAG, keys, [int(ttl + 0.999)])
        d.addErrback(lambda f: log.warn("tagging a cache entry failed: {why}", why=f.getErrorMessage()))
        return d.addCallback(lambda _: None)

    def matching(self, patterns: list[bytes], memory: Callable[[bytes, Any], bool]) -> Deferred[int]:
        """Delete what C{patterns} (MATCH patterns after the prefix) name in Redis, and C{memory} in the fallback."""
        store = self.store
        local = store.fallback.purgeWhere(memory)
        if store.redis is None:
            return succeed(local)
        d = store._call("eval", _PURGE_MATCHING, [store.prefix], patterns)
        return d.addCallback(lambda n: int(n) + local)

    def tagged(self, tag: bytes, memory: Callable[[bytes, Any], bool]) -> Deferred[int]:
        store = self.store
        local = store.fallback.purgeWhere(memory)
        if store.redis is None:
            return succeed(local)
        d = store._call("eval", _PURGE_TAG, [store.prefix + b"tags:" + tag], [])
        return d.addCallback(lambda n: int(n) + local)
