"""
The pooled client protocol's short ways, held to the stock one.

A request is sent without the parser set-up, and a plain response is
handed over without the line-by-line parser.  Whatever the upstream sends
and however its bytes are cut, what the forwarder sees must be what the
stock HTTP11ClientProtocol (with the strict parser) makes of the same bytes:
the same response or failure, the same body and end, the connection pooled
or dropped the same way, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web._newclient import Request as ClientRequest
from twisted.web.http_headers import Headers

from txgateway.http.client.agent import UpstreamRequest
from txgateway.http.client.parser import StrictResponseParser
from txgateway.http.client.protocol import StrictClientProtocol
from txgateway.http.replay import BytesProducer


class _StockWay(StrictClientProtocol):
    """The pooled protocol without its short way: every request and response the stock way."""

    def request(self, request: Any) -> Any:
        d = HTTP11ClientProtocol.request(self, request)
        if self._parser is not None:
            self._parser.__class__ = StrictResponseParser
        return d


def _describe(failure: Failure) -> tuple[str, ...]:
    reasons = getattr(failure.value, "reasons", None) or []
    return (type(failure.value).__name__, *(type(r.value).__name__ for r in reasons))


class _Exchange:
    """One request on a fresh connection, the upstream's bytes fed in the given pieces, all that happened noted."""

    def __init__(self, protocolClass: type[StrictClientProtocol], method: bytes = b"GET",
                 claim: str = "now", quiescent: Callable[[Any], None] | None = None) -> None:
        self.events: list[Any] = []
        self.proto = protocolClass(quiescent or (lambda p: self.events.append("pooled")))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.claim = claim
        self.response: Any = None
        body = BytesProducer(b"abc") if method == b"POST" else None  # the forwarder's in-memory body
        self.d = self.proto.request(ClientRequest(method, b"/x", Headers({b"host": [b"b"]}), body, persistent=True))
        self.d.addCallbacks(self._got, lambda f: self.events.append(("failed", _describe(f))))

    def _got(self, response: Any) -> None:
        self.response = response
        self.events.append(("response", response.version, response.code, response.phrase,
                            sorted(response.headers.getAllRawHeaders()), response.length))
        if self.claim in ("now", "raising"):
            self.claimBody()

    def claimBody(self) -> None:
        events = self.events
        raising = self.claim == "raising"

        class Collect(Protocol):
            def dataReceived(self, data: bytes) -> None:
                events.append(("body", data))
                if raising:
                    raise RuntimeError("a consumer bug")

            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                events.append(("end", _describe(reason)))

        self.response.deliverBody(Collect())

    def feed(self, pieces: list[bytes]) -> _Exchange:
        for piece in pieces:
            if self.transport.disconnecting:
                break  # a closed socket reads nothing more
            self.proto.dataReceived(piece)
        self.events.append(("after", self.proto.state, self.transport.disconnecting, self.transport.producerState))
        if self.response is not None and self.claim == "later":
            self.claimBody()
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.events.append(("closed", self.proto.state))
        return self


_CODES = [b"200", b"201", b"404", b"503", b"204", b"304", b"100", b"101", b"099", b"20", b"2000", b"+20", b"2x0"]
_PHRASES = [b" OK", b"", b" ", b" Not Found", b" a\tb", b" x\x01y"]
# The first seven are what plain responses carry (Connection options included: many servers send
# "Connection: keep-alive"); the rest only the others.
_NAMES = [b"Content-Type", b"content-type", b"X-A", b"Set-Cookie", b"Connection", b"Keep-Alive", b"X-B",
          b"Transfer-Encoding", b"Upgrade", b"TE"]
_VALUES = [b"text/plain", b" spaced ", b"a, b", b"close", b"keep-alive", b"chunked", b"", b"x-b", b"1\x0b",
           b"X-A, keep-alive", b"Close", b"timeout=5", b"a b", b"set-cookie", b"x-b,,close"]


