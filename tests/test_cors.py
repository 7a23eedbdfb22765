"""
Unit tests for CORS at the edge, checked against what the Fetch standard makes browsers require.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from txgateway.auth import AuthFilter, AuthResources, authenticatorsFor
from txgateway.config import ApiKeyAuth, AuthPolicy, CorsConfig
from txgateway.context import LocalResponse, RequestContext
from txgateway.cors import CorsFilter, OriginMatcher
from txgateway.interfaces import IRequestFilter
from txgateway.middleware import Chain
from txgateway.observe import Metrics
from txgateway.testing import FixtureResponse, GatewayFixture

APP = b"https://app.example.com"


def makeContext(headers: list[tuple[bytes, bytes]] | None = None, method: bytes = b"GET") -> RequestContext:
    request = DummyRequest([b""])
    request.method = method
    for k, v in headers or []:
        request.requestHeaders.addRawHeader(k, v)
    return RequestContext(request, 0.0, "req-9", "127.0.0.1", "127.0.0.1", method, "api.example.com", "/p", None)


def preflight(origin: bytes = APP, method: bytes = b"POST", headers: bytes | None = None) -> RequestContext:
    h = [(b"Origin", origin), (b"Access-Control-Request-Method", method)]
    if headers is not None:
        h.append((b"Access-Control-Request-Headers", headers))
    return makeContext(h, b"OPTIONS")


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name.lower()]


BATCH = CorsConfig(allow_origins=("https://app.example.com",), allow_methods=("POST",),
                   allow_headers=("Content-Type", "X-API-Key"), max_age=600.0)


class OriginMatcherTests(SynchronousTestCase):
    def test_exactOrigin(self) -> None:
        """An exact origin matches itself (case-insensitively) and nothing else."""
        m = OriginMatcher(("https://app.example.com",))
        self.assertTrue(m.allows(b"https://app.example.com"))
        self.assertTrue(m.allows(b"https://APP.example.com"))
        self.assertFalse(m.allows(b"http://app.example.com"))
        self.assertFalse(m.allows(b"https://app.example.com:8443"))
        self.assertFalse(m.allows(b"null"))

    def test_wildcardSubdomain(self) -> None:
        """https://*.example.com matches subdomains at any depth, never the apex or look-alikes."""
        m = OriginMatcher(("https://*.example.com",))
        self.assertTrue(m.allows(b"https://a.example.com"))
        self.assertTrue(m.allows(b"https://a.b.example.com"))
        self.assertFalse(m.allows(b"https://example.com"))
        self.assertFalse(m.allows(b"https://evilexample.com"))
        self.assertFalse(m.allows(b"https://.example.com"))
        self.assertFalse(m.allows(b"http://a.example.com"))
        self.assertFalse(m.allows(b"https://a.example.com.evil.net"))
        self.assertFalse(m.allows(b"https://x@a.example.com"))
        self.assertFalse(m.allows(b"https://a.example.com:444"))

    def test_wildcardWithPort(self) -> None:
        """A wildcard pattern with a port needs that port."""
        m = OriginMatcher(("http://*.local.test:8080",))
        self.assertTrue(m.allows(b"http://a.local.test:8080"))
        self.assertFalse(m.allows(b"http://a.local.test"))

    def test_star(self) -> None:
        """"*" allows every origin, including "null"."""
        self.assertTrue(OriginMatcher(("*",)).allows(b"null"))


class PreflightTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics(processMetrics=False)

    def makeFilter(self, config: CorsConfig = BATCH) -> CorsFilter:
        f = CorsFilter(config, self.metrics, "batch")
        verifyObject(IRequestFilter, f)
        return f

    def test_allowedPreflightAnsweredByTheGateway(self) -> None:
        """An allowed preflight gets 204 with the route's lists; it never continues to the backend."""
        context = preflight(headers=b"content-type, x-api-key")
        response = self.makeFilter().filterRequest(context)
        assert response is not None
        self.assertEqual(response.code, 204)
        self.assertEqual(response.body, b"")
        h = response.headers
        self.assertEqual(header(h, b"Access-Control-Allow-Origin"), [APP])
        self.assertEqual(header(h, b"Access-Control-Allow-Methods"), [b"POST"])
        self.assertEqual(header(h, b"Access-Control-Allow-Headers"), [b"Content-Type, X-API-Key"])
        self.assertEqual(header(h, b"Access-Control-Max-Age"), [b"600"])
        self.assertEqual(header(h, b"Access-Control-Allow-Credentials"), [])
        self.assertIn((b"Vary", b"Origin"), context.responseHeaders)

    def test_preflightFromUnknownOriginRefusedWithoutCorsHeaders(self) -> None:
        """A preflight from another origin gets 403 and no Access-Control-Allow-Origin, so the browser fails it."""
        context = preflight(origin=b"https://evil.example")
        response = self.makeFilter().filterRequest(context)
        assert response is not None
        self.assertEqual(response.code, 403)
        self.assertEqual(header(response.headers + context.responseHeaders, b"Access-Control-Allow-Origin"), [])
        self.assertEqual(json.loads(response.body)["request_id"], "req-9")
        self.assertEqual(self.metrics.registry.get_sample_value(
            "txgateway_auth_failures_total", {"route": "batch", "reason": "cors"}), 1)

    def test_preflightForUnlistedMethodRefused(self) -> None:
        """A method that is neither listed nor CORS-safelisted is refused."""
        response = self.makeFilter().filterRequest(preflight(method=b"DELETE"))
        self.assertEqual(response.code, 403)  # type: ignore[union-attr]

    def test_preflightForSafelistedMethodAllowed(self) -> None:
        """GET/HEAD/POST never need listing (Fetch: CORS-safelisted methods)."""
        response = self.makeFilter().filterRequest(preflight(method=b"GET", headers=b"x-api-key"))
        self.assertEqual(response.code, 204)  # type: ignore[union-attr]

    def test_preflightForUnlistedHeaderRefused(self) -> None:
        """A requested header the route does not allow refuses the preflight, naming it."""
        response = self.makeFilter().filterRequest(preflight(headers=b"content-type, x-secret"))
        assert response is not None
        self.assertEqual(response.code, 403)
        self.assertEqual(json.loads(response.body)["request_headers"], "x-secret")

    def test_wildcardHeadersAndMethodsEchoTheRequest(self) -> None:
        """With "*" the requested method and headers are echoed (a literal * would not cover Authorization)."""
        config = CorsConfig(allow_origins=("https://*.example.com",), allow_methods=("*",), allow_headers=("*",),
                            allow_credentials=True)
        response = self.makeFilter(config).filterRequest(preflight(method=b"PATCH", headers=b"authorization, x-a"))
        assert response is not None
        self.assertEqual(response.code, 204)
        self.assertEqual(header(response.headers, b"Access-Control-Allow-Methods"), [b"PATCH"])
        self.assertEqual(header(response.headers, b"Access-Control-Allow-Headers"), [b"authorization, x-a"])
        self.assertEqual(header(response.headers, b"Access-Control-Allow-Credentials"), [b"true"])
        self.assertEqual(header(response.headers, b"Access-Control-Allow-Origin"), [APP])

    def test_optionsWithoutRequestMethodIsNotAPreflight(self) -> None:
        """A plain OPTIONS request goes on to the backend like any other request."""
        context = makeContext([(b"Origin", APP)], b"OPTIONS")
        self.assertIsNone(self.makeFilter().filterRequest(context))
        self.assertEqual(header(context.responseHeaders, b"Access-Control-Allow-Origin"), [APP])


class ActualRequestTests(SynchronousTestCase):
    def test_allowedOriginGetsAllowOriginAndVary(self) -> None:
        """An actual request from an allowed origin continues, with ACAO echoing it and Vary: Origin."""
        context = makeContext([(b"Origin", APP)], b"POST")
        self.assertIsNone(CorsFilter(BATCH).filterRequest(context))
        self.assertEqual(header(context.responseHeaders, b"Access-Control-Allow-Origin"), [APP])
        self.assertEqual(header(context.responseHeaders, b"Vary"), [b"Origin"])

    def test_credentialsAndExposedHeaders(self) -> None:
        """allow_credentials and expose_headers show on actual responses."""
        config = CorsConfig(allow_origins=("https://app.example.com",), allow_credentials=True,
                            expose_headers=("X-Request-ID", "RateLimit-Remaining"))
        context = makeContext([(b"Origin", APP)])
        CorsFilter(config).filterRequest(context)
        h = context.responseHeaders
        self.assertEqual(header(h, b"Access-Control-Allow-Credentials"), [b"true"])
        self.assertEqual(header(h, b"Access-Control-Expose-Headers"), [b"X-Request-ID, RateLimit-Remaining"])

    def test_disallowedOriginForwardedWithoutCorsHeaders(self) -> None:
        """Another origin's request still reaches the backend, but without CORS headers the browser hides it."""
        context = makeContext([(b"Origin", b"https://evil.example")], b"POST")
        self.assertIsNone(CorsFilter(BATCH).filterRequest(context))
        self.assertEqual(context.responseHeaders, [(b"Vary", b"Origin")])

    def test_noOriginStillVaries(self) -> None:
        """Same-origin and non-browser requests get Vary: Origin too, so a cache keeps the variants apart."""
        context = makeContext()
        CorsFilter(BATCH).filterRequest(context)
        self.assertEqual(context.responseHeaders, [(b"Vary", b"Origin")])

    def test_anyOriginWithoutCredentialsIsAConstantStar(self) -> None:
        """allow_origins: ["*"] answers "*" and, not depending on Origin, adds no Vary."""
        context = makeContext([(b"Origin", APP)])
        CorsFilter(CorsConfig(allow_origins=("*",))).filterRequest(context)
        self.assertEqual(context.responseHeaders, [(b"Access-Control-Allow-Origin", b"*")])


