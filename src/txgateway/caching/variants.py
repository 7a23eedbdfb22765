# -*- test-case-name: tests.test_caching -*-
"""
A cache store with Vary: one URI's responses kept per variant.

A response without Vary is stored under its URI's key.  One with Vary is
stored under the key plus the values of its Vary fields, and the URI's key
holds a L{VaryIndex} naming those fields (and a generation, so that a change
of the fields an origin varies on leaves the old variants unreachable).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from txgateway.caching import policy
from txgateway.caching.policy import StoredResponse
from txgateway.caching.stores import RedisPurging, RedisStore, VaryIndex

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.interfaces import ICacheStore

__all__ = ["VaryingStore", "tagsOf"]

log = Logger(namespace="txgateway.cache")
# How long a URI's Vary index outlives its variants at least.
_INDEX_TTL = 3600.0
_TAG_SEPARATORS = re.compile(rb"[\s,]+")


def tagsOf(headers: policy.HeaderPairs, field: bytes) -> list[bytes]:
    """
    The purge tags of a response: its C{field} (lower case) lines' members,
    split on spaces (C{Surrogate-Key}) and commas (C{Cache-Tag}).
    """
    out: list[bytes] = []
    for line in policy.headerValues(headers, field):
        out.extend(t for t in _TAG_SEPARATORS.split(line) if t)
    return out


class VaryingStore:
    """
    An L{ICacheStore}, read and written per variant.

    Read-your-writes: a save takes several store round trips (the URI's
    Vary index is read, then it and the variant are written), and with Redis
    a request right behind the one that stored a response would otherwise
    miss until they land.  So an entry being saved is answered from
    C{_saving} until its save has finished, on every store alike.
    """

    def __init__(self, store: ICacheStore, clock: IReactorTime, rng: Any,
                 targeted: tuple[bytes, ...] = policy.DEFAULT_TARGETED, staleOnError: float = 0.0,
                 tagField: bytes = b"surrogate-key") -> None:
        self.store = store
        self.tagField = tagField
        self.clock = clock
        self.rng = rng
        self.targeted = targeted
        self.staleOnError = staleOnError
        self._saving: dict[bytes, list[StoredResponse]] = {}

    async def lookup(self, key: bytes, fields: policy.HeaderLookup) -> tuple[StoredResponse | None, bool]:
        """(the stored response that matches the request's Vary fields, or None; whether one existed for the URI)."""
        saving = self._saving.get(key)
        if saving:
            for pending in reversed(saving):
                if policy.varyMatches(pending, fields):
                    return pending, False
        entry, varyMiss = await self._lookup(key, fields)
        if entry is not None:
            entry.withTargets(self.targeted)
        return entry, varyMiss or bool(saving)

    async def _lookup(self, key: bytes, fields: policy.HeaderLookup) -> tuple[StoredResponse | None, bool]:
        record = await self.store.get(key)
        if record is None:
            return None, False
        if isinstance(record, VaryIndex):
            values = policy.varyValues(record.fields, fields)
            entry = await self.store.get(self._variantKey(key, record.generation, values))
            if isinstance(entry, StoredResponse) and policy.varyMatches(entry, fields):
                return entry, False
            return None, True
        if isinstance(record, StoredResponse):
            if policy.varyMatches(record, fields):
                return record, False
            return None, True
        return None, False

    @staticmethod
    def _variantKey(key: bytes, generation: bytes, values: tuple[bytes | None, ...]) -> bytes:
        return key + b"#" + generation + b"#" + policy.varyKeySuffix(values)

    async def save(self, key: bytes, entry: StoredResponse, maxTTL: float | None,
                   defaultTTL: float | None = None) -> None:
        """Store C{entry} (and, when it varies, the URI's Vary index) for as long as it may be used."""
        entry.withTargets(self.targeted)
        ttl = policy.retention(entry, self.clock.seconds(), maxTTL, defaultTTL, self.staleOnError)
        if ttl <= 0:
            await self.store.delete(key)
            return
        saving = self._saving.setdefault(key, [])
        saving.append(entry)
        try:
            await self._save(key, entry, ttl)
        finally:
            saving.remove(entry)
            if not saving and self._saving.get(key) is saving:
                del self._saving[key]

    async def _save(self, key: bytes, entry: StoredResponse, ttl: float) -> None:
        if ttl <= 0:
            await self.store.delete(key)
            return
        if not entry.varyFields:
            await self.store.set(key, entry, ttl)
            await self._tag(key, entry, ttl)
            return
        existing = await self.store.get(key)
        if isinstance(existing, VaryIndex) and existing.fields == entry.varyFields:
            generation = existing.generation
        else:
            generation = b"%08x" % self.rng.getrandbits(32)
        await self.store.set(key, VaryIndex(entry.varyFields, generation), max(ttl, _INDEX_TTL))
        variant = self._variantKey(key, generation, entry.varyValues)
        await self.store.set(variant, entry, ttl)
        await self._tag(variant, entry, ttl)

    async def _tag(self, key: bytes, entry: StoredResponse, ttl: float) -> None:
        """Index a Redis entry by its purge tags (the memory store finds them by scanning)."""
        if isinstance(self.store, RedisStore):
            tags = tagsOf(entry.headers, self.tagField)
            if tags:
                await RedisPurging(self.store).tag(key, tags, ttl)

    def drop(self, matches: Callable[[bytes], bool]) -> None:
        """Forget the saves in flight whose key C{matches}: a purge must not be undone by read-your-writes."""
        for k in [k for k in self._saving if matches(k)]:
            del self._saving[k]

    def saveLater(self, key: bytes, entry: StoredResponse, maxTTL: float | None,
                  defaultTTL: float | None = None) -> None:
        """L{save}, without waiting for it; a failure is logged."""
        ensureDeferred(self.save(key, entry, maxTTL, defaultTTL)).addErrback(
            lambda f: log.failure("storing a cache entry failed", f))

    def forget(self, key: bytes) -> None:
        """Delete C{key}, without waiting for it; a failure is logged."""
        self._saving.pop(key, None)
        self.store.delete(key).addErrback(lambda f: log.failure("deleting a cache entry failed", f))
