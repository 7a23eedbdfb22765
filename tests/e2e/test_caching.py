"""
End to end: the real gateway (twistd) with a cached route, against the real
scriptable origin (tests/e2e/backend.py C{/cacheable}) setting each header
combination, and for C{store: redis} a real redis-server shared by two
gateway processes.  Each test names the RFC section it shows.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import Backend, GatewayProcess, Response, request, simpleConfig, waitFor
from tests.redisserver import RedisServer


def url(key: str, **params: Any) -> str:
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    return f"/cacheable?key={key}" + (f"&{query}" if query else "")


class CachingEndToEndTests(SynchronousTestCase):
    cacheConfig = "{max_ttl: 60s}"

    def setUp(self) -> None:
        self.backend = Backend("origin").start()
        self.addCleanup(self.backend.stop)
        self.gateway = GatewayProcess(simpleConfig([self.backend.url], routeExtra=f"    cache: {self.cacheConfig}"))
        self.addCleanup(self.gateway.cleanup)
        self.addCleanup(self.gateway.stop)
        self.gateway.start()

    def get(self, path: str, headers: Any = None, method: str = "GET") -> Response:
        return self.gateway.request(method, path, headers)

    def seen(self, key: str) -> int:
        return int(request(self.backend.port, "GET", f"/cacheable-count?key={key}").body)

    def test_missThenHitWithAgeAndCacheStatus(self) -> None:
        """§3, §4, §5.1, RFC 9211: a fresh response is stored, then served with Age and Cache-Status: hit."""
        first = self.get(url("a", cc="max-age=30"))
        self.assertEqual(first.status, 200)
        self.assertEqual(first.header("Cache-Status"), "txgateway; fwd=uri-miss; fwd-status=200; stored")
        second = self.get(url("a", cc="max-age=30"))
        self.assertEqual(second.json()["n"], first.json()["n"])
        self.assertTrue(second.header("Cache-Status").startswith("txgateway; hit; ttl="), second.headers)
        self.assertIsNotNone(second.header("Age"))
        self.assertEqual(self.seen("a"), 1)
        metrics = self.get("/metrics").body.decode()
        self.assertIn('txgateway_cache_requests_total{result="hit",route="all"} 1.0', metrics)
        self.assertIn('txgateway_cache_requests_total{result="miss",route="all"} 1.0', metrics)

    def test_expiresAndDateFromTheOrigin(self) -> None:
        """§4.2.1, §4.2.3: Expires minus the origin's Date gives the lifetime; the Date-based apparent age counts."""
        self.get(url("e1", expires=30))
        self.assertTrue(self.get(url("e1", expires=30)).header("Cache-Status").startswith("txgateway; hit"))
        # Date 100 s ago, Expires 50 s ago: 50 s of lifetime, already 100 s old on arrival.
        self.get(url("e2", date=-100, expires=-50))
        again = self.get(url("e2", date=-100, expires=-50))
        self.assertFalse(again.header("Cache-Status").startswith("txgateway; hit"))
        self.assertEqual(self.seen("e2"), 2)

    def test_heuristicFreshnessFromLastModified(self) -> None:
        """§4.2.2: without explicit freshness a 200 with Last-Modified gets 10% of its age, capped by max_ttl."""
        self.get(url("h", lm=100000))
        hit = self.get(url("h", lm=100000))
        self.assertTrue(hit.header("Cache-Status").startswith("txgateway; hit; ttl="), hit.headers)
        ttl = int(hit.header("Cache-Status").rsplit("=", 1)[1])
        self.assertTrue(50 <= ttl <= 60, ttl)  # 10000 s heuristic, capped by max_ttl: 60s
        self.assertEqual(self.seen("h"), 1)

    def test_varyKeepsVariantsApart(self) -> None:
        """§4.1: responses that Vary on Accept are stored per Accept value."""
        js = {"Accept": "application/json"}
        xml = {"Accept": "text/xml"}
        path = url("v", cc="max-age=30", vary="Accept")
        self.assertEqual(self.get(path, js).json()["varied"], {"Accept": "application/json"})
        miss = self.get(path, xml)
        self.assertEqual(miss.json()["varied"], {"Accept": "text/xml"})
        self.assertTrue(miss.header("Cache-Status").startswith("txgateway; fwd=vary-miss"))
        self.assertEqual(self.get(path, js).json()["varied"], {"Accept": "application/json"})
        self.assertEqual(self.get(path, xml).json()["varied"], {"Accept": "text/xml"})
        self.assertEqual(self.seen("v"), 2)
        star = url("vs", cc="max-age=30", vary="*")
        self.get(star)
        self.assertEqual(self.get(star).header("Cache-Status"),
                         "txgateway; fwd=uri-miss; fwd-status=200; detail=vary-star")

    def test_setCookieAndPrivateAreNotShared(self) -> None:
        """§5.2.2.7 and the gateway's Set-Cookie rule: such responses always reach the origin."""
        for key, params in (("c", {"cc": "max-age=30", "cookie": 1}), ("p", {"cc": "private, max-age=30"})):
            self.get(url(key, **params))
            again = self.get(url(key, **params))
            self.assertIn("detail=", again.header("Cache-Status"))
            self.assertEqual(self.seen(key), 2)

    def test_authorizationNeedsPublic(self) -> None:
        """§3.5: a response to a request with Authorization is shared only when the origin says public."""
        alice = {"Authorization": "Bearer alice"}
        bob = {"Authorization": "Bearer bob"}
        self.get(url("auth1", cc="max-age=30", auth=1), alice)
        self.assertEqual(self.get(url("auth1", cc="max-age=30", auth=1), bob).header("Cache-Status"),
                         "txgateway; fwd=uri-miss; fwd-status=200; detail=authorization")
        self.get(url("auth2", cc="public, max-age=30", auth=1), alice)
        shared = self.get(url("auth2", cc="public, max-age=30", auth=1), bob)
        self.assertTrue(shared.header("Cache-Status").startswith("txgateway; hit"))
        self.assertEqual(self.seen("auth2"), 1)

    def test_staleResponseRevalidatedWithEtag(self) -> None:
        """§4.3.1, §4.3.4: a stale response is revalidated with If-None-Match and a 304 freshens it."""
        path = url("r", cc="max-age=30", etag='"v1"', age=31)
        first = self.get(path)
        again = self.get(path)
        self.assertEqual(again.header("Cache-Status"), "txgateway; fwd=stale; fwd-status=304; stored; ttl=-1")
        self.assertEqual(again.json()["n"], first.json()["n"])  # the stored body, not a new one
        self.assertEqual(self.seen("r"), 2)

    def test_clientConditionalGets304FromCache(self) -> None:
        """§4.3.2: the cache answers a client's matching If-None-Match with 304 itself."""
        path = url("cond", cc="max-age=30", etag='"x"')
        self.get(path)
        nm = self.get(path, {"If-None-Match": '"x"'})
        self.assertEqual((nm.status, nm.body), (304, b""))
        self.assertEqual(self.seen("cond"), 1)

    def test_staleIfErrorServesStoredOnOriginErrorAndOutage(self) -> None:
        """RFC 5861 §4: an origin error or an unreachable origin gets the stale response instead."""
        path = url("sie", cc="max-age=1, stale-if-error=600", age=5)
        first = self.get(path)
        request(self.backend.port, "GET", "/control/cacheable?key=sie&status=503")
        stale = self.get(path)
        self.assertEqual(stale.status, 200)
        self.assertEqual(stale.json()["n"], first.json()["n"])
        self.assertIn("fwd-status=503", stale.header("Cache-Status"))
        self.assertIn("detail=stale-if-error", stale.header("Cache-Status"))
        self.backend.stop()
        down = self.get(path)
        self.assertEqual(down.status, 200)
        self.assertIn("detail=stale-if-error", down.header("Cache-Status"))
        self.assertEqual(self.get(url("nothing", cc="max-age=30")).status, 502)

    def test_staleWhileRevalidate(self) -> None:
        """RFC 5861 §3: a stale response is served at once and revalidated in the background."""
        path = url("swr", cc="max-age=1, stale-while-revalidate=600", etag='"s"', age=5)
        self.get(path)
        stale = self.get(path)
        self.assertIn("detail=stale-while-revalidate", stale.header("Cache-Status"))
        waitFor(lambda: self.seen("swr") == 2, what="background revalidation")

    def test_concurrentMissesCollapse(self) -> None:
        """Collapsed forwarding: concurrent misses for one URL make a single origin request."""
        path = url("col", cc="max-age=30", ms=400)
        results: list[Response] = []

        def fetch() -> None:
            results.append(self.get(path))

        threads = [threading.Thread(target=fetch) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual(len(results), 6)
        self.assertEqual(self.seen("col"), 1)
        self.assertEqual({r.json()["n"] for r in results}, {1})
        statuses = [r.header("Cache-Status") for r in results]
        self.assertIn("txgateway; fwd=uri-miss; fwd-status=200; stored", statuses)
        self.assertTrue(any(s and "collapsed" in s for s in statuses), statuses)

    def test_onlyIfCached(self) -> None:
        """§5.2.1.7: only-if-cached with nothing stored is a 504 and never reaches the origin."""
        r = self.get(url("oic", cc="max-age=30"), {"Cache-Control": "only-if-cached"})
        self.assertEqual(r.status, 504)
        self.assertEqual(self.seen("oic"), 0)

    def test_unsafeMethodInvalidates(self) -> None:
        """§4.4: a successful POST invalidates the stored response for its URI and its Location."""
        target = url("inv", cc="max-age=30")
        self.get(target)
        self.get("/cacheable?key=item")
        post = self.get(target, method="POST")
        self.assertEqual(post.status, 201)
        self.assertEqual(post.header("Cache-Status"), "txgateway; fwd=method; fwd-status=201")
        self.assertTrue(self.get(target).header("Cache-Status").startswith("txgateway; fwd=uri-miss"))

    def test_headFromStoredGet(self) -> None:
        """RFC 9110 §9.3.2 with §4: HEAD is answered from the stored GET."""
        path = url("head", cc="max-age=30")
        body = self.get(path).body
        head = self.get(path, method="HEAD")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.header("Content-Length"), str(len(body)))
        self.assertTrue(head.header("Cache-Status").startswith("txgateway; hit"))
        self.assertEqual(self.seen("head"), 1)

    def test_bigResponsesStreamThroughUncached(self) -> None:
        """Gateway rule: responses above max_object_size (1 MiB by default) are relayed whole and not stored."""
        path = url("big", cc="max-age=30", bytes=2_000_000)
        r = self.get(path)
        self.assertEqual(len(r.body), 2_000_000)
        self.assertEqual(r.header("Cache-Status"), "txgateway; fwd=uri-miss; fwd-status=200; detail=too-big")
        self.get(path)
        self.assertEqual(self.seen("big"), 2)


