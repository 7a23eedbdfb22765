"""
L{txgateway.caching.flow.ResponseCache} wrapping a route's forwarder: the whole cached exchange, with a
scripted upstream (a fake L{IForwarder} the cache wraps), the real forward sequence writing
to a real twisted.web request, and a L{Clock}.  Each test names the RFC
section it checks.
"""

from __future__ import annotations

import random
from io import BytesIO
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txgateway.attempts import UpstreamFailure
from txgateway.caching import flow as caching
from txgateway.caching.stores import MemoryStore, RedisStore
from txgateway.config import (
    CacheConfig,
    GatewayConfig,
    HeaderOps,
    HeaderRules,
    MatchConfig,
    RouteConfig,
    ServerConfig,
    StoresConfig,
)
from txgateway.context import RequestContext
from txgateway.forwarding import forward
from txgateway.http.messages import Messages
from txgateway.http.request import GatewayRequest
from txgateway.interfaces import IForwarder
from txgateway.middleware import Deps
from txgateway.observe import Metrics
from txgateway.routing import CompiledRoute

T0 = 1_700_000_000.0


class _Transport:
    def __init__(self) -> None:
        self.stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    """An upstream IResponse whose body the test releases."""

    def __init__(self, code: int = 200, headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...] = (),
                 body: bytes = b"hello", hold: bool = False, length: Any = None, phrase: bytes = b"OK") -> None:
        self.code = code
        self.phrase = phrase
        self.headers = Headers()
        for k, v in headers:
            self.headers.addRawHeader(k, v)
        self.body = body
        self.length = len(body) if length is None else length
        self.hold = hold
        self.protocol: Any = None
        self.transport = _Transport()

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        if not self.hold:
            self.finish()

    def finish(self, broken: bool = False) -> None:
        if self.body:
            self.protocol.dataReceived(self.body)
        reason = Failure(ResponseFailed([Failure(Exception("cut"))])) if broken else Failure(ResponseDone())
        self.protocol.connectionLost(reason)


