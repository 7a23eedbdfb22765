"""
HTTP correctness at the wire: what a client or a backend could confuse, refused.

Every test drives a real L{GatewaySite} (GatewayChannel, GatewayRequest,
GatewayRoot, the route's chain and the Forwarder) through a
C{StringTransport} with a C{Clock}; only the upstream is a fake agent, which
records what the gateway would have sent and answers as scripted.  The RFC
section each behaviour comes from is named in the test's docstring.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import Request as ClientRequest
from twisted.web._newclient import ResponseFailed
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from tests.support import BASE_CONFIG, FakeResponse, NullProducer, Wire, get, parseResponses
from txgateway.attempts import classify
from txgateway.http.client.parser import InvalidUpstreamResponse, StrictResponseParser
from txgateway.http.client.protocol import StrictClientProtocol
from txgateway.http.heads import splitAbsoluteForm, validAuthority
from txgateway.http.paths import pathHazards
from txgateway.observe import IdSource

# ---------------------------------------------------------------------------
# Support shared with test_channel and test_fuzz.



















# ---------------------------------------------------------------------------
# Host


class HostTests(SynchronousTestCase):
    def test_missingHostOnHttp11Is400(self) -> None:
        """RFC 9112 §3.2: an HTTP/1.1 request without Host gets 400 and reaches no backend."""
        wire = Wire()
        responses, transport = wire.exchange(get(headers=()))
        self.assertEqual(responses[0].status, 400)
        self.assertIn(b"missing Host", responses[0].body)
        self.assertEqual(wire.agent.sent, [])
        self.assertTrue(transport.disconnecting)

    def test_http10WithoutHostIsServed(self) -> None:
        """RFC 9112 §3.2 asks for Host from HTTP/1.1 clients only; HTTP/1.0 may omit it."""
        wire = Wire()
        responses, _ = wire.exchange(get(headers=(), version=b"HTTP/1.0"))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(len(wire.agent.sent), 1)

    def test_twoHostLinesAre400(self) -> None:
        """RFC 9112 §3.2: more than one Host field line gets 400."""
        wire = Wire()
        responses, _ = wire.exchange(get(headers=(b"Host: a.example", b"Host: b.example")))
        self.assertEqual(responses[0].status, 400)
        self.assertEqual(wire.agent.sent, [])

    def test_invalidHostValuesAre400(self) -> None:
        """RFC 9112 §3.2 / RFC 3986 §3.2.2: a Host that is not a host[:port] gets 400."""
        for bad in (b"", b"a b", b"a,b", b"user@host", b"host:99999", b"host:8080:1", b"[zz::1]", b"exa/mple",
                    b"a\x01b", b"h\xc3\xa9"):
            wire = Wire()
            responses, _ = wire.exchange(get(headers=(b"Host: " + bad,)))
            self.assertEqual(responses[0].status, 400, bad)
            self.assertEqual(wire.agent.sent, [], bad)

    def test_validAuthorities(self) -> None:
        """RFC 3986 §3.2.2: names, IPv4, bracketed IPv6 and ports up to 65535 are accepted."""
        for good in (b"example.com", b"EXAMPLE.com.", b"example.com:8080", b"127.0.0.1:1", b"[::1]", b"[::1]:443",
                     b"my_host", b"x:"):
            self.assertTrue(validAuthority(good), good)

    def test_absoluteFormRoutesByItsAuthority(self) -> None:
        """RFC 9112 §3.2.2: an absolute-form target's authority replaces Host, and the path is origin-form."""
        wire = Wire(extra="""\
  - name: api
    match: {host: api.example.com, path_prefix: /}
    upstream: app
    preserve_host: true
""")
        responses, _ = wire.exchange(get(b"http://API.example.com./v1?q=1", headers=(b"Host: other.example",)))
        self.assertEqual(responses[0].status, 200)
        sent = wire.agent.sent[0]
        self.assertEqual(sent.uri, b"http://127.0.0.1:9999/v1?q=1")
        self.assertEqual(sent.header(b"host"), [b"API.example.com."])
        self.assertEqual(sent.header(b"x-forwarded-host"), [b"API.example.com."])

    def test_absoluteFormWithoutPath(self) -> None:
        """RFC 9112 §3.2.2: http://host?q is the path / with that query."""
        self.assertEqual(splitAbsoluteForm(b"http://h.example?q=1"), (b"h.example", b"/?q=1"))
        self.assertEqual(splitAbsoluteForm(b"HTTPS://h.example"), (b"h.example", b"/"))

    def test_absoluteFormWithUserinfoOrOtherSchemeIs400(self) -> None:
        """RFC 9110 §4.2.4: userinfo in an http URI is an error; only http(s) targets are served."""
        for target in (b"http://user:pw@h.example/", b"ftp://h.example/", b"http:///x", b"h.example:443"):
            wire = Wire()
            responses, _ = wire.exchange(get(target))
            self.assertEqual(responses[0].status, 400, target)
            self.assertEqual(wire.agent.sent, [], target)

    def test_hostMatchingUsesTheNormalisedAuthority(self) -> None:
        """RFC 9110 §4.2.3: host matching ignores case, the port and a trailing dot."""
        wire = Wire(extra="""\
  - name: api
    match: {host: api.example.com, path_prefix: /only-api}
    upstream: app
""")
        responses, _ = wire.exchange(get(b"/only-api", headers=(b"Host: API.Example.COM.:80",)))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(len(wire.agent.sent), 1)