@st.composite
def _responses(draw: Any) -> bytes:
    # Mostly what backends send, so that the short way is taken often; then everything else.
    plain = draw(st.booleans())
    version = b"HTTP/1.1" if plain else draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1"]))
    code = draw(st.sampled_from(_CODES[:4] if plain else _CODES))
    status = version + b" " + code + draw(st.sampled_from(_PHRASES[:4] if plain else _PHRASES))
    fields = [n + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + v
              for n, v in draw(st.lists(st.tuples(st.sampled_from(_NAMES[:7] if plain else _NAMES),
                                                  st.sampled_from(_VALUES)), max_size=4))]
    body = draw(st.binary(max_size=24))
    framing = draw(st.sampled_from(["length", "length", "short", "long", "chunked", "chunked-cut"] if plain else
                                   ["length", "none", "short", "long", "twice", "conflict", "bad", "chunked",
                                    "chunked-bad"]))
    if framing.startswith("chunked"):
        fields.insert(draw(st.integers(0, len(fields))),
                      b"Transfer-Encoding: " + draw(st.sampled_from([b"chunked", b"Chunked", b"chunked "])))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        ext = draw(st.sampled_from([b"", b";a=1"]))
        trailer = draw(st.sampled_from([b"", b"X-T: 1\r\n"]))
        body = b"".join(b"%x%s\r\n%s\r\n" % (len(x), ext, x) for x in pieces) + b"0\r\n" + trailer + b"\r\n"
        if framing == "chunked-cut":
            body = body[:draw(st.integers(0, len(body)))]  # the origin closes partway
        elif framing == "chunked-bad":
            body = b"zz\r\n" + body
    elif framing != "none":
        n = {"length": len(body), "short": max(len(body) - 1, 0), "long": len(body) + 1}.get(framing, len(body))
        fields.insert(draw(st.integers(0, len(fields))), b"Content-Length: %d" % n)
        if framing == "twice":
            fields.append(b"Content-Length: %d" % n)
        elif framing == "conflict":
            fields.append(b"Content-Length: %d" % (n + 2))
        elif framing == "bad":
            fields[-1] = b"Content-Length: 0x%d" % n
    raw = b"\r\n".join([status, *fields]) + b"\r\n\r\n" + body
    if not plain and draw(st.booleans()):
        # A byte a parser must judge: a bare LF or CR, NUL, obs-fold, a stray colon or space.
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\n", b"\r", b"\x00", b"\r\n ", b":", b" ", b"\r\n"])) + raw[at:]
    return raw


def _cuts(raw: bytes) -> dict[str, list[bytes]]:
    end = raw.find(b"\r\n\r\n")
    cuts = {"whole": [raw], "bytewise": [raw[i:i + 1] for i in range(len(raw))]}
    if end != -1:
        body = end + 4
        half = body + (len(raw) - body) // 2
        cuts["head, then body"] = [raw[:body], raw[body:]]
        cuts["head and half the body, then the rest"] = [raw[:half], raw[half:]]
        cuts["head and a byte, then a byte at a time"] = [raw[:body + 1]] + [raw[i:i + 1] for i in range(body + 1, len(raw))]
    return cuts


