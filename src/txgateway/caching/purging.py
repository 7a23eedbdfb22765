# -*- test-case-name: tests.test_caching_store,tests.e2e.test_caching -*-
"""
Purging a route's cache on an operator's request (C{POST /api/cache/purge}).

By URL (the cache key: scheme, host, path and query as the gateway saw
them, every C{Vary} variant included), by route (everything it stored), by
URL prefix, or by tag (the members of the response's C{tag_field},
C{Surrogate-Key} by default, separated by spaces or commas).  With
C{store: redis} the purge runs in Redis, so every replica loses the entries
at once; each replica's memory fallback is purged where the request lands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, succeed

from txgateway.caching.stored import StoredResponse
from txgateway.caching.stores import MemoryStore, RedisPurging, RedisStore, globEscape
from txgateway.caching.variants import tagsOf

if TYPE_CHECKING:
    from txgateway.caching.flow import ResponseCache

__all__ = ["PURGE_KINDS", "cacheStats", "purge", "purgeAll", "routeCaches"]

# Cache results (txgateway_cache_requests_total) that answered from a stored response.
_SERVED = ("hit", "stale", "revalidated", "collapsed")

PURGE_KINDS = ("url", "route", "prefix", "tag")


def _purgeStore(store: Any, patterns: list[bytes], memory: Callable[[bytes, Any], bool],
                tag: bytes | None) -> Deferred[int]:
    if isinstance(store, RedisStore):
        purging = RedisPurging(store)
        return purging.tagged(tag, memory) if tag is not None else purging.matching(patterns, memory)
    if isinstance(store, MemoryStore):
        return succeed(store.purgeWhere(memory))
    return succeed(0)


def purge(cache: ResponseCache, kind: str, value: str) -> Deferred[int]:
    """Purge one route's cache; fires with how many stored responses went."""
    raw = value.encode("latin-1")
    tag: bytes | None = None
    if kind == "url":
        variants = raw + b"#"
        patterns = [globEscape(raw), globEscape(variants) + b"*"]

        def memory(k: bytes, _: Any) -> bool:
            return k == raw or k.startswith(variants)
    elif kind == "prefix":
        patterns = [globEscape(raw) + b"*"]

        def memory(k: bytes, _: Any) -> bool:
            return k.startswith(raw)
    elif kind == "route":
        patterns = [b"*"]

        def memory(k: bytes, _: Any) -> bool:
            return True
    elif kind == "tag":
        tag = raw
        field = cache.config.tag_field.lower().encode("latin-1")
        patterns = []

        def memory(k: bytes, _: Any) -> bool:
            return isinstance(_, StoredResponse) and raw in tagsOf(_.headers, field)
    else:
        raise ValueError(f"unknown purge kind {kind!r}")
    # A save in flight would answer from read-your-writes after the purge: drop it (all of them for a tag).
    cache.entries.drop(lambda k: kind == "tag" or memory(k, None))
    return _purgeStore(cache.store, patterns, memory, tag)


def purgeAll(caches: Iterable[tuple[str, ResponseCache]], kind: str, value: str) -> Deferred[int]:
    """
    Purge every route cache the request concerns: the named route for
    C{route}, every cached route otherwise (a URL belongs to whichever route
    stored it).  Fires with the total count.
    """
    ds = [purge(cache, "route" if kind == "route" else kind, value)
          for name, cache in caches if kind != "route" or name == value]
    return gatherResults(ds, consumeErrors=True).addCallback(sum)


def routeCaches(routes: Iterable[Any]) -> list[tuple[str, ResponseCache]]:
    """(name, cache) of every compiled route that has a cache, in the route table's order."""
    out = []
    for route in routes:
        chain = getattr(route, "chain", None)
        cache = getattr(chain, "cache", None)
        if cache is not None:
            out.append((route.name, cache))
    return out


def cacheStats(cache: ResponseCache, results: dict[str, int]) -> dict[str, Any]:
    """
    What the status page shows of a route's cache: the store, this
    process's entries, bytes and evictions (for C{store: redis}, of its
    memory fallback: Redis itself holds the shared entries), and the hit
    ratio of C{results} (lookups by result) without bypasses.
    """
    store = cache.store
    memory = store.fallback if isinstance(store, RedisStore) else store
    lookups = sum(v for k, v in results.items() if k != "bypass")
    served = sum(results.get(k, 0) for k in _SERVED)
    out: dict[str, Any] = {"store": "redis" if isinstance(store, RedisStore) else "memory",
                           "hit_ratio": round(served / lookups, 3) if lookups else None}
    if isinstance(memory, MemoryStore):
        out.update(entries=len(memory), bytes=memory.bytes, evictions=memory.evictions)
    return out
