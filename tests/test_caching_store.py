"""
The cache stores: bounded LRU memory store, Redis store and its fallback.

The Redis round trips run against a real C{redis-server} started by the test
on a free port (tests/redisserver.py; C{scripts/ensure-redis.sh} installs it).  Fallback behaviour is driven with a scripted fake
pool and a L{Clock}, so timeouts are exact.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.redisserver import RedisServer, spin, waitUntil
from txgateway import stores
from txgateway.caching.policy import StoredResponse
from txgateway.caching.stores import MemoryStore, RedisStore, VaryIndex, decodeRecord, encodeRecord
from txgateway.config import StoresConfig
from txgateway.interfaces import ICacheStore
from txgateway.observe import Metrics


def entry(body: bytes = b"x" * 100, **kw: Any) -> StoredResponse:
    return StoredResponse(200, b"OK", [(b"Cache-Control", b"max-age=60"), (b"ETag", b'"a"')], body, 10.0, 11.0,
                          **kw)


class MemoryStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(self.clock, 10_000)

    def test_providesICacheStore(self) -> None:
        """The memory store is an ICacheStore."""
        verifyObject(ICacheStore, self.store)

    def test_setThenGet(self) -> None:
        """A stored entry comes back until its TTL passes."""
        e = entry()
        self.successResultOf(self.store.set(b"k", e, 10))
        self.assertIs(self.successResultOf(self.store.get(b"k")), e)
        self.assertIsNone(self.successResultOf(self.store.get(b"other")))

    def test_expiryIsLazyFromTheClock(self) -> None:
        """Expiry is computed from the clock on read; no timer runs."""
        self.store.put(b"k", entry(), 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(9.9)
        self.assertIsNotNone(self.store.lookup(b"k"))
        self.clock.advance(0.1)
        self.assertIsNone(self.store.lookup(b"k"))
        self.assertEqual(self.store.bytes, 0)

    def test_boundedByBytesEvictingLeastRecentlyUsed(self) -> None:
        """max_bytes bounds the store; the least recently used entries go first."""
        size = entry().size + 1
        store = MemoryStore(self.clock, size * 3 + 5)
        for k in (b"a", b"b", b"c"):
            store.put(k, entry(), 60)
        self.assertIsNotNone(store.lookup(b"a"))  # a is now the most recently used
        store.put(b"d", entry(), 60)
        self.assertIsNone(store.lookup(b"b"))
        self.assertIsNotNone(store.lookup(b"a"))
        self.assertIsNotNone(store.lookup(b"d"))
        self.assertLessEqual(store.bytes, store.maxBytes)

    def test_entryLargerThanTheStoreIsNotStored(self) -> None:
        """An entry that alone exceeds max_bytes is not stored (and evicts nothing)."""
        self.store.put(b"small", entry(), 60)
        self.store.put(b"big", entry(b"x" * 20_000), 60)
        self.assertIsNone(self.store.lookup(b"big"))
        self.assertIsNotNone(self.store.lookup(b"small"))

    def test_replaceAndDeleteKeepTheByteCount(self) -> None:
        """Replacing or deleting an entry gives its bytes back."""
        self.store.put(b"k", entry(), 60)
        self.store.put(b"k", entry(), 60)
        self.assertEqual(len(self.store), 1)
        self.successResultOf(self.store.delete(b"k"))
        self.assertEqual((len(self.store), self.store.bytes), (0, 0))

    def test_resizeEvicts(self) -> None:
        """A reload that lowers max_bytes evicts down to the new bound."""
        for k in (b"a", b"b", b"c"):
            self.store.put(k, entry(), 60)
        self.store.resize(entry().size + 10)
        self.assertEqual(len(self.store), 1)
        self.assertIsNotNone(self.store.lookup(b"c"))

    def test_zeroTtlStoresNothing(self) -> None:
        """A TTL of zero or less means the entry is already useless."""
        self.store.put(b"k", entry(), 0)
        self.assertIsNone(self.store.lookup(b"k"))


class SerialisationTests(SynchronousTestCase):
    def test_responseRoundTrip(self) -> None:
        """An entry survives encoding byte for byte, binary body and Vary values included."""
        e = StoredResponse(203, b"Non-Authoritative", [(b"X-A", b"\xff\x00"), (b"X-A", b"2")], b"\x00\xff\n\r body",
                           1.5, 2.5, (b"accept",), (None,))
        d = decodeRecord(encodeRecord(e))
        assert isinstance(d, StoredResponse)
        self.assertEqual((d.code, d.phrase, d.headers, d.body, d.requestTime, d.responseTime, d.varyFields,
                          d.varyValues),
                         (e.code, e.phrase, e.headers, e.body, e.requestTime, e.responseTime, e.varyFields,
                          e.varyValues))

    def test_varyIndexRoundTrip(self) -> None:
        """A Vary index survives encoding."""
        d = decodeRecord(encodeRecord(VaryIndex((b"accept", b"x-consumer"), b"0badf00d")))
        assert isinstance(d, VaryIndex)
        self.assertEqual((d.fields, d.generation), ((b"accept", b"x-consumer"), b"0badf00d"))

    def test_garbageIsAMiss(self) -> None:
        """Anything unreadable decodes to None, never an exception."""
        for junk in (b"", b"R1", b"R1{not json\nbody", b"V1[1]", b"ZZ whatever", b"R1[1,2]\n"):
            self.assertIsNone(decodeRecord(junk), junk)


class _FakeRedis:
    """A pool whose answers the test scripts: a value, an error, or silence."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.mode = "ok"
        self.pending: list[Deferred[Any]] = []

    def _answer(self, value: Any) -> Deferred[Any]:
        if self.mode == "error":
            return fail(ConnectionRefusedError("redis down"))
        if self.mode == "hang":
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        return succeed(value)

    def get(self, key: bytes) -> Deferred[Any]:
        self.calls.append(("get", key))
        return self._answer(self.data.get(key))

    def set(self, key: bytes, value: bytes, expire: int | None = None) -> Deferred[Any]:
        self.calls.append(("set", key, expire))
        if self.mode == "ok":
            self.data[key] = value
        return self._answer("OK")

    def delete(self, key: bytes) -> Deferred[Any]:
        self.calls.append(("delete", key))
        if self.mode == "ok":
            self.data.pop(key, None)
        return self._answer(1)


class RedisFallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = _FakeRedis()
        self.memory = MemoryStore(self.clock, 1_000_000)
        self.metrics = Metrics(CollectorRegistry(), processMetrics=False)
        self.store = RedisStore(self.redis, self.clock, 0.25, self.memory, self.metrics, prefix=b"p:")

    def fallbacks(self) -> float:
        return self.metrics.registry.get_sample_value(
            "txgateway_store_fallbacks_total", {"store": "redis", "use": "cache"}) or 0.0

    def test_providesICacheStore(self) -> None:
        """The Redis store is an ICacheStore."""
        verifyObject(ICacheStore, self.store)

    def test_storesSerialisedWithTtlUnderPrefix(self) -> None:
        """Entries go to Redis serialised, under the route prefix, with a whole-second TTL."""
        self.successResultOf(self.store.set(b"k", entry(), 9.2))
        self.assertEqual(self.redis.calls, [("set", b"p:k", 10)])
        got = self.successResultOf(self.store.get(b"k"))
        self.assertEqual(got.body, entry().body)

    def test_textRepliesAreTurnedBackIntoBytes(self) -> None:
        """A client that decodes valid UTF-8 replies to str: the store reads them back as bytes."""
        self.redis.data[b"p:k"] = encodeRecord(entry(b"plain text")).decode("utf-8")  # type: ignore[assignment]
        self.assertEqual(self.successResultOf(self.store.get(b"k")).body, b"plain text")

    def test_errorFallsBackToMemoryAndCounts(self) -> None:
        """A Redis error sends the operation to the memory store and counts a fallback."""
        self.redis.mode = "error"
        self.successResultOf(self.store.set(b"k", entry(), 60))
        self.assertIsNotNone(self.memory.lookup(b"k"))
        self.assertEqual(self.fallbacks(), 1)
        self.assertIsNotNone(self.successResultOf(self.store.get(b"k")))

    def test_timeoutFallsBack(self) -> None:
        """A Redis call that does not answer within stores.redis_timeout falls back."""
        self.memory.put(b"k", entry(), 60)
        self.redis.mode = "hang"
        d = self.store.get(b"k")
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.assertIsNotNone(self.successResultOf(d))
        self.assertEqual(self.fallbacks(), 1)

    def test_redisIsLeftAloneBrieflyAfterAFailure(self) -> None:
        """After a failure Redis is not asked again for retryAfter seconds; then it is."""
        self.redis.mode = "error"
        self.successResultOf(self.store.get(b"k"))
        n = len(self.redis.calls)
        self.successResultOf(self.store.get(b"k"))
        self.assertEqual(len(self.redis.calls), n)
        self.redis.mode = "ok"
        self.clock.advance(self.store.health.retryInterval)
        self.successResultOf(self.store.get(b"k"))
        self.assertEqual(len(self.redis.calls), n + 1)
        self.assertFalse(self.store.down)

    def test_outageIsLoggedOnce(self) -> None:
        """An outage logs one warning, not one per request."""
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.redis.mode = "error"
        for _ in range(3):
            self.clock.advance(self.store.health.retryInterval)
            self.successResultOf(self.store.get(b"k"))
        warnings = [e for e in events if "unavailable for" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(self.fallbacks(), 3)

    def test_deleteAlwaysReachesMemory(self) -> None:
        """§4.4 invalidation is never undone by the fallback: deletes hit memory too."""
        self.memory.put(b"k", entry(), 60)
        self.successResultOf(self.store.delete(b"k"))
        self.assertIsNone(self.memory.lookup(b"k"))
        self.assertIn(("delete", b"p:k"), self.redis.calls)

    def test_noPoolMeansMemory(self) -> None:
        """Without a pool the store is the memory store."""
        store = RedisStore(None, self.clock, 0.25, self.memory)
        self.successResultOf(store.set(b"k", entry(), 60))
        self.assertIsNotNone(self.successResultOf(store.get(b"k")))


class RealRedisTests(SynchronousTestCase):
    """Round trips through the Redis client against a real redis-server (tests/redisserver.py)."""

    def setUp(self) -> None:
        self.server = RedisServer().start()
        self.addCleanup(self.server.cleanup)
        self.pool = stores.makeRedis(StoresConfig(redis=self.server.url, redis_timeout=2.0), globalReactor)
        self.addCleanup(lambda: spin(stores.closeRedis(self.pool)))
        waitUntil(lambda: stores.isConnected(self.pool), what="redis pool connected")
        self.memory = MemoryStore(globalReactor, 1_000_000)  # type: ignore[arg-type]
        self.store = RedisStore(self.pool, globalReactor, 2.0, self.memory, None, prefix=b"t:")  # type: ignore[arg-type]

    def test_roundTripWithTtl(self) -> None:
        """An entry written to Redis reads back identical, binary body included, with a TTL set."""
        e = entry(b"\x00\xff binary \xc3\x28")
        spin(self.store.set(b"k", e, 30))
        got = spin(self.store.get(b"k"))
        self.assertEqual((got.code, got.headers, got.body), (e.code, e.headers, e.body))
        ttl = int(self.server.command("TTL", "t:k"))
        self.assertTrue(0 < ttl <= 30, ttl)
        self.assertIsNone(self.memory.lookup(b"k"))
        self.assertFalse(self.store.down)

    def test_utf8BodyRoundTrip(self) -> None:
        """A body that is valid UTF-8 reads back as the same bytes."""
        e = entry("caf\u00e9 \u2603".encode())
        spin(self.store.set(b"k", e, 30))
        self.assertEqual(spin(self.store.get(b"k")).body, e.body)

    def test_deleteAndExpiry(self) -> None:
        """delete removes the key; Redis expires it by itself after the TTL."""
        spin(self.store.set(b"gone", entry(), 30))
        spin(self.store.delete(b"gone"))
        self.assertIsNone(spin(self.store.get(b"gone")))
        spin(self.store.set(b"short", entry(), 1))
        self.assertIsNotNone(spin(self.store.get(b"short")))
        waitUntil(lambda: self.server.command("EXISTS", "t:short") == 0, what="redis expiry")
        self.assertIsNone(spin(self.store.get(b"short")))

    def test_serverGoneFallsBackToMemory(self) -> None:
        """With Redis killed, the store answers from memory instead of failing or waiting."""
        spin(self.store.set(b"k", entry(), 30))
        self.server.kill()
        waitUntil(lambda: not stores.isConnected(self.pool), what="pool notices redis is gone")
        spin(self.store.set(b"m", entry(b"mem"), 30))
        self.assertEqual(spin(self.store.get(b"m")).body, b"mem")
        self.assertTrue(self.store.down)


class _Rng:
    def getrandbits(self, n: int) -> int:
        return 7


class ReadYourWritesTests(SynchronousTestCase):
    """Issue #19 item 6: a response being saved answers the next lookup, whatever the store's latency."""

    def test_savingEntryIsVisibleBeforeTheStoreAnswers(self) -> None:
        """RFC 9111 §4.1: a Vary response is matched from the save in flight; once it lands, from the store."""
        from txgateway.caching.variants import VaryingStore

        pending: list[Deferred[Any]] = []

        class SlowStore:
            def __init__(self) -> None:
                self.data: dict[bytes, Any] = {}

            def get(self, key: bytes) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d.addCallback(lambda _: self.data.get(key))

            def set(self, key: bytes, value: Any, ttl: float) -> Deferred[None]:
                self.data[key] = value
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d

            def delete(self, key: bytes) -> Deferred[None]:
                self.data.pop(key, None)
                return succeed(None)

        clock = Clock()
        clock.advance(11)
        varying = VaryingStore(SlowStore(), clock, _Rng())  # type: ignore[arg-type]
        foo = {b"foo": [b"bar"]}
        e = entry(varyFields=(b"foo",), varyValues=(b"bar",))
        saved = Deferred.fromCoroutine(varying.save(b"k", e, None))
        found = self.successResultOf(Deferred.fromCoroutine(varying.lookup(b"k", foo.get)))
        self.assertIs(found[0], e)
        other = Deferred.fromCoroutine(varying.lookup(b"k", {b"foo": [b"baz"]}.get))
        while pending:
            pending.pop(0).callback(None)
        self.successResultOf(saved)
        self.assertEqual(self.successResultOf(other), (None, True))
        self.assertEqual(varying._saving, {})


class PurgeTests(SynchronousTestCase):
    """Issue #19 item 8: purging a route's memory store by URL, prefix, tag and route."""

    def setUp(self) -> None:
        from txgateway.caching.variants import VaryingStore

        self.clock = Clock()
        self.memory = MemoryStore(self.clock, 1_000_000)

        class Cache:
            store = self.memory
            entries = VaryingStore(self.memory, self.clock, _Rng())

            class config:
                tag_field = "Surrogate-Key"

        self.cache = Cache()
        for path, tags in ((b"/a", b"red blue"), (b"/a/b", b"red"), (b"/c", b"")):
            e = StoredResponse(200, b"OK", [(b"Surrogate-Key", tags)], b"x", 0.0, 0.0)
            self.memory.put(b"http://h" + path, e, 60)
        self.memory.put(b"http://h/v", VaryIndex((b"foo",), b"g"), 60)
        self.memory.put(b"http://h/v#g#1", entry(), 60)
        self.memory.put(b"http://h/v#g#2", entry(), 60)

    def purge(self, kind: str, value: str) -> int:
        from txgateway.caching.purging import purge

        return self.successResultOf(purge(self.cache, kind, value))  # type: ignore[arg-type]

    def test_urlTakesEveryVariant(self) -> None:
        """A URL purge removes the URL's response, or its Vary index and every variant."""
        self.assertEqual(self.purge("url", "http://h/v"), 2)
        self.assertEqual(self.purge("url", "http://h/a"), 1)
        self.assertEqual(len(self.memory), 2)

    def test_prefixTagAndRoute(self) -> None:
        """Prefix, tag (space-separated Surrogate-Key members) and route purges count stored responses."""
        self.assertEqual(self.purge("tag", "blue"), 1)
        self.assertEqual(self.purge("tag", "red"), 1)
        self.assertEqual(self.purge("prefix", "http://h/v"), 2)
        self.assertEqual(self.purge("route", "all"), 1)
        self.assertEqual(len(self.memory), 0)

    def test_evictionsCounted(self) -> None:
        """The status page's evictions: entries dropped for room."""
        small = MemoryStore(self.clock, 1000)
        for i in range(5):
            small.put(b"k%d" % i, entry(b"x" * 300), 60)
        self.assertEqual(small.evictions, 5 - len(small))
        self.assertTrue(small.evictions > 0)