_SETTINGS = settings(max_examples=400, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class ShortWayTests(SynchronousTestCase):
    @_SETTINGS
    @given(_responses(), st.sampled_from([b"GET", b"HEAD", b"POST"]), st.sampled_from(["now", "later", "raising"]))
    def test_sameAsTheStockWay(self, raw: bytes, method: bytes, claim: str) -> None:
        """Whatever the response, however it is cut and even if its consumer fails, the short ways end as the stock way."""
        for name, pieces in _cuts(raw).items():
            stock = _Exchange(_StockWay, method, claim).feed(pieces).events
            short = _Exchange(StrictClientProtocol, method, claim).feed(pieces).events
            self.flushLoggedErrors(RuntimeError)
            self.assertEqual(short, stock, f"{name}: {raw!r}")

    def test_aWholeResponseTakesTheShortWay(self) -> None:
        """The common case really is short: no parser is ever made, and the connection is pooled before the end."""
        x = _Exchange(StrictClientProtocol)
        x.proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi")
        self.assertIsNone(x.proto._parser)
        self.assertEqual(x.events[1:], [("body", b"hi"), "pooled", ("end", ("ResponseDone",))])
        self.assertEqual(x.proto.state, "QUIESCENT")

    def test_requestBytesAreTheStockOnes(self) -> None:
        """The short way writes the same request head as the stock way."""
        for method in (b"GET", b"DELETE", b"PUT", b"POST"):
            short, stock = _Exchange(StrictClientProtocol, method), _Exchange(_StockWay, method)
            self.assertEqual(short.transport.value(), stock.transport.value())

    def test_cancelledBeforeTheResponse(self) -> None:
        """A timed-out request fails and aborts its connection as the stock way's does."""
        results = []
        for cls in (StrictClientProtocol, _StockWay):
            x = _Exchange(cls)
            x.d.cancel()
            results.append((x.events, x.transport.disconnecting))
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0][0], [("failed", ("ResponseNeverReceived", "CancelledError"))])

    def test_connectionLostBeforeTheResponse(self) -> None:
        results = []
        for cls in (StrictClientProtocol, _StockWay):
            x = _Exchange(cls)
            x.proto.connectionLost(Failure(ConnectionDone()))
            results.append(x.events)
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0], [("failed", ("ResponseNeverReceived", "ConnectionDone"))])

    def test_aPausedConsumerLeavesTheConnectionReading(self) -> None:
        """A slow client pauses the upstream while the body is relayed; the pooled connection reads again."""
        x = _Exchange(StrictClientProtocol, claim="none")
        x.d.addCallback(lambda r: x.transport.pauseProducing())
        x.proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(x.transport.producerState, "producing")
        self.assertIn("pooled", x.events)

    def test_aFailingPoolCallbackClosesTheConnection(self) -> None:
        """As the stock way: the connection cannot be reused, so it is closed, and the response still completes."""
        def broken(p: Any) -> None:
            raise RuntimeError("pool bug")

        x = _Exchange(StrictClientProtocol, quiescent=broken)
        x.proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        self.assertTrue(x.transport.disconnecting)
        self.assertEqual(x.events[-1], ("end", ("ResponseDone",)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancelAfterTheResponseDoesNothing(self) -> None:
        x = _Exchange(StrictClientProtocol)
        x.proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        x.d.cancel()
        self.assertFalse(x.transport.disconnecting)
        self.assertNotIsInstance(x.d.result if hasattr(x.d, "result") else None, CancelledError)


class UpstreamRequestHeadTests(SynchronousTestCase):
    def test_sameBytesAsTheStockRequest(self) -> None:
        """The forwarded request's one-join head is byte for byte the stock Request's."""
        headers = Headers({b"host": [b"backend:8080"], b"accept": [b"a", b"b"], b"x-request-id": [b"1"]})
        for method in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"FROB"):
            for body in (None, BytesProducer(b"{}")):
                for persistent in (True, False):
                    ours, stock = StringTransport(), StringTransport()
                    UpstreamRequest(method, b"/p?q=1", headers, body, persistent).writeTo(ours)
                    ClientRequest(method, b"/p?q=1", headers, body, persistent).writeTo(stock)
                    self.assertEqual(ours.value(), stock.value(), (method, body, persistent))

    def test_badHeadersAreRefusedAsByTheStockRequest(self) -> None:
        """No Host, two Hosts or a method that is not a token: the stock checks still refuse them."""
        for method, hosts in ((b"GET", []), (b"GET", [b"a", b"b"]), (b"G T", [b"a"])):
            headers = Headers({b"host": hosts} if hosts else {})
            with self.assertRaises(Exception) as ours:
                UpstreamRequest(method, b"/", headers, None, True).writeTo(StringTransport())
            with self.assertRaises(Exception) as stock:
                ClientRequest(method, b"/", headers, None, True).writeTo(StringTransport())
            self.assertEqual(type(ours.exception), type(stock.exception))
