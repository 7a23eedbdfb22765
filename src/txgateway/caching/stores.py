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
                result.callback(None)
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