class RedisSharedCacheTests(SynchronousTestCase):
    """store: redis shares entries between gateway replicas and survives Redis going away."""

    def setUp(self) -> None:
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.backend = Backend("origin").start()
        self.addCleanup(self.backend.stop)
        config = simpleConfig([self.backend.url], routeExtra="    cache: {store: redis}",
                              extra=f'stores: {{redis: "{self.redis.url}", redis_timeout: 200ms}}')
        self.gateways = []
        for _ in range(2):
            gw = GatewayProcess(config)
            self.addCleanup(gw.cleanup)
            self.addCleanup(gw.stop)
            self.gateways.append(gw.start())

    def test_replicasShareEntriesAndFallBackWhenRedisStops(self) -> None:
        """A response stored by one replica is a hit on the other; without Redis both still answer."""
        a, b = self.gateways
        path = url("shared", cc="max-age=30")
        first = a.request("GET", path)
        self.assertIn("stored", first.header("Cache-Status"))
        # The store to Redis follows the response to the client; shared means
        # the other replica sees it once it has landed.
        waitFor(lambda: self.redis.command("KEYS", "txgateway:cache:*"), what="the entry in Redis")
        hit = b.request("GET", path)
        self.assertTrue(hit.header("Cache-Status").startswith("txgateway; hit"), hit.headers)
        self.assertEqual(hit.json()["n"], first.json()["n"])
        self.redis.kill()
        down = a.request("GET", url("after", cc="max-age=30"))
        self.assertEqual(down.status, 200)
        self.assertEqual(a.request("GET", url("after", cc="max-age=30")).header("Cache-Status")[:14],
                         "txgateway; hit")
        metrics = a.request("GET", "/metrics").body.decode()
        self.assertIn('txgateway_store_fallbacks_total{store="redis",use="cache"}', metrics)