class ChainTests(SynchronousTestCase):
    """CORS and auth together, in the middleware's order."""

    def setUp(self) -> None:
        import hashlib

        self.policy = AuthPolicy("partners", api_key=ApiKeyAuth(keys=(("alice", "sha256",
                                                                        hashlib.sha256(b"k").hexdigest()),)))
        resources = AuthResources(MemoryReactorClock(), Clock())
        self.chain = Chain([CorsFilter(BATCH), AuthFilter(self.policy, authenticatorsFor(self.policy, resources))])

    def runChain(self, context: RequestContext) -> LocalResponse | None:
        return self.successResultOf(Deferred.fromCoroutine(self.chain.run(context)))

    def test_preflightNeedsNoCredentials(self) -> None:
        """A preflight (which never carries credentials) is answered before auth runs."""
        self.assertEqual(self.runChain(preflight()).code, 204)  # type: ignore[union-attr]

    def test_401CarriesCorsHeadersSoThePageCanReadIt(self) -> None:
        """An auth refusal to an allowed origin still gets ACAO (respond() adds context.responseHeaders)."""
        from txgateway.gateway import respond

        context = makeContext([(b"Origin", APP)], b"POST")
        response = self.runChain(context)
        assert response is not None
        self.assertEqual(response.code, 401)
        respond(context, response)
        sent: Any = context.request.responseHeaders
        self.assertEqual(sent.getRawHeaders(b"access-control-allow-origin"), [APP])
        self.assertEqual(sent.getRawHeaders(b"vary"), [b"Origin"])

    def test_preflight204HasNoContentLength(self) -> None:
        """The gateway's 204 carries no Content-Length (RFC 9110 section 8.6)."""
        from txgateway.gateway import respond

        context = preflight()
        response = self.runChain(context)
        assert response is not None
        respond(context, response)
        self.assertEqual(context.request.responseCode, 204)
        self.assertFalse(context.request.responseHeaders.hasHeader(b"content-length"))


class _Origin(Resource):
    """An origin that says which one it is and what it was asked."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.seen: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.seen.append(request.method + b" " + request.uri)
        return self.name.encode()


class PreflightRoutingTests(SynchronousTestCase):
    """A preflight is routed as the request it announces (seen from the client, through txgateway.testing)."""

    CONFIG = """
upstreams:
  app: {targets: [http://127.0.0.1:9000]}
  plain: {targets: [http://127.0.0.1:9001]}
routes:
  - name: batch
    match: {path: /batch_predict, methods: [POST]}
    upstream: app
    cors: {allow_origins: ["https://app.example.com"], allow_methods: [POST]}
  - name: plain
    match: {path: /plain, methods: [POST]}
    upstream: plain
  - name: default
    match: {path_prefix: /}
    upstream: app
"""

    def setUp(self) -> None:
        self.app, self.plain = _Origin("default"), _Origin("plain")
        self.gateway = GatewayFixture.fromYAML(self.CONFIG, origins={"http://127.0.0.1:9000": self.app,
                                                                     "http://127.0.0.1:9001": self.plain})

    def options(self, path: bytes, headers: dict[bytes, list[bytes]]) -> FixtureResponse:
        return self.gateway.request(b"OPTIONS", b"http://api.example.com" + path, headers)

    def test_preflightReachesThePostOnlyCorsRoute(self) -> None:
        """OPTIONS /batch_predict asking for POST goes to the POST-only route that has cors: (answered there)."""
        response = self.options(b"/batch_predict", {b"Origin": [APP], b"Access-Control-Request-Method": [b"POST"]})
        self.assertEqual(response.code, 204)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [APP])
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-methods"), [b"POST"])
        self.assertEqual(self.app.seen + self.plain.seen, [])

    def test_plainOptionsRoutedAsBefore(self) -> None:
        """An OPTIONS that is not a preflight is matched by its own method."""
        response = self.options(b"/batch_predict", {b"Origin": [APP]})
        self.assertEqual((response.code, response.body), (200, b"default"))
        self.assertEqual(self.app.seen, [b"OPTIONS /batch_predict"])

    def test_preflightForRouteWithoutCorsRoutedAsBefore(self) -> None:
        """A route without cors: leaves its preflights to whichever route matches OPTIONS (its backend decides)."""
        response = self.options(b"/plain", {b"Origin": [APP], b"Access-Control-Request-Method": [b"POST"]})
        self.assertEqual((response.code, response.body), (200, b"default"))
        self.assertEqual(self.plain.seen, [])