class _Exchange:
    """What the scripted upstream gives: a response, and an in-flight slot its finish gives back."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.inFlight = 1

    def finish(self, complete: bool, clientGone: bool = False) -> None:
        self.inFlight -= 1


@implementer(IForwarder)
class FakeRuntime:
    """Stands for the route's attempt loop (an IForwarder): a scripted fetch."""

    def __init__(self, clock: Clock, metrics: Metrics) -> None:
        self.clock = clock
        self.messages = Messages(ServerConfig())
        self.queue: list[Any] = []
        self.calls: list[tuple[RequestContext, bytes | None, dict[bytes, bytes]]] = []
        self.endpoints: list[_Exchange] = []

    def script(self, *items: Any) -> None:
        self.queue.extend(items)

    async def fetch(self, context: RequestContext, method: bytes | None = None,
                    extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Any:
        self.calls.append((context, method, dict(extraHeaders or [])))
        item = self.queue.pop(0)
        if isinstance(item, Deferred):
            item = await item
        if isinstance(item, Exception):
            raise item
        context.upstream = "u"
        exchange = _Exchange(item)
        self.endpoints.append(exchange)
        return exchange

    def inFlight(self) -> int:
        return sum(e.inFlight for e in self.endpoints)


class Exchange:
    """One client request through the cache, and what went out on the wire."""

    def __init__(self, context: RequestContext, done: Deferred[None], channel: DummyChannel) -> None:
        self.context = context
        self.done = done
        self.channel = channel  # a finished request forgets its channel

    @property
    def request(self) -> Any:
        return self.context.request

    def parse(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        raw = self.channel.transport.written.getvalue()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        if any(k.lower() == b"transfer-encoding" for k, _ in headers):
            out = b""
            while body:
                size, _, rest = body.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    break
                out += rest[:n]
                body = rest[n + 2:]
            body = out
        return status, headers, body  # type: ignore[return-value]

    @property
    def status(self) -> int:
        return self.parse()[0]

    @property
    def body(self) -> bytes:
        return self.parse()[2]

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.parse()[1]:
            if k.lower() == name.lower():
                return v
        return None

    def headers(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.parse()[1] if k.lower() == name.lower()]

    @property
    def cacheStatus(self) -> bytes | None:
        return self.header(b"cache-status")


def route(cache: CacheConfig | None = None, headers: HeaderRules = HeaderRules()) -> CompiledRoute:  # noqa: B008
    return CompiledRoute(RouteConfig(name="api", index=0, match=MatchConfig(path_prefix="/"), upstream="u",
                                     cache=cache, headers=headers))


def date(t: float) -> bytes:
    return datetimeToString(int(t))


class CacheTestCase(SynchronousTestCase):
    config = CacheConfig()
    routeHeaders = HeaderRules()

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.metrics = Metrics(CollectorRegistry(), processMetrics=False)
        self.runtime = FakeRuntime(self.clock, self.metrics)
        self.store = MemoryStore(self.clock, 10_000_000)
        self.route = route(self.config, self.routeHeaders)
        self.cache = caching.ResponseCache("api", self.config, self.store, self.clock, self.metrics,
                                           random.Random(1))

    def send(self, method: bytes = b"GET", uri: bytes = b"/things?a=1", headers: tuple[tuple[bytes, bytes], ...] = (),
             forwardHeaders: tuple[tuple[bytes, bytes], ...] = ()) -> Exchange:
        channel = DummyChannel()
        channel.transport.abortConnection = lambda: None  # type: ignore[attr-defined]
        request = GatewayRequest(channel)
        request.method = method
        request.uri = uri
        request.clientproto = b"HTTP/1.1"
        request.content = BytesIO()
        request.requestHeaders.setRawHeaders(b"host", [b"api.example.com"])
        for k, v in headers:
            request.requestHeaders.addRawHeader(k, v)
        path, _, query = uri.partition(b"?")
        context = RequestContext(request, self.clock.seconds(), "rid", "10.0.0.9", "10.0.0.9", method,
                                 "api.example.com", path.decode(), query if b"?" in uri else None)
        context.route = self.route
        context.forwardHeaders = list(forwardHeaders)
        request.context = context
        d = ensureDeferred(forward(context, self.cache.wrap(self.runtime), self.runtime.messages))
        return Exchange(context, d, channel)

    def get(self, *args: Any, **kwargs: Any) -> Exchange:
        """A request that must complete synchronously."""
        ex = self.send(*args, **kwargs)
        self.successResultOf(ex.done)
        return ex

    def counted(self, result: str) -> float:
        return self.metrics.registry.get_sample_value("txgateway_cache_requests_total",
                                                      {"route": "api", "result": result}) or 0.0

    def ok(self, cc: bytes = b"max-age=60", *more: tuple[bytes, bytes], body: bytes = b"hello",
           **kw: Any) -> FakeResponse:
        return FakeResponse(200, [(b"Cache-Control", cc), (b"Date", date(self.clock.seconds())), *more],
                            body, **kw)

    def tearDown(self) -> None:
        self.assertEqual(self.runtime.inFlight(), 0, "every forwarded endpoint must be finished")


class MissAndHitTests(CacheTestCase):
    def test_cacheWrapsAForwarderAsAForwarder(self) -> None:
        """The cache in front of a route's forwarder is itself an IForwarder, as ContentDecoderAgent is an IAgent."""
        self.assertTrue(verifyObject(IForwarder, self.cache.wrap(self.runtime)))

    def test_missIsStoredThenHit(self) -> None:
        """§3, §4: a storable response is stored on a miss and reused while fresh, without the origin."""
        self.runtime.script(self.ok(body=b"v1"))
        first = self.get()
        self.assertEqual((first.status, first.body), (200, b"v1"))
        self.assertEqual(first.cacheStatus, b"txgateway; fwd=uri-miss; fwd-status=200; stored")
        self.assertEqual(first.context.cacheStatus, "miss")
        self.clock.advance(5)
        second = self.get()
        self.assertEqual((second.status, second.body), (200, b"v1"))
        self.assertEqual(second.cacheStatus, b"txgateway; hit; ttl=55")
        self.assertEqual(second.header(b"age"), b"5")
        self.assertEqual(second.context.cacheStatus, "hit")
        self.assertEqual(len(self.runtime.calls), 1)
        self.assertEqual((self.counted("miss"), self.counted("hit")), (1, 1))

    def test_hitCarriesAgeViaLengthAndRequestId(self) -> None:
        """§5.1: every cached response has Age; RFC 9110 §7.6.3: Via; the body length is exact."""
        self.runtime.script(self.ok((b"max-age=60"), (b"Age", b"7"), (b"Via", b"1.1 origin-cache")))
        self.get()
        hit = self.get()
        self.assertEqual(hit.header(b"age"), b"7")
        self.assertEqual(hit.headers(b"via"), [b"1.1 origin-cache, 1.1 txgateway"]
                         if len(hit.headers(b"via")) == 1 else [b"1.1 origin-cache", b"1.1 txgateway"])
        self.assertEqual(hit.header(b"content-length"), b"5")
        self.assertEqual(hit.header(b"x-request-id"), b"rid")
        self.assertIsNone(hit.header(b"server"))

    def test_routeResponseRulesApplyToHits(self) -> None:
        """A hit looks like a forwarded response: the route's response header rules apply."""
        self.route = route(self.config, HeaderRules(response=HeaderOps(set=(("X-Set", "1"),), remove=("X-Drop",))))
        self.runtime.script(self.ok(b"max-age=60", (b"X-Drop", b"secret")))
        miss = self.get()
        hit = self.get()
        for ex in (miss, hit):
            self.assertIsNone(ex.header(b"x-drop"))
            self.assertEqual(ex.header(b"x-set"), b"1")

    def test_headAnsweredFromStoredGet(self) -> None:
        """§4 with RFC 9110 §9.3.2: a stored GET response answers HEAD, without a body."""
        self.runtime.script(self.ok(body=b"12345678"))
        self.get()
        head = self.get(b"HEAD")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.header(b"content-length"), b"8")
        self.assertEqual(len(self.runtime.calls), 1)

    def test_headMissIsForwardedNotStored(self) -> None:
        """§3: only GET responses are stored; a HEAD miss goes to the origin as HEAD."""
        self.runtime.script(FakeResponse(200, [(b"Cache-Control", b"max-age=60")], b""), self.ok())
        head = self.get(b"HEAD")
        self.assertEqual(head.cacheStatus, b"txgateway; fwd=uri-miss; fwd-status=200")
        self.get()
        self.assertEqual(len(self.runtime.calls), 2)

    def test_queryIsPartOfTheKey(self) -> None:
        """§4: the stored response is reused only for the same target URI."""
        self.runtime.script(self.ok(body=b"a"), self.ok(body=b"b"))
        self.assertEqual(self.get(uri=b"/things?a=1").body, b"a")
        self.assertEqual(self.get(uri=b"/things?a=2").body, b"b")
        self.assertEqual(self.get(uri=b"/things?a=1").body, b"a")

    def test_clientConditionalAnsweredWith304(self) -> None:
        """§4.3.2: a client's If-None-Match matching the stored ETag gets a 304 from the cache."""
        self.runtime.script(self.ok(b"max-age=60", (b"ETag", b'"v1"'), (b"Content-Type", b"text/plain")))
        self.get()
        nm = self.get(headers=((b"If-None-Match", b'"v1"'),))
        self.assertEqual((nm.status, nm.body), (304, b""))
        self.assertEqual(nm.header(b"etag"), b'"v1"')
        self.assertIsNone(nm.header(b"content-type"))
        self.assertIsNone(nm.header(b"content-length"))
        self.assertEqual(len(self.runtime.calls), 1)

    def test_rangeRequestsBypass(self) -> None:
        """§3.3: this cache stores whole responses only; a Range request is passed through."""
        self.runtime.script(FakeResponse(206, [(b"Content-Range", b"bytes 0-1/5")], b"he"))
        ex = self.get(headers=((b"Range", b"bytes=0-1"),))
        self.assertEqual(ex.status, 206)
        self.assertEqual(ex.cacheStatus, b"txgateway; fwd=bypass; fwd-status=206; detail=range")
        self.assertEqual(len(self.store), 0)

    def test_unknownLengthBodyStoredWhenComplete(self) -> None:
        """§3.1: a complete response of unknown length (chunked) is stored once fully received."""
        self.runtime.script(self.ok(length=UNKNOWN_LENGTH, body=b"chunky"))
        self.get()
        self.assertEqual(self.get().body, b"chunky")

    def test_incompleteBodyNotStored(self) -> None:
        """§3.3: a response whose body was cut off must not be stored as complete."""
        resp = self.ok(hold=True, length=UNKNOWN_LENGTH)
        self.runtime.script(resp)
        ex = self.send()
        resp.finish(broken=True)
        self.successResultOf(ex.done)
        self.assertEqual(len(self.store), 0)


class RefusalTests(CacheTestCase):
    def refused(self, response: FakeResponse, detail: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.runtime.script(response, FakeResponse(200, [], b"again"))
        ex = self.get(headers=headers)
        self.assertEqual(ex.cacheStatus, b"txgateway; fwd=uri-miss; fwd-status=%d; detail=%s" % (response.code, detail))
        self.assertEqual(self.get(headers=headers).body, b"again")
        self.assertEqual(len(self.runtime.calls), 2)

    def test_noStore(self) -> None:
        """§5.2.2.5: no-store responses are not stored."""
        self.refused(self.ok(b"no-store"), b"no-store")

    def test_requestNoStore(self) -> None:
        """§5.2.1.5: a request's no-store keeps its response out of the cache."""
        self.refused(self.ok(), b"no-store", headers=((b"Cache-Control", b"no-store"),))

    def test_private(self) -> None:
        """§5.2.2.7: a shared cache does not store private responses."""
        self.refused(self.ok(b"private, max-age=60"), b"private")

    def test_authorizationWithoutPermission(self) -> None:
        """§3.5: a response to a request with Authorization needs public/s-maxage/must-revalidate."""
        self.refused(self.ok(b"max-age=60"), b"authorization", headers=((b"Authorization", b"Bearer t"),))

    def test_authorizationWithPublicIsShared(self) -> None:
        """§3.5: public lets the response to an authorised request be stored and shared."""
        self.runtime.script(self.ok(b"public, max-age=60", body=b"shared"))
        self.get(headers=((b"Authorization", b"Bearer alice"),))
        self.assertEqual(self.get(headers=((b"Authorization", b"Bearer bob"),)).body, b"shared")
        self.assertEqual(len(self.runtime.calls), 1)

    def test_setCookie(self) -> None:
        """Gateway rule (§3 permits, we decline): a response setting a cookie is not stored."""
        self.refused(self.ok(b"max-age=60", (b"Set-Cookie", b"sid=1")), b"set-cookie")

    def test_varyStar(self) -> None:
        """§4.1: Vary: * never matches; such responses are not stored."""
        self.refused(self.ok(b"max-age=60", (b"Vary", b"*")), b"vary-star")

    def test_notCacheableStatus(self) -> None:
        """§3: a 302 without explicit freshness is not cacheable by default."""
        self.refused(FakeResponse(302, [(b"Location", b"/x")], b""), b"status")

    def test_tooBigStreamsThrough(self) -> None:
        """Gateway rule: a response larger than max_object_size streams to the client uncached."""
        self.cache.maxObject = 4
        self.refused(self.ok(body=b"0123456789"), b"too-big")

    def test_tooBigOfUnknownLengthIsDroppedWhileStreaming(self) -> None:
        """Gateway rule: a chunked body that outgrows max_object_size is relayed whole and not stored."""
        self.cache.maxObject = 4
        self.runtime.script(self.ok(body=b"0123456789", length=UNKNOWN_LENGTH))
        ex = self.get()
        self.assertEqual(ex.body, b"0123456789")
        self.assertEqual(len(self.store), 0)


class VaryTests(CacheTestCase):
    def test_variantsAreStoredSeparately(self) -> None:
        """§4.1: a response with Vary is reused only for requests whose nominated fields match."""
        self.runtime.script(self.ok(b"max-age=60", (b"Vary", b"Accept"), body=b"json"),
                            self.ok(b"max-age=60", (b"Vary", b"Accept"), body=b"xml"))
        js = ((b"Accept", b"application/json"),)
        xml = ((b"Accept", b"text/xml"),)
        self.assertEqual(self.get(headers=js).body, b"json")
        other = self.get(headers=xml)
        self.assertEqual(other.body, b"xml")
        self.assertEqual(other.cacheStatus, b"txgateway; fwd=vary-miss; fwd-status=200; stored")
        self.assertEqual(self.get(headers=js).body, b"json")
        self.assertEqual(self.get(headers=((b"Accept", b"application/json"),)).cacheStatus[:14], b"txgateway; hit")
        self.assertEqual(self.get(headers=xml).body, b"xml")
        self.assertEqual(len(self.runtime.calls), 2)

    def test_varyOnTheForwardedIdentity(self) -> None:
        """§4.1: Vary names request fields as the origin received them, so the gateway's identity header counts."""
        self.runtime.script(self.ok(b"max-age=60", (b"Vary", b"X-Consumer"), body=b"alice's"),
                            self.ok(b"max-age=60", (b"Vary", b"X-Consumer"), body=b"bob's"))
        # A client claiming to be bob is overridden by the identity the gateway forwards.
        self.assertEqual(self.get(headers=((b"X-Consumer", b"bob"),),
                                  forwardHeaders=((b"X-Consumer", b"alice"),)).body, b"alice's")
        self.assertEqual(self.get(forwardHeaders=((b"X-Consumer", b"bob"),)).body, b"bob's")
        self.assertEqual(self.get(forwardHeaders=((b"X-Consumer", b"alice"),)).body, b"alice's")
        self.assertEqual(len(self.runtime.calls), 2)

    def test_invalidationReachesEveryVariant(self) -> None:
        """§4.4: invalidating the URI makes all its stored variants unusable."""
        self.runtime.script(self.ok(b"max-age=60", (b"Vary", b"Accept"), body=b"a"),
                            FakeResponse(204, [], b""),
                            self.ok(b"max-age=60", (b"Vary", b"Accept"), body=b"a2"))
        h = ((b"Accept", b"a"),)
        self.get(headers=h)
        self.get(b"DELETE")
        self.assertEqual(self.get(headers=h).body, b"a2")


class ValidationTests(CacheTestCase):
    def test_staleIsRevalidatedWith304(self) -> None:
        """§4.3.1, §4.3.4: a stale response is validated with If-None-Match/If-Modified-Since; a 304 freshens it."""
        lm = date(T0 - 1000)
        self.runtime.script(self.ok(b"max-age=10", (b"ETag", b'"v1"'), (b"Last-Modified", lm), (b"X-Old", b"1"),
                                    body=b"stored"))
        self.get()
        self.clock.advance(20)
        self.runtime.script(FakeResponse(304, [(b"ETag", b'"v1"'), (b"Cache-Control", b"max-age=100"),
                                               (b"X-Old", b"2"), (b"Date", date(self.clock.seconds()))], b""))
        ex = self.get()
        self.assertEqual(self.runtime.calls[1][2], {b"If-None-Match": b'"v1"', b"If-Modified-Since": lm})
        self.assertEqual((ex.status, ex.body), (200, b"stored"))
        self.assertEqual(ex.header(b"x-old"), b"2")
        self.assertEqual(ex.header(b"age"), b"0")
        self.assertEqual(ex.cacheStatus, b"txgateway; fwd=stale; fwd-status=304; stored; ttl=100")
        self.assertEqual(ex.context.cacheStatus, "revalidated")
        self.clock.advance(50)
        self.assertEqual(self.get().cacheStatus, b"txgateway; hit; ttl=50")
        self.assertEqual(len(self.runtime.calls), 2)

    def test_staleReplacedByNewResponse(self) -> None:
        """§4.3.3: a full response to a validation request replaces the stored one."""
        self.runtime.script(self.ok(b"max-age=10", (b"ETag", b'"v1"'), body=b"old"))
        self.get()
        self.clock.advance(20)
        self.runtime.script(self.ok(b"max-age=10", (b"ETag", b'"v2"'), body=b"new"))
        ex = self.get()
        self.assertEqual(ex.body, b"new")
        self.assertEqual(ex.cacheStatus, b"txgateway; fwd=stale; fwd-status=200; stored")
        self.assertEqual(self.get().body, b"new")

    def test_unmatched304IsNotRelayedToAnUnconditionalClient(self) -> None:
        """
        §4.3.4: a 304 whose validator matches nothing stored updates nothing
        and is not relayed to a client that did not ask conditionally; the
        client gets the stored response, and (issue #19) the origin is not
        asked again unconditionally.
        """
        self.runtime.script(self.ok(b"max-age=10", (b"ETag", b'"v1"'), body=b"old"))
        self.get()
        self.clock.advance(20)
        self.runtime.script(FakeResponse(304, [(b"ETag", b'"v9"')], b""), self.ok(b"max-age=10", body=b"new"))
        ex = self.get()
        self.assertEqual((ex.status, ex.body), (200, b"old"))
        self.assertEqual(len(self.runtime.calls), 2)
        self.assertIn(b"detail=validator-mismatch", ex.cacheStatus)

    def test_staleWithoutValidatorIsRefetched(self) -> None:
        """§4.3.1: without a validator the request is forwarded unconditionally."""
        self.runtime.script(self.ok(b"max-age=10, stale-if-error=600", body=b"old"), self.ok(body=b"new"))
        self.get()
        self.clock.advance(20)
        self.assertEqual(self.get().body, b"new")
        self.assertEqual(self.runtime.calls[1][2], {})

    def test_requestNoCacheValidates(self) -> None:
        """§5.2.1.4: the client's no-cache makes even a fresh response go to the origin first."""
        self.runtime.script(self.ok(b"max-age=60", (b"ETag", b'"v1"')),
                            FakeResponse(304, [(b"ETag", b'"v1"')], b""))
        self.get()
        ex = self.get(headers=((b"Cache-Control", b"no-cache"),))
        self.assertEqual(ex.cacheStatus, b"txgateway; fwd=request; fwd-status=304; stored; ttl=60")
        self.assertEqual(len(self.runtime.calls), 2)

    def test_responseNoCacheValidatesEveryTime(self) -> None:
        """§5.2.2.4: a no-cache response is stored but validated before each reuse."""
        self.runtime.script(self.ok(b"no-cache", (b"ETag", b'"v1"')),
                            FakeResponse(304, [(b"ETag", b'"v1"')], b""),
                            FakeResponse(304, [(b"ETag", b'"v1"')], b""))
        self.get()
        self.assertEqual(self.get().body, b"hello")
        self.assertEqual(self.get().body, b"hello")
        self.assertEqual(len(self.runtime.calls), 3)

    def test_maxTTLCapsFreshness(self) -> None:
        """Gateway rule: cache.max_ttl caps the origin's freshness."""
        self.cache.maxTTL = 60
        self.runtime.script(self.ok(b"s-maxage=3600", (b"ETag", b'"v1"')))
        self.get()
        self.clock.advance(59)
        self.assertEqual(self.get().cacheStatus, b"txgateway; hit; ttl=1")
        self.clock.advance(2)
        self.runtime.script(FakeResponse(304, [(b"ETag", b'"v1"')], b""))
        self.assertEqual(self.get().context.cacheStatus, "revalidated")

    def test_onlyIfCachedWithNothingIs504(self) -> None:
        """§5.2.1.7: only-if-cached with nothing usable gets 504, without contacting the origin."""
        ex = self.get(headers=((b"Cache-Control", b"only-if-cached"),))
        self.assertEqual(ex.status, 504)
        self.assertEqual(ex.cacheStatus, b"txgateway; detail=only-if-cached")
        self.assertEqual(self.runtime.calls, [])

    def test_onlyIfCachedServesFreshAndRefusesStale(self) -> None:
        """§5.2.1.7: only-if-cached is answered from a usable stored response, else 504."""
        self.runtime.script(self.ok(b"max-age=10", (b"ETag", b'"v"')))
        self.get()
        oic = ((b"Cache-Control", b"only-if-cached"),)
        self.assertEqual(self.get(headers=oic).status, 200)
        self.clock.advance(11)
        self.assertEqual(self.get(headers=oic).status, 504)
        self.assertEqual(self.get(headers=((b"Cache-Control", b"only-if-cached, max-stale=5"),)).status, 200)
        self.assertEqual(len(self.runtime.calls), 1)

    def test_maxStaleServesStale(self) -> None:
        """§5.2.1.2: a client's max-stale lets the cache serve a stale response without the origin."""
        self.runtime.script(self.ok(b"max-age=10"))
        self.get()
        self.clock.advance(13)
        ex = self.get(headers=((b"Cache-Control", b"max-stale=5"),))
        self.assertEqual(ex.cacheStatus, b"txgateway; hit; ttl=-3; detail=max-stale")
        self.assertEqual(ex.header(b"age"), b"13")
        self.assertEqual(ex.context.cacheStatus, "stale")

    def test_headWithStaleEntryIsForwarded(self) -> None:
        """§4.3: a HEAD that cannot use the stale GET goes to the origin as HEAD."""
        self.runtime.script(self.ok(b"max-age=10", (b"ETag", b'"v"')), FakeResponse(200, [], b""))
        self.get()
        self.clock.advance(20)
        ex = self.get(b"HEAD")
        self.assertEqual(ex.cacheStatus, b"txgateway; fwd=stale; fwd-status=200")
        self.assertEqual(self.runtime.calls[1][2], {})


class StaleTests(CacheTestCase):
    def test_staleIfErrorOnUpstreamFailure(self) -> None:
        """RFC 5861 §4: when the origin cannot be reached, a response within stale-if-error is served."""
        self.runtime.script(self.ok(b"max-age=10, stale-if-error=60", body=b"old"),
                            UpstreamFailure(502, "connect_failure"))
        self.get()
        self.clock.advance(30)
        ex = self.get()
        self.assertEqual((ex.status, ex.body), (200, b"old"))
        self.assertEqual(ex.cacheStatus, b"txgateway; fwd=stale; fwd-status=502; ttl=-20; detail=stale-if-error")
        self.assertEqual(ex.header(b"age"), b"30")

    def test_staleIfErrorOnErrorStatus(self) -> None:
        """RFC 5861 §4: a 500/502/503/504 from the origin is replaced by the stale response."""
        self.runtime.script(self.ok(b"max-age=10, stale-if-error=60", (b"ETag", b'"v"'), body=b"old"),
                            FakeResponse(503, [], b"down"))
        self.get()
        self.clock.advance(30)
        ex = self.get()
        self.assertEqual(ex.body, b"old")
        self.assertEqual(ex.cacheStatus[:45], b"txgateway; fwd=stale; fwd-status=503; ttl=-20")

    def test_errorPassesThroughBeyondTheWindow(self) -> None:
        """RFC 5861 §4: beyond stale-if-error the error is written through."""
        self.runtime.script(self.ok(b"max-age=10, stale-if-error=5", (b"ETag", b'"v"')),
                            FakeResponse(503, [], b"down"), UpstreamFailure(504, "timeout"))
        self.get()
        self.clock.advance(30)
        self.assertEqual(self.get().status, 503)
        self.assertEqual(self.get().status, 504)  # the UpstreamFailure's status, as the client gets it

    def test_failureWithoutStaleStillCarriesCacheStatus(self) -> None:
        """RFC 9211: the gateway's 502/503/504 on a cached route says the cache forwarded."""
        self.runtime.script(UpstreamFailure(502, "connect_failure"))
        ex = self.get()
        self.assertEqual(ex.status, 502)
        self.assertIn((b"Cache-Status", b"txgateway; fwd=uri-miss; detail=upstream-failure"),
                      ex.context.responseHeaders)

    def test_staleWhileRevalidate(self) -> None:
        """RFC 5861 §3: within the window the stale response is served at once and revalidated in the background."""
        self.runtime.script(self.ok(b"max-age=10, stale-while-revalidate=30", (b"ETag", b'"v1"'), body=b"old"))
        self.get()
        self.clock.advance(15)
        held: Deferred[Any] = Deferred()
        self.runtime.script(held)
        ex = self.get()
        self.assertEqual(ex.body, b"old")
        self.assertEqual(ex.cacheStatus, b"txgateway; hit; ttl=-5; detail=stale-while-revalidate")
        self.assertEqual(len(self.runtime.calls), 2)
        bg = self.runtime.calls[1][0]
        self.assertIsNot(bg, ex.context)
        self.assertEqual(self.runtime.calls[1][2], {b"If-None-Match": b'"v1"'})
        # Only one background revalidation per key at a time.
        self.assertEqual(self.get().body, b"old")
        self.assertEqual(len(self.runtime.calls), 2)
        held.callback(FakeResponse(304, [(b"ETag", b'"v1"'), (b"Cache-Control", b"max-age=100"),
                                         (b"Date", date(self.clock.seconds()))], b""))
        fresh = self.get()
        self.assertEqual(fresh.cacheStatus, b"txgateway; hit; ttl=100")
        self.assertEqual(len(self.runtime.calls), 2)

    def test_backgroundRevalidationStoresANewBody(self) -> None:
        """RFC 5861 §3: a full response to the background request replaces the stored one."""
        self.runtime.script(self.ok(b"max-age=10, stale-while-revalidate=30", body=b"old"))
        self.get()
        self.clock.advance(15)
        self.runtime.script(self.ok(b"max-age=10", body=b"new"))
        self.assertEqual(self.get().body, b"old")
        self.assertEqual(self.get().body, b"new")

    def test_backgroundFailureKeepsTheStaleCopy(self) -> None:
        """RFC 5861 §3: a failed background revalidation leaves the stale response usable within its window."""
        self.runtime.script(self.ok(b"max-age=10, stale-while-revalidate=30", body=b"old"),
                            UpstreamFailure(502, "reset"), UpstreamFailure(502, "reset"))
        self.get()
        self.clock.advance(15)
        self.assertEqual(self.get().body, b"old")
        self.assertEqual(self.get().body, b"old")
        self.assertEqual(len(self.runtime.calls), 3)


class InvalidationTests(CacheTestCase):
    def test_unsafeMethodInvalidatesTargetAndLocation(self) -> None:
        """§4.4: a non-error response to POST invalidates the URI and same-origin Location/Content-Location."""
        self.runtime.script(self.ok(body=b"list"), self.ok(body=b"item"),
                            FakeResponse(201, [(b"Location", b"/things/5")], b""),
                            self.ok(body=b"list2"), self.ok(body=b"item2"))
        self.get(uri=b"/things")
        self.get(uri=b"/things/5")
        post = self.get(b"POST", uri=b"/things")
        self.assertEqual(post.cacheStatus, b"txgateway; fwd=method; fwd-status=201")
        self.assertEqual(post.context.cacheStatus, "bypass")
        self.assertEqual(self.get(uri=b"/things").body, b"list2")
        self.assertEqual(self.get(uri=b"/things/5").body, b"item2")

    def test_errorResponseDoesNotInvalidate(self) -> None:
        """§4.4: only non-error statuses invalidate."""
        self.runtime.script(self.ok(body=b"list"), FakeResponse(409, [], b"conflict"))
        self.get(uri=b"/things")
        self.get(b"PUT", uri=b"/things")
        self.assertEqual(self.get(uri=b"/things").body, b"list")

    def test_otherHostLocationIsNotInvalidated(self) -> None:
        """§4.4: a Location on another origin is not invalidated."""
        self.runtime.script(self.ok(body=b"x"), FakeResponse(200, [(b"Location", b"http://other/x")], b""))
        self.get(uri=b"/x")
        self.get(b"POST", uri=b"/y")
        self.assertEqual(self.get(uri=b"/x").body, b"x")


class CollapseTests(CacheTestCase):
    def test_concurrentMissesShareOneBackendRequest(self) -> None:
        """Collapsed forwarding (RFC 9211 §2.5): concurrent misses wait for one backend request and reuse its response."""
        resp = self.ok(hold=True, body=b"once")
        self.runtime.script(resp)
        leader = self.send()
        waiters = [self.send(), self.send()]
        for w in waiters:
            self.assertNoResult(w.done)
        self.assertEqual(len(self.runtime.calls), 1)
        resp.finish()
        self.successResultOf(leader.done)
        for w in waiters:
            self.successResultOf(w.done)
            self.assertEqual(w.body, b"once")
            self.assertEqual(w.cacheStatus, b"txgateway; fwd=uri-miss; fwd-status=200; collapsed; ttl=60")
            self.assertEqual(w.context.cacheStatus, "collapsed")
        self.assertEqual(len(self.runtime.calls), 1)
        self.assertEqual(self.counted("collapsed"), 2)

    def test_unstorableResultReleasesWaitersToForwardEach(self) -> None:
        """Collapsed forwarding: when the response cannot be shared, each waiter goes to the backend itself, at once."""
        resp = FakeResponse(200, [(b"Cache-Control", b"private")], b"mine", hold=True)
        self.runtime.script(resp, self.ok(b"private", body=b"w1"), self.ok(b"private", body=b"w2"))
        leader = self.send()
        w1, w2 = self.send(), self.send()
        # The leader's headers said "private": the waiters did not wait for its body.
        self.assertEqual(len(self.runtime.calls), 3)
        self.successResultOf(w1.done)
        self.successResultOf(w2.done)
        self.assertEqual({w1.body, w2.body}, {b"w1", b"w2"})
        resp.finish()
        self.successResultOf(leader.done)
        self.assertEqual(leader.body, b"mine")

    def test_uncacheableKeyIsNotCollapsed(self) -> None:
        """Collapsed forwarding: after an uncacheable response, misses for the key do not wait (hit-for-miss)."""
        self.runtime.script(self.ok(b"no-store"))
        self.get()
        first = self.ok(b"no-store", hold=True)
        self.runtime.script(first, self.ok(b"no-store", body=b"second"))
        a = self.send()
        b = self.send()
        self.assertEqual(b.body, b"second")
        first.finish()
        self.successResultOf(a.done)
        self.successResultOf(b.done)

    def test_waiterGivesUpAfterCollapseTimeout(self) -> None:
        """Collapsed forwarding: a waiter forwards on its own after collapse_timeout."""
        hang: Deferred[Any] = Deferred()
        self.runtime.script(hang, self.ok(body=b"own"))
        leader = self.send()
        waiter = self.send()
        self.assertNoResult(waiter.done)
        self.clock.advance(self.config.collapse_timeout)
        self.successResultOf(waiter.done)
        self.assertEqual(waiter.body, b"own")
        hang.callback(self.ok(body=b"late"))
        self.successResultOf(leader.done)

    def test_leaderFailureReleasesWaiters(self) -> None:
        """Collapsed forwarding: a failed leader does not strand its waiters; each forwards itself."""
        hang: Deferred[Any] = Deferred()
        self.runtime.script(hang, self.ok(body=b"w"))
        leader = self.send()
        waiter = self.send()
        hang.callback(UpstreamFailure(502, "connect_failure"))
        self.successResultOf(leader.done)
        self.assertEqual(leader.status, 502)
        self.successResultOf(waiter.done)
        self.assertEqual(waiter.body, b"w")

    def test_waiterWithDifferentVariantForwards(self) -> None:
        """§4.1 with collapsing: a waiter the leader's variant does not match forwards itself."""
        resp = self.ok(b"max-age=60", (b"Vary", b"Accept"), hold=True, body=b"json")
        self.runtime.script(resp, self.ok(b"max-age=60", (b"Vary", b"Accept"), body=b"xml"))
        leader = self.send(headers=((b"Accept", b"json"),))
        waiter = self.send(headers=((b"Accept", b"xml"),))
        resp.finish()
        self.successResultOf(leader.done)
        self.successResultOf(waiter.done)
        self.assertEqual(waiter.body, b"xml")

    def test_cancelledWaiterLeavesTheFlight(self) -> None:
        """A waiter whose client went away stops waiting without disturbing the others."""
        resp = self.ok(hold=True)
        self.runtime.script(resp)
        leader = self.send()
        gone = self.send()
        stay = self.send()
        gone.done.cancel()
        self.failureResultOf(gone.done)
        resp.finish()
        self.successResultOf(leader.done)
        self.successResultOf(stay.done)
        self.assertEqual(stay.context.cacheStatus, "collapsed")


class RedisConfiguredTests(CacheTestCase):
    def test_cacheForBuildsNothingWithoutConfig(self) -> None:
        """A route without cache: has no cache."""
        deps = Deps(clock=self.clock, reactor=None, metrics=self.metrics, config=GatewayConfig(), rng=random.Random())
        self.assertIsNone(caching.cacheFor(route(None), deps))

    def test_memoryStoreSurvivesReload(self) -> None:
        """A reload keeps what is cached: the memory store lives in Deps.shared."""
        shared: dict[str, Any] = {}
        deps = Deps(clock=self.clock, reactor=None, metrics=self.metrics, config=GatewayConfig(), rng=random.Random(),
                    shared=shared)
        a = caching.cacheFor(route(CacheConfig()), deps)
        b = caching.cacheFor(route(CacheConfig(max_bytes=1000)), deps)
        assert a is not None and b is not None
        self.assertIs(a.store, b.store)
        self.assertEqual(b.store.maxBytes, 1000)  # type: ignore[attr-defined]

    def test_redisStoreWhenConfigured(self) -> None:
        """store: redis uses the shared pool, with the memory store as fallback and stores.redis_timeout."""
        config = GatewayConfig(stores=StoresConfig(redis="redis://127.0.0.1:1/0", redis_timeout=0.1))
        deps = Deps(clock=self.clock, reactor=None, metrics=self.metrics, config=config, rng=random.Random(),
                    redis=object())
        c = caching.cacheFor(route(CacheConfig(store="redis")), deps)
        assert c is not None
        self.assertIsInstance(c.store, RedisStore)
        self.assertEqual(c.store.timeout, 0.1)  # type: ignore[attr-defined]
        self.assertEqual(c.store.prefix, b"txgateway:cache:api:")  # type: ignore[attr-defined]
        deps.redis = None
        self.assertIsInstance(caching.cacheFor(route(CacheConfig(store="redis")), deps).store,  # type: ignore[union-attr]
                              MemoryStore)


class IssueNineteenConfigTests(SynchronousTestCase):
    """The route keys issue #19 adds under routes[].cache, with their defaults and errors."""

    BASE = ("upstreams: {app: {targets: [http://127.0.0.1:1]}}\n"
            "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: app\n    cache: %s\n")

    def cache(self, text: str) -> Any:
        from txgateway.config.parser import parseConfig

        return parseConfig(self.BASE % text).routes[0].cache

    def test_defaults(self) -> None:
        """targeted_fields [CDN-Cache-Control], serve_stale_on_error 0s, tag_field Surrogate-Key, no Set-Cookie."""
        c = self.cache("true")
        self.assertEqual((c.targeted_fields, c.serve_stale_on_error, c.tag_field, c.store_set_cookie),
                         (("CDN-Cache-Control",), 0.0, "Surrogate-Key", False))

    def test_values(self) -> None:
        """Every key parsed; an empty targeted_fields turns RFC 9213 off."""
        c = self.cache("{targeted_fields: [Gateway-Cache-Control, CDN-Cache-Control], serve_stale_on_error: 10m,"
                       " tag_field: Cache-Tag, store_set_cookie: true}")
        self.assertEqual((c.targeted_fields, c.serve_stale_on_error, c.tag_field, c.store_set_cookie),
                         (("Gateway-Cache-Control", "CDN-Cache-Control"), 600.0, "Cache-Tag", True))
        self.assertEqual(self.cache("{targeted_fields: []}").targeted_fields, ())

    def test_errorsNameTheKey(self) -> None:
        """A bad value is an error naming its key path."""
        from txgateway.config.errors import ConfigError

        for bad, key in (('{targeted_fields: ["bad name"]}', "cache.targeted_fields[0]"),
                         ("{store_set_cookie: maybe}", "cache.store_set_cookie"),
                         ("{serve_stale_on_error: soon}", "cache.serve_stale_on_error")):
            e = self.assertRaises(ConfigError, self.cache, bad)
            self.assertIn(key, str(e))
