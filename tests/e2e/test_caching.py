"""
End to end: the real gateway (twistd) with a cached route, against the real
scriptable origin (tests/e2e/backend.py C{/cacheable}) setting each header
combination, and for C{store: redis} a real redis-server shared by two
gateway processes.  Each test names the RFC section it shows.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import Backend, GatewayProcess, Response, raw, request, simpleConfig, waitFor
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


# ---------------------------------------------------------------------------
# Issue #19: the same tests with store: memory and store: redis.

HOST = "cache.test"  # an explicit Host, so that the cache key (for purges) is known: http://cache.test/...


def fields(path: str, *lines: str) -> str:
    """C{path} with exact response field lines for the origin to send (tests/e2e/backend.py C{hdr=})."""
    return path + "".join(f"&hdr={quote(line, safe='')}" for line in lines)


class _StoreConformance:
    """
    Issue #19's behaviours through the real gateway process; mixed into one
    test case per store so that every test runs with C{store: memory} and
    with C{store: redis} (a real redis-server) and must give the same result.
    """

    store = "memory"
    backend: Backend
    gateway: GatewayProcess

    # SynchronousTestCase's, for the mixin's type checking.
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any

    def setUp(self) -> None:
        self.backend = Backend("origin").start()
        self.addCleanup(self.backend.stop)
        self.storesLine = ""
        if self.store == "redis":
            self.redis = RedisServer().start()
            self.addCleanup(self.redis.cleanup)
            # A loaded test machine must not turn slow Redis replies into fallbacks (and misses).
            self.storesLine = f'stores: {{redis: "{self.redis.url}", redis_timeout: 2s}}\n'

    def start(self, cache: str = "", admin: bool = False) -> GatewayProcess:
        """A gateway whose one route caches with C{store:} this case's store and the keys in C{cache}."""
        keys = f"store: {self.store}, max_ttl: 1h" + (f", {cache}" if cache else "")
        extra = self.storesLine
        if admin:
            extra += 'admin:\n  listen: "tcp:0:interface=127.0.0.1"\n  token: s3cret\n'
        gateway = GatewayProcess(simpleConfig([self.backend.url], routeExtra=f"    cache: {{{keys}}}", extra=extra))
        self.addCleanup(gateway.cleanup)
        self.addCleanup(gateway.stop)
        self.gateway = gateway.start()
        return gateway

    def get(self, path: str, headers: dict[str, str] | None = None, gateway: GatewayProcess | None = None) -> Response:
        return (gateway or self.gateway).request("GET", path, {"Host": HOST, **(headers or {})})

    def seen(self, key: str) -> int:
        return int(request(self.backend.port, "GET", f"/cacheable-count?key={key}").body)

    def status(self, r: Response) -> str:
        return r.header("Cache-Status") or ""

    def assertHit(self, r: Response) -> None:
        self.assertTrue(self.status(r).startswith("txgateway; hit"), r.headers)

    def assertNotHit(self, r: Response) -> None:
        self.assertFalse(self.status(r).startswith("txgateway; hit"), r.headers)

    # -- 1. Expires

    def test_invalidExpiresIsAPastTime(self) -> None:
        """
        RFC 9111 §5.3 (with RFC 9110 §5.6.7): an Expires that is not an
        HTTP-date exactly (another zone, no comma, doubled spaces, dashes, a
        one-digit hour) or that comes twice is a time in the past: the
        response is stale at once and the next request goes to the origin.
        """
        self.start()
        bad = ["Sat, 11 Jun 2050 02:01:18 UTC", "Sat, 11 Jun 2050 02:01:18 PST", "Sat 11 Jun 2050 02:01:18 GMT",
               "Sat,  11 Jun 2050 02:01:18 GMT", "Sat, 11-Jun-2050 02:01:18 GMT", "Sat, 11 Jun 2050 2:01:18 GMT"]
        for i, value in enumerate(bad):
            path = fields(url(f"exp{i}"), f"Expires: {value}")
            self.get(path)
            self.assertNotHit(self.get(path))
            self.assertEqual(self.seen(f"exp{i}"), 2, value)
        two = fields(url("exp-two"), "Expires: Sat, 11 Jun 2050 02:01:18 GMT", "Expires: Sat, 11 Jun 2050 02:01:18 GMT")
        self.get(two)
        self.assertNotHit(self.get(two))
        good = fields(url("exp-good"), "Expires: Sat, 11 Jun 2050 02:01:18 GMT")
        self.get(good)
        self.assertHit(self.get(good))

    # -- 2. Age

    def test_ageListMakesTheResponseStale(self) -> None:
        """RFC 9111 §5.1: an Age list counts by its first member: `7200, 0` on max-age=3600 is stale, not a hit."""
        self.start()
        path = fields(url("agelist", cc="max-age=3600"), "Age: 7200, 0")
        self.get(path)
        self.assertNotHit(self.get(path))
        self.assertEqual(self.seen("agelist"), 2)
        fine = fields(url("agefine", cc="max-age=3600"), "Age: 10")
        self.get(fine)
        self.assertHit(self.get(fine))

    # -- 3. CDN-Cache-Control

    def test_cdnCacheControlTakesPrecedence(self) -> None:
        """
        RFC 9213 §2.1, §2.2: CDN-Cache-Control governs storing and freshness
        instead of Cache-Control (and Expires): max-age there stores what
        Cache-Control forbids; no-store, private or no-cache there keep from
        the cache what Cache-Control would let it keep.
        """
        self.start()
        cases = {
            "cdn-store": (url("cdn-store", cc="no-store"), "CDN-Cache-Control: max-age=60", True),
            "cdn-expires": (url("cdn-expires", expires=-100), "CDN-Cache-Control: max-age=60", True),
            "cdn-nostore": (url("cdn-nostore", cc="max-age=60"), "CDN-Cache-Control: no-store", False),
            "cdn-private": (url("cdn-private", cc="max-age=60"), "CDN-Cache-Control: private", False),
            "cdn-smaxage0": (url("cdn-smaxage0", cc="max-age=60"), "CDN-Cache-Control: s-maxage=0", False),
        }
        for key, (path, line, hits) in cases.items():
            path = fields(path, line)
            self.get(path)
            again = self.get(path)
            (self.assertHit if hits else self.assertNotHit)(again)
            self.assertEqual(self.seen(key), 1 if hits else 2, key)

    def test_targetedFieldsInPriorityOrder(self) -> None:
        """RFC 9213 §2.1: with targeted_fields [Gateway-Cache-Control, CDN-Cache-Control] the first present wins."""
        self.start("targeted_fields: [Gateway-Cache-Control, CDN-Cache-Control]")
        mine = fields(url("gcc1", cc="max-age=60"), "Gateway-Cache-Control: no-store", "CDN-Cache-Control: max-age=60")
        self.get(mine)
        self.assertNotHit(self.get(mine))
        cdn = fields(url("gcc2", cc="no-store"), "CDN-Cache-Control: max-age=60")
        self.get(cdn)
        self.assertHit(self.get(cdn))

    # -- 4. interim responses

    def rawGet(self, gateway: GatewayProcess, path: str, version: str = "HTTP/1.1") -> bytes:
        return raw(gateway.port, f"GET {path} {version}\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())

    def test_interimResponsesRelayedNeverStored(self) -> None:
        """
        RFC 9110 §15.2 (RFC 8297): 102 and 103 Early Hints reach an HTTP/1.1
        client before the final response, on a cached route and on a plain
        one; RFC 9111 §3: they are never stored, and a later hit carries
        none of their fields.  An HTTP/1.0 client gets none (§15.2).
        """
        gateway = self.start()
        first = self.rawGet(gateway, "/raw/early-hints")
        self.assertTrue(first.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                                         b"HTTP/1.1 200 OK\r\n"), first)
        hit = self.rawGet(gateway, "/raw/early-hints")
        self.assertTrue(hit.startswith(b"HTTP/1.1 200 OK\r\n"), hit)
        self.assertIn(b"Cache-Status: txgateway; hit", hit)
        self.assertNotIn(b"Link", hit)
        old = self.rawGet(gateway, "/raw/processing", "HTTP/1.0")
        self.assertTrue(old.startswith(b"HTTP/1.0 200 OK\r\n"), old)
        plain = GatewayProcess(simpleConfig([self.backend.url]))
        self.addCleanup(plain.cleanup)
        self.addCleanup(plain.stop)
        plain.start()
        both = self.rawGet(plain, "/raw/processing")
        self.assertTrue(both.startswith(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                                        b"Link: </a.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"), both)
        self.assertTrue(both.endswith(b"\r\n\r\nok"), both)

    # -- 5. serve_stale_on_error

    def test_serveStaleOnErrorWhenTheOriginFails(self) -> None:
        """
        RFC 9111 §4.2.4: with serve_stale_on_error a stale response is
        served when the origin fails (an error status, or no answer at all),
        with Cache-Status fwd=stale; never when must-revalidate,
        proxy-revalidate, no-cache or s-maxage (§5.2.2.10) forbid it.
        """
        self.start("serve_stale_on_error: 1h")
        ok = url("sse", cc="max-age=1", age=5)
        forbidden = {d: url(f"sse-{d}", cc=f"max-age=1, {d}", age=5)
                     for d in ("must-revalidate", "proxy-revalidate", "no-cache")}
        forbidden["s-maxage"] = url("sse-s-maxage", cc="s-maxage=1", age=5)
        first = self.get(ok)
        for path in forbidden.values():
            self.get(path)
        request(self.backend.port, "GET", "/control/cacheable?key=sse&status=500")
        stale = self.get(ok)
        self.assertEqual((stale.status, stale.json()["n"]), (200, first.json()["n"]))
        self.assertIn("fwd=stale; fwd-status=500", self.status(stale))
        self.assertIn("detail=serve-stale-on-error", self.status(stale))
        self.backend.stop()
        down = self.get(ok)
        self.assertEqual(down.status, 200)
        self.assertIn("fwd=stale", self.status(down))
        for directive, path in forbidden.items():
            self.assertEqual(self.get(path).status, 502, directive)

    # -- 6. read-your-writes

    def test_varyResponseVisibleRightAfterItIsServed(self) -> None:
        """RFC 9111 §4.1: two identical GETs back to back on a Vary response: the second is a hit, every time."""
        self.start()
        for i in range(20):
            path = url(f"ryw{i}", cc="max-age=60", vary="Foo")
            self.get(path, {"Foo": "bar"})
            self.assertHit(self.get(path, {"Foo": "bar"}))
            self.assertEqual(self.seen(f"ryw{i}"), 1)

    # -- 7. optional behaviours

    def test_rangeFromAStoredResponse(self) -> None:
        """
        RFC 9110 §14.2, §14.4, §13.1.5 with RFC 9111 §3.3: a Range request is
        answered from a stored complete response (206 and Content-Range; 416
        when unsatisfiable), and If-Range gets the range only when its
        validator matches, else the whole response.
        """
        self.start()
        path = url("range", cc="max-age=60", etag='"r1"')
        whole = self.get(path).body
        part = self.get(path, {"Range": "bytes=2-9"})
        self.assertEqual((part.status, part.body), (206, whole[2:10]))
        self.assertEqual(part.header("Content-Range"), f"bytes 2-9/{len(whole)}")
        self.assertHit(part)
        suffix = self.get(path, {"Range": "bytes=-5"})
        self.assertEqual((suffix.status, suffix.body), (206, whole[-5:]))
        self.assertEqual(self.get(path, {"Range": "bytes=5-", "If-Range": '"r1"'}).body, whole[5:])
        stale = self.get(path, {"Range": "bytes=5-", "If-Range": '"other"'})
        self.assertEqual((stale.status, stale.body), (200, whole))
        bad = self.get(path, {"Range": f"bytes={len(whole) + 10}-"})
        self.assertEqual((bad.status, bad.header("Content-Range")), (416, f"bytes */{len(whole)}"))
        self.assertEqual(self.seen("range"), 1)

    def test_acceptLanguageNormalisedForVary(self) -> None:
        """RFC 9111 §4.1: Accept-Language values differing in order, case or how q is written select one variant."""
        self.start()
        path = url("lang", cc="max-age=60", vary="Accept-Language")
        self.get(path, {"Accept-Language": "en-US, fr;q=0.5"})
        self.assertHit(self.get(path, {"Accept-Language": "FR;q=0.50,en-us"}))
        self.assertNotHit(self.get(path, {"Accept-Language": "de"}))
        self.assertEqual(self.seen("lang"), 2)

    def test_ifModifiedSinceAnsweredFromDate(self) -> None:
        """RFC 9111 §4.3.2 (RFC 9110 §13.1.3): without Last-Modified, a stored response's Date answers If-Modified-Since."""
        from email.utils import formatdate

        self.start()
        path = url("ims", cc="max-age=60", date=-10)
        self.get(path)
        later = self.get(path, {"If-Modified-Since": formatdate(usegmt=True)})
        self.assertEqual((later.status, later.body), (304, b""))
        earlier = self.get(path, {"If-Modified-Since": formatdate(1_000_000_000, usegmt=True)})
        self.assertEqual(earlier.status, 200)
        self.assertEqual(self.seen("ims"), 1)

    def test_notModifiedWithAnotherEtagIsNotRepeated(self) -> None:
        """
        RFC 9111 §4.3.4: a 304 whose ETag matches nothing stored updates
        nothing; the gateway answers from what it has instead of asking the
        origin again unconditionally.
        """
        self.start()
        path = url("etag304", cc="max-age=1", etag='"v1"', etag304='"v2"', age=5)
        first = self.get(path)
        again = self.get(path)
        self.assertEqual((again.status, again.json()["n"]), (200, first.json()["n"]))
        self.assertIn("fwd-status=304", self.status(again))
        self.assertEqual(self.seen("etag304"), 2)

    # -- 8. purge

    def purge(self, gateway: GatewayProcess, body: dict[str, str]) -> Response:
        return request(gateway.adminPort, "POST", "/api/cache/purge",
                       {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}, json.dumps(body).encode())

    def test_purgeByUrlPrefixTagAndRoute(self) -> None:
        """
        Gateway rule (RFC 9111 §4.4 leaves purging to the cache's operator):
        POST /api/cache/purge removes what one URL, a URL prefix, a tag
        (Surrogate-Key) or a route stored, and answers how many responses went.
        """
        gateway = self.start(admin=True)
        self.assertEqual(request(gateway.adminPort, "POST", "/api/cache/purge", {}, b'{"url": "x"}').status, 401)
        self.assertEqual(self.purge(gateway, {"colour": "red"}).status, 400)
        one = url("pu1", cc="max-age=60")
        self.get(one)
        self.assertEqual(self.purge(gateway, {"url": f"http://{HOST}{one}"}).json(), {"purged": 1})
        self.assertNotHit(self.get(one))
        for k in ("pp-a", "pp-b"):
            self.get(url(k, cc="max-age=60"))
        self.assertEqual(self.purge(gateway, {"prefix": f"http://{HOST}/cacheable?key=pp-"}).json(), {"purged": 2})
        self.assertNotHit(self.get(url("pp-a", cc="max-age=60")))
        tagged = [fields(url(f"tag{i}", cc="max-age=60"), f"Surrogate-Key: t{i} shared") for i in range(3)]
        for path in tagged:
            self.get(path)
        self.assertEqual(self.purge(gateway, {"tag": "t1"}).json(), {"purged": 1})
        self.assertHit(self.get(tagged[0]))
        self.assertNotHit(self.get(tagged[1]))
        self.assertEqual(self.purge(gateway, {"tag": "shared"}).json(), {"purged": 3})
        self.assertNotHit(self.get(tagged[2]))
        self.assertTrue(self.purge(gateway, {"route": "all"}).json()["purged"] >= 1)
        self.assertNotHit(self.get(tagged[2]))
        self.assertEqual(self.purge(gateway, {"route": "nope"}).status, 404)

    def test_statusShowsEachRoutesCache(self) -> None:
        """The admin status (API and page) shows each cached route's entries, bytes, hit ratio and evictions."""
        gateway = self.start(admin=True)
        path = url("stats", cc="max-age=60")
        self.get(path)
        self.get(path)
        auth = {"Authorization": "Bearer s3cret"}
        route = request(gateway.adminPort, "GET", "/api/status", auth).json()["routes"][0]
        stats = route["cache_store"]
        self.assertEqual((stats["store"], stats["hit_ratio"]), (self.store, 0.5))
        self.assertEqual(set(stats), {"store", "hit_ratio", "entries", "bytes", "evictions"})
        if self.store == "memory":
            self.assertEqual(stats["entries"], 1)
            self.assertTrue(stats["bytes"] > 0)
        page = request(gateway.adminPort, "GET", "/", auth).body.decode()
        self.assertIn('data-cache="all"', page)

    # -- 9. Set-Cookie

    def test_storeSetCookieOptIn(self) -> None:
        """RFC 9111 §3 permits storing Set-Cookie responses; store_set_cookie opts a route in (default: not shared)."""
        self.start("store_set_cookie: true")
        path = url("cookie", cc="max-age=60", cookie=1)
        first = self.get(path)
        again = self.get(path)
        self.assertHit(again)
        self.assertEqual(again.header("Set-Cookie"), first.header("Set-Cookie"))
        self.assertEqual(self.seen("cookie"), 1)


class MemoryStoreConformanceTests(_StoreConformance, SynchronousTestCase):
    store = "memory"


class RedisStoreConformanceTests(_StoreConformance, SynchronousTestCase):
    store = "redis"

    def test_purgeReachesEveryReplica(self) -> None:
        """A purge on one replica's admin listener removes the entry from Redis for every replica."""
        a = self.start(admin=True)
        b = self.start(admin=True)
        path = url("replicas", cc="max-age=60")
        self.get(path, gateway=a)
        # Another replica sees the entry once the write has landed (read-your-writes is per gateway).
        waitFor(lambda: self.redis.command("KEYS", "txgateway:cache:*"), what="the entry in Redis")
        self.assertHit(self.get(path, gateway=b))
        self.assertEqual(self.purge(b, {"url": f"http://{HOST}{path}"}).json(), {"purged": 1})
        self.assertNotHit(self.get(path, gateway=a))