# ---------------------------------------------------------------------------
# Paths


class PathTests(SynchronousTestCase):
    def test_encodedSlashIs400ByDefault(self) -> None:
        """RFC 3986 §2.2: %2F is data, not a separator; a backend that decodes it would see another path."""
        for path in (b"/a%2Fb", b"/a%2fb", b"/a%5Cb", b"/a\\b"):
            wire = Wire()
            responses, _ = wire.exchange(get(path))
            self.assertEqual(responses[0].status, 400, path)
            self.assertIn(b"encoded slash", responses[0].body)
            self.assertEqual(wire.agent.sent, [], path)

    def test_routeMayAllowEncodedSlash(self) -> None:
        """allow_encoded_slash: the route's backend gets %2F as it was sent (RFC 3986 §2.2)."""
        wire = Wire()
        responses, _ = wire.exchange(get(b"/files/a%2fb"))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(wire.agent.sent[0].uri, b"http://127.0.0.1:9999/files/a%2Fb")

    def test_encodedNulAndDotSegmentsAreAlways400(self) -> None:
        """RFC 3986 §6.2.2.3: dot segments are resolved only when spelled plainly; %00, %2E%2E and ..; are refused."""
        for path in (b"/files/a%00b", b"/a/%2e%2e/b", b"/files/%2E./x", b"/a/..;/admin", b"/a/.;x/b"):
            wire = Wire()
            responses, _ = wire.exchange(get(path))
            self.assertEqual(responses[0].status, 400, path)
            self.assertEqual(wire.agent.sent, [], path)

    def test_pathHazardsFastPath(self) -> None:
        """An ordinary path needs no scan."""
        self.assertEqual(pathHazards(b"/a/b/../c"), (None, False))
        self.assertEqual(pathHazards(b"/a;v=1/b"), (None, False))
        self.assertEqual(pathHazards(b"/a%20b"), (None, False))

    def test_oneNormalisedPathIsRoutedAndForwarded(self) -> None:
        """RFC 3986 §6.2.2: the path routed is the path the backend gets (no split view)."""
        wire = Wire()
        responses, _ = wire.exchange(get(b"/x//y/./z/../%7Euser?a=%2F"))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(wire.agent.sent[0].uri, b"http://127.0.0.1:9999/x/y/~user?a=%2F")

    def test_pathClimbingAboveRootIs400(self) -> None:
        """RFC 3986 §5.2.4: /.. above the root is refused, not clamped."""
        wire = Wire()
        responses, _ = wire.exchange(get(b"/../etc/passwd"))
        self.assertEqual(responses[0].status, 400)

    def test_longTargetIs414(self) -> None:
        """RFC 9112 §3: a request-target over server.max_uri_bytes gets 414 before any header is read."""
        wire = Wire()
        proto, transport = wire.send(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 "))
        self.assertTrue(transport.disconnecting)

    def test_hugeRequestLineIs414(self) -> None:
        """RFC 9112 §3: a request line longer than the whole head may be still gets 414, not a silent close."""
        wire = Wire()
        _, transport = wire.send(b"GET /" + b"a" * 5000)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 "))

    def test_fragmentAndNonAsciiInTargetAre400(self) -> None:
        """RFC 9112 §3.2: origin-form has no fragment; RFC 3986 §2: a URI is ASCII."""
        for target in (b"/a#b", b"/a\x7fb", b"/caf\xc3\xa9"):
            wire = Wire()
            _, transport = wire.send(get(target))
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), target)


# ---------------------------------------------------------------------------
# Headers


class HeaderTests(SynchronousTestCase):
    def test_crLfNulInRequestHeaderValuesAre400(self) -> None:
        """RFC 9110 §5.5: a field value with CR, LF or NUL is rejected (400), never forwarded."""
        for value in (b"a\x00b", b"a\rb"):
            wire = Wire()
            responses, _ = wire.exchange(get(headers=(b"Host: example.com", b"X-Evil: " + value)))
            self.assertEqual(responses[0].status, 400, value)
            self.assertEqual(wire.agent.sent, [])

    def test_obsoleteLineFoldingIs400(self) -> None:
        """RFC 9112 §5.2: a server may reject obs-fold; we do, so no two parsers disagree."""
        wire = Wire()
        responses, _ = wire.exchange(get(headers=(b"Host: example.com", b"X-A: 1", b" continued")))
        self.assertEqual(responses[0].status, 400)
        self.assertIn(b"folding", responses[0].body)

    def test_repeatedFieldsKeepEveryValueInOrder(self) -> None:
        """RFC 9110 §5.3: repeated field lines keep their order; none is dropped."""
        wire = Wire()
        wire.exchange(get(headers=(b"Host: example.com", b"X-Multi: one", b"Accept: a/b", b"X-Multi: two",
                                   b"X-Multi: three")))
        self.assertEqual(wire.agent.sent[0].header(b"x-multi"), [b"one", b"two", b"three"])

    def test_setCookieIsNeverMerged(self) -> None:
        """RFC 9110 §5.3 / RFC 6265 §3: each Set-Cookie stays its own field line."""
        wire = Wire()
        responses, _ = wire.exchange(get(), FakeResponse(200, [(b"Set-Cookie", b"a=1; Expires=Wed, 21 Oct 2015"),
                                                              (b"Set-Cookie", b"b=2"), (b"Vary", b"A"),
                                                              (b"Vary", b"B")], b""))
        self.assertEqual(responses[0].header(b"set-cookie"), [b"a=1; Expires=Wed, 21 Oct 2015", b"b=2"])
        self.assertEqual(responses[0].header(b"vary"), [b"A", b"B"])

    def test_hopByHopStrippedBeforeOwnHeadersAdded(self) -> None:
        """RFC 9110 §7.6.1: fields named by Connection go; the gateway's own X-Forwarded-* stay."""
        wire = Wire(extra="""\
    headers: {request: {set: {X-Gateway: "yes"}}}
""")
        wire.exchange(get(headers=(b"Host: example.com", b"Connection: keep-alive, X-Gateway, X-Secret",
                                   b"X-Secret: s", b"X-Gateway: client", b"Keep-Alive: 5", b"TE: trailers",
                                   b"Upgrade: h2c")))
        sent = wire.agent.sent[0]
        self.assertEqual(sent.header(b"x-secret"), [])
        self.assertEqual(sent.header(b"keep-alive"), [])
        self.assertEqual(sent.header(b"te"), [])
        self.assertEqual(sent.header(b"upgrade"), [])
        self.assertEqual(sent.header(b"connection"), [])
        self.assertEqual(sent.header(b"x-gateway"), [b"yes"])

    def test_connectionCannotStripProtectedFields(self) -> None:
        """RFC 9110 §7.6.1: a Connection token naming X-Forwarded-For, X-Request-ID or Authorization is ignored."""
        wire = Wire()
        wire.exchange(get(headers=(b"Host: example.com", b"Connection: X-Forwarded-For, X-Request-ID, Authorization",
                                   b"Authorization: Bearer t", b"X-Request-ID: abc-123")))
        sent = wire.agent.sent[0]
        self.assertEqual(sent.header(b"authorization"), [b"Bearer t"])
        self.assertEqual(sent.header(b"x-request-id"), [b"abc-123"])
        self.assertEqual(sent.header(b"x-forwarded-for"), [b"192.0.2.10"])

    def test_requestFramingIsRegenerated(self) -> None:
        """RFC 9112 §6: the backend gets the body the gateway parsed, framed by the gateway, never the client's framing."""
        wire = Wire()
        body = b"hello\r\n0\r\n\r\nGET /smuggled HTTP/1.1"
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        wire.exchange(b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: keep-alive\r\n\r\n" + chunked + b"0\r\n\r\n")
        self.assertEqual(len(wire.agent.sent), 1)
        sent = wire.agent.sent[0]
        self.assertEqual(sent.body, body)
        self.assertEqual(sent.length, len(body))
        for name in (b"content-length", b"transfer-encoding", b"connection"):
            self.assertEqual(sent.header(name), [], name)

    def test_unsupportedTransferEncodingsAre400(self) -> None:
        """RFC 9112 §6.1: only chunked is decoded; identity or stacked codings, or TE in HTTP/1.0, get 400."""
        for te, version in ((b"identity", b"HTTP/1.1"), (b"gzip, chunked", b"HTTP/1.1"), (b"chunked", b"HTTP/1.0"),
                            (b"chunked, chunked", b"HTTP/1.1")):
            wire = Wire()
            responses, _ = wire.exchange(b"POST / %s\r\nHost: example.com\r\nTransfer-Encoding: %s\r\n\r\n"
                                         b"0\r\n\r\n" % (version, te))
            self.assertEqual(responses[0].status, 400, te)
            self.assertEqual(wire.agent.sent, [])

    def test_contentLengthAndTransferEncodingTogetherAre400(self) -> None:
        """RFC 9112 §6.3: CL with TE is a smuggling shape; twisted.web already refuses it, with our JSON 400."""
        for extra in (b"Content-Length: 3\r\nTransfer-Encoding: chunked", b"Content-Length: 3\r\nContent-Length: 4",
                      b"Content-Length: +3", b"Content-Length: 3, 3"):
            wire = Wire()
            responses, _ = wire.exchange(b"POST / HTTP/1.1\r\nHost: example.com\r\n%s\r\n\r\nabc" % extra)
            self.assertEqual(responses[0].status, 400, extra)
            self.assertEqual(responses[0].header(b"content-type"), [b"application/json"])
            self.assertEqual(wire.agent.sent, [])

    def test_noContentTypeOrServerAddedToProxiedResponses(self) -> None:
        """RFC 9110 §8.3 / §10.2.4: a proxy adds no Content-Type and no Server of its own."""
        wire = Wire()
        responses, _ = wire.exchange(get(), FakeResponse(200, [], b"raw"))
        r = responses[0]
        self.assertEqual(r.header(b"content-type"), [])
        self.assertEqual(r.header(b"server"), [])
        self.assertEqual(r.body, b"raw")

    def test_dateComesFromTheGatewayClockUnlessTheOriginSentOne(self) -> None:
        """RFC 9110 §6.6.1: every answer carries a Date, the origin's when it sent one, in whole seconds."""
        wire = Wire()
        wire.clock.advance(1_000_000_000.7)
        responses, _ = wire.exchange(get(), FakeResponse(200, [], b"raw"))
        self.assertEqual(responses[0].header(b"date"), [b"Sun, 09 Sep 2001 01:46:40 GMT"])
        wire.clock.advance(1)
        responses, _ = wire.exchange(get(b"/nowhere-else"), FakeResponse(200, [(b"Date", b"Mon, 01 Jan 2001 00:00:00 GMT")]))
        self.assertEqual(responses[0].header(b"date"), [b"Mon, 01 Jan 2001 00:00:00 GMT"])
        responses, _ = wire.exchange(get(b"*", method=b"OPTIONS"))
        self.assertEqual(responses[0].header(b"date"), [b"Sun, 09 Sep 2001 01:46:41 GMT"])

    def test_optionsStarIsAnsweredWithoutServer(self) -> None:
        """RFC 9110 §9.3.7: OPTIONS * is answered by the gateway itself, without naming its software."""
        wire = Wire()
        responses, _ = wire.exchange(get(b"*", method=b"OPTIONS"))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(responses[0].header(b"server"), [])
        self.assertEqual(wire.agent.sent, [])

    def test_backendServerHeaderPassesThrough(self) -> None:
        """RFC 9110 §10.2.4: the origin's own Server field is the origin's to send."""
        wire = Wire()
        responses, _ = wire.exchange(get(), FakeResponse(200, [(b"Server", b"origin/1")], b""))
        self.assertEqual(responses[0].header(b"server"), [b"origin/1"])

    def test_viaIsAddedBothWays(self) -> None:
        """RFC 9110 §7.6.3: a proxy appends its Via entry to requests and responses."""
        wire = Wire()
        responses, _ = wire.exchange(get(headers=(b"Host: example.com", b"Via: 1.0 edge")),
                                     FakeResponse(200, [(b"Via", b"1.1 origin-cache")], b""))
        self.assertEqual(wire.agent.sent[0].header(b"via"), [b"1.0 edge", b"1.1 txgateway"])
        self.assertEqual(responses[0].header(b"via"), [b"1.1 origin-cache", b"1.1 txgateway"])

    def test_ownViaPseudonymIsALoop508(self) -> None:
        """RFC 9110 §7.6.3: a request that already passed through this gateway is refused (508), not looped."""
        for via in (b"1.1 txgateway", b"1.0 edge, 1.1 TXGateway (comment)"):
            wire = Wire()
            responses, _ = wire.exchange(get(headers=(b"Host: example.com", b"Via: " + via)))
            self.assertEqual(responses[0].status, 508, via)
            self.assertEqual(wire.agent.sent, [])

    def test_viaPseudonymIsConfigurable(self) -> None:
        """server.via names this gateway; other pseudonyms pass."""
        wire = Wire(config=BASE_CONFIG.format(extra="").replace("  listen:", "  via: edge-1\n  listen:"))
        responses, _ = wire.exchange(get(headers=(b"Host: example.com", b"Via: 1.1 txgateway")))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(wire.agent.sent[0].header(b"via"), [b"1.1 txgateway", b"1.1 edge-1"])
        responses, _ = wire.exchange(get(headers=(b"Host: example.com", b"Via: 1.1 edge-1")))
        self.assertEqual(responses[0].status, 508)


# ---------------------------------------------------------------------------
# Client IP and request IDs


class ClientAddressTests(SynchronousTestCase):
    def test_xffWalkedRightToLeftThroughTrustedProxies(self) -> None:
        """RFC 7239 §5.2 practice: the first untrusted hop from the right is the client; the leftmost is never trusted."""
        wire = Wire()
        wire.exchange(get(headers=(b"Host: example.com", b"X-Forwarded-For: 6.6.6.6, 198.51.100.7, 10.1.1.1")),
                      peer="10.0.0.2")
        runtime = wire.gateway.runtime
        self.assertEqual(wire.agent.sent[0].header(b"x-forwarded-for"), [b"198.51.100.7, 10.1.1.1, 10.0.0.2"])

        class R:
            requestHeaders = Headers({b"x-forwarded-for": [b"6.6.6.6, 198.51.100.7", b"10.1.1.1"]})

        self.assertEqual(runtime.clientIP("10.0.0.2", R()), "198.51.100.7")
        self.assertEqual(runtime.clientIP("192.0.2.1", R()), "192.0.2.1")

        class AllTrusted:
            requestHeaders = Headers({b"x-forwarded-for": [b"10.3.3.3, 10.1.1.1"]})

        self.assertEqual(runtime.clientIP("10.0.0.2", AllTrusted()), "10.3.3.3")

    def test_xffFromUntrustedPeerIsReplaced(self) -> None:
        """An untrusted peer's X-Forwarded-For is a claim, not a fact: the backend sees only the peer."""
        wire = Wire()
        wire.exchange(get(headers=(b"Host: example.com", b"X-Forwarded-For: 10.1.1.1",
                                   b"X-Forwarded-Proto: https", b"X-Forwarded-Host: evil")))
        sent = wire.agent.sent[0]
        self.assertEqual(sent.header(b"x-forwarded-for"), [b"192.0.2.10"])
        self.assertEqual(sent.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(sent.header(b"x-forwarded-host"), [b"example.com"])

    def test_requestIdInjectionIsReplaced(self) -> None:
        """RFC 9110 §5.5: a request id echoed into headers is validated, so it cannot split a response."""
        requestIdFrom = IdSource().requestId
        for bad in (b"abc\n", b"abc\r\nSet-Cookie: x=1", b"a" * 129, b"", b"a b", b"<script>", b"abc\x00"):
            rid = requestIdFrom(bad)
            self.assertNotEqual(rid.encode(), bad)
            self.assertRegex(rid, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(requestIdFrom(b"req-1.2:3_x"), "req-1.2:3_x")

    def test_echoedRequestIdIsTheSanitisedOne(self) -> None:
        """RFC 9110 §5.5: an unacceptable X-Request-ID is replaced on both the upstream request and the response."""
        wire = Wire()
        responses, _ = wire.exchange(get(headers=(b"Host: example.com", b"X-Request-ID: a\tb")))
        rid = responses[0].header(b"x-request-id")
        self.assertEqual(len(rid), 1)
        self.assertRegex(rid[0].decode(), r"\A[0-9a-f]{32}\Z")
        self.assertEqual(wire.agent.sent[0].header(b"x-request-id"), rid)


# ---------------------------------------------------------------------------
# Upstream responses


class _StreamedBody(NullProducer):
    """A body producer that streams (a large upload): the stock way sends it."""

    length = 1

    def startProducing(self, consumer: Any) -> Deferred[None]:
        return Deferred()


def _clientProtocol() -> tuple[StrictClientProtocol, StringTransport, Deferred[Any]]:
    proto = StrictClientProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    d = proto.request(ClientRequest(b"GET", b"/", Headers({b"host": [b"b"]}), None, persistent=True))
    return proto, transport, d


class UpstreamResponseTests(SynchronousTestCase):
    def test_invalidFramingFailsTheResponseAndClosesTheConnection(self) -> None:
        """RFC 9112 §6.3: a response with invalid framing is discarded and its connection closed."""
        # (head, whether our parser or Twisted's own catches it)
        heads = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", True),
            (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nX-Bad: a\rb\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", True),
            (b"HTTP/1.1 200 O\rK\r\n\r\n", True),
            (b"HTTP/1.1 200 O\x01K\r\n\r\n", True),
            (b"HTTP/1.1 200 O\x1fK\r\n\r\n", True),
        ]
        for head, ours in heads:
            proto, transport, d = _clientProtocol()
            proto.dataReceived(head)
            f = self.failureResultOf(d, ResponseFailed)
            self.assertTrue(transport.disconnecting, head)
            self.assertEqual(classify(f), "invalid_response" if ours else "reset", head)

    def test_badChunkMidBodyBreaksTheResponse(self) -> None:
        """RFC 9112 §7.1: a malformed chunk fails the body and closes the upstream connection."""
        proto, transport, d = _clientProtocol()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        response = self.successResultOf(d)
        got: list[Any] = []

        class Collect(NullProducer):
            def makeConnection(self, transport: Any) -> None:
                pass

            def dataReceived(self, data: bytes) -> None:
                got.append(data)

            def connectionLost(self, reason: Failure) -> None:
                got.append(reason)

        response.deliverBody(Collect())
        proto.dataReceived(b"2\r\nhi\r\nzz\r\n")
        self.assertEqual(got[0], b"hi")
        self.assertIsInstance(got[-1], Failure)
        self.assertFalse(got[-1].check(ResponseDone))
        self.assertTrue(transport.disconnecting)

    def test_validResponseStillParses(self) -> None:
        """RFC 9112 §6: a well-framed response is read as before; Connection-named fields are dropped."""
        proto, _, d = _clientProtocol()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: s\r\nX-Keep: k\r\n"
                           b"Content-Length: 2\r\n\r\nhi")
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertFalse(response.headers.hasHeader(b"x-internal"))
        self.assertEqual(response.headers.getRawHeaders(b"x-keep"), [b"k"])

    def test_bodyClaimedAsTheResponseFiresNeverPausesTheConnection(self) -> None:
        """A body asked for while the response fires is read without pausing the socket; an unclaimed one pauses it."""
        calls, body = self._pausesAndBody(claim=True)
        self.assertNotIn("pause", calls)
        self.assertEqual(body, b"body")
        calls, body = self._pausesAndBody(claim=False)
        self.assertEqual(calls[:2], ["pause", "resume"])
        self.assertEqual(body, b"body")

    def _pausesAndBody(self, claim: bool) -> tuple[list[str], bytes]:
        proto, transport, d = _clientProtocol()
        calls: list[str] = []
        transport.pauseProducing = lambda: calls.append("pause")  # type: ignore[method-assign]
        transport.resumeProducing = lambda: calls.append("resume")  # type: ignore[method-assign]
        got: list[bytes] = []

        class Collect(Protocol):
            def dataReceived(self, data: bytes) -> None:
                got.append(data)

        if claim:
            d.addCallback(lambda r: r.deliverBody(Collect()))
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbo")
        if not claim:
            self.assertEqual(calls, ["pause"])
            self.successResultOf(d).deliverBody(Collect())
        proto.dataReceived(b"dy")
        return calls, b"".join(got)

    def test_parserIsTheStrictOne(self) -> None:
        """The pooled protocol parses with the strict parser, whether or not the request was sent the short way."""
        proto, _, _ = _clientProtocol()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\n")  # not a whole response: parsed the stock way
        self.assertIsInstance(proto._parser, StrictResponseParser)
        withBody = StrictClientProtocol()
        withBody.makeConnection(StringTransport())
        withBody.request(ClientRequest(b"POST", b"/", Headers({b"host": [b"b"]}), _StreamedBody(),
                                       persistent=True))
        self.assertIsInstance(withBody._parser, StrictResponseParser)

    def test_invalidUpstreamResponseIs502(self) -> None:
        """RFC 9112 §6.3: the client gets 502 when the upstream's response was invalid."""
        wire = Wire()
        proto, transport = wire.send(get())
        sent = wire.agent.sent[0]
        sent.deferred.errback(ResponseFailed([Failure(InvalidUpstreamResponse("both CL and TE"))]))
        responses = parseResponses(transport.value())
        self.assertEqual(responses[0].status, 502)
        self.assertIn(b"invalid_response", responses[0].body)


class HeadsAnsweredAtOnceTests(SynchronousTestCase):
    """Malformed or oversized requests are answered when seen, not at a deadline (issue #18, item 5)."""

    def test_bareLineFeedHeadIs400AtOnce(self) -> None:
        """RFC 9112 §2.2: a head with bare-LF line endings is refused at once, whole or a byte at a time."""
        head = b"GET / HTTP/1.1\nHost: example.com\n\n"
        for pieces in ([head], [head[i:i + 1] for i in range(len(head))]):
            wire = Wire()
            proto, transport = wire.connect()
            for piece in pieces:
                proto.dataReceived(piece)
            responses = parseResponses(transport.value())
            self.assertEqual(responses[0].status, 400)
            self.assertIn(b"bare LF", responses[0].body)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(wire.agent.sent, [])

    def test_crlfHeadsWithLineFeedsInTheBodyAreServed(self) -> None:
        """A body may hold any byte: a LF in it is not a bare-LF head."""
        wire = Wire()
        body = b"a\nb\n\n"
        responses, _ = wire.exchange(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n%s"
                                     % (len(body), body))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(wire.agent.sent[0].body, body)

    def test_chunkDeclaredOverTheBodyLimitIs413AtOnce(self) -> None:
        """A chunk-size line that promises more than max_request_body is answered 413 before the chunk comes."""
        wire = Wire()
        _, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"100000\r\nabc")
        responses = parseResponses(transport.value())
        self.assertEqual(responses[0].status, 413)
        self.assertEqual(wire.agent.sent, [])
        self.assertTrue(transport.disconnecting)

    def test_chunksWithinTheLimitAreServed(self) -> None:
        """Chunks that add up to no more than max_request_body still reach the backend."""
        wire = Wire()
        responses, _ = wire.exchange(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"200\r\n" + b"x" * 0x200 + b"\r\n200\r\n" + b"y" * 0x200 + b"\r\n0\r\n\r\n")
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(len(wire.agent.sent[0].body), 1024)

    def test_tooManyHeaderFieldsIs431(self) -> None:
        """More than GatewayChannel.maxHeaders (500) field lines: 431 (RFC 6585 §5), not a bare 400."""
        wire = Wire(config=BASE_CONFIG.format(extra="").replace("max_header_bytes: 2KiB", "max_header_bytes: 1MiB"))
        fields = tuple(b"X-F%d: v" % i for i in range(10_000))
        responses, _ = wire.exchange(get(headers=(b"Host: example.com", *fields)))
        self.assertEqual(responses[0].status, 431)
        self.assertIn(b"more than 500 header fields", responses[0].body)
        self.assertEqual(wire.agent.sent, [])

    def test_refusalsCarryARequestIdAndAnAccessLogLine(self) -> None:
        """A refused request gets the X-Request-ID the hook gives it (the service writes its access line there)."""
        wire = Wire()
        seen: list[tuple[Any, ...]] = []

        def onRefusal(client: str, method: bytes, target: bytes, headers: Any, status: int) -> str:
            seen.append((client, method, target, status))
            return "rid-1"

        wire.site.onRefusal = onRefusal
        responses, _ = wire.exchange(b"POST /up?token=x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5000\r\n\r\n")
        self.assertEqual(responses[0].status, 413)
        self.assertEqual(responses[0].header(b"x-request-id"), [b"rid-1"])
        self.assertIn(b'"request_id":"rid-1"', responses[0].body)
        self.assertEqual(seen, [("192.0.2.10", b"POST", b"/up?token=x", 413)])
