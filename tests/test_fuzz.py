"""
Fuzzing the request head: random and mutated bytes into an in-memory gateway.

The gateway (real GatewaySite, channel, resource tree, forwarder; fake
upstream agent; MemoryReactorClock) must never raise, never log a failure,
never hold a connection past its deadlines, and never forward a request
whose framing differs from what it parsed: the upstream always gets a body
the gateway counted byte by byte, framed by the gateway (RFC 9112 §6), and a
well-formed request reaches the backend exactly as it was sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from tests.support import FakeResponse, Wire, parseResponses
from txgateway.http.request import GatewayRequest

# The longest a connection may legitimately stay open with nothing more
# sent: head deadline + body deadline + upstream answer (immediate here) +
# idle timeout, with margin.  See BASE_CONFIG in test_hardening.
_SETTLE = 10 + 20 + 60 + 5

_FRAMING = (b"content-length", b"transfer-encoding", b"connection", b"expect", b"keep-alive", b"te")

_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                 max_size=12).map(str.encode)
_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ,;=/.-_", max_size=30).map(
    lambda s: s.strip().encode())
_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")).map(str.encode)


@st.composite
def validRequest(draw: Callable[..., Any]) -> tuple[bytes, bytes, bytes, bytes]:
    """(wire bytes, method, path, body) of a well-formed HTTP/1.1 request."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    path = b"/" + b"/".join(draw(st.lists(_SEGMENT, max_size=4)))
    query = draw(st.one_of(st.just(b""), _SEGMENT.map(lambda q: b"?q=" + q)))
    headers = [b"Host: " + draw(st.sampled_from([b"example.com", b"EXAMPLE.com.", b"example.com:8080"]))]
    for name, value in draw(st.lists(st.tuples(_TOKEN, _VALUE), max_size=4)):
        if name.lower() not in (b"host", b"content-length", b"transfer-encoding", b"connection", b"via",
                                b"expect", b"te", b"upgrade", b"keep-alive", b"trailer"):
            headers.append(name + b": " + value)
    body = draw(st.binary(max_size=300)) if method in (b"POST", b"PUT", b"PATCH") else b""
    framing = draw(st.sampled_from(["length", "chunked"])) if body else "none"
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
        encoded = body
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        encoded = b""
    head = b"%s %s%s HTTP/1.1\r\n%s\r\n" % (method, path, query, b"".join(h + b"\r\n" for h in headers))
    return head + encoded, method, path + query, body


_INSERTS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b",", b"%2F", b"%2e%2e/", b"\\", b"#",
            b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: identity\r\n", b"Content-Length: 5\r\n",
            b"Content-Length: -1\r\n", b"Host: b.example\r\n", b"Host:\r\n", b"Via: 1.1 txgateway\r\n",
            b"Expect: 100-continue\r\n", b"Connection: close, X-Forwarded-For\r\n", b" folded\r\n",
            b"0\r\n\r\n", b"ffffffff\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.0", b"\xff", b"a" * 300]


@st.composite
def mutated(draw: Callable[..., Any]) -> bytes:
    data = bytearray(draw(st.lists(validRequest(), min_size=1, max_size=2)).pop()[0])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "flip", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[at:at] = draw(st.sampled_from(_INSERTS))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


def _split(draw: Callable[..., Any], data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


class _RecordingRequest(GatewayRequest):
    """Remembers its context: the gateway lets go of it once the request is done."""

    recorded: Any = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "context" and value is not None:
            object.__setattr__(self, "recorded", value)
        super().__setattr__(name, value)


class _Run:
    """One connection's worth of fuzzed bytes through a fresh gateway."""

    def __init__(self) -> None:
        self.wire = Wire()
        self.wire.agent.autoRespond = FakeResponse(200, [(b"X-Upstream", b"1")], b"upstream body")
        self.requests: list[_RecordingRequest] = []

        def factory(channel: Any, queued: Any) -> GatewayRequest:
            request = _RecordingRequest(channel, queued)
            self.requests.append(request)
            return request

        self.wire.site.requestFactory = factory  # type: ignore[assignment]
        self.failures: list[dict[str, Any]] = []
        self.proto, self.transport = self.wire.connect()

    def feed(self, pieces: list[bytes], pauses: list[float]) -> None:
        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None or event.get("isError"):
                self.failures.append(event)

        globalLogPublisher.addObserver(observe)
        try:
            for i, piece in enumerate(pieces):
                if self.transport.disconnecting:
                    break
                self.proto.dataReceived(piece)
                if i < len(pauses):
                    self.wire.clock.advance(pauses[i])
            for _ in range(_SETTLE):
                self.wire.clock.advance(1)
        finally:
            globalLogPublisher.removeObserver(observe)

    def check(self, case: SynchronousTestCase) -> None:
        case.assertEqual(self.failures, [], "the gateway logged a failure")
        case.assertTrue(self.transport.disconnecting, "the connection outlived every deadline")
        byId = {r.recorded.requestId: r for r in self.requests if r.recorded is not None}
        for sent in self.wire.agent.sent:
            for name in _FRAMING:
                case.assertEqual(sent.header(name), [], f"client framing field {name!r} forwarded")
            request = byId[sent.header(b"x-request-id")[0].decode()]
            counted = getattr(request, "_bodyBytes", 0)
            case.assertEqual(len(sent.body or b""), counted, "forwarded body differs from the body parsed")
            case.assertEqual(sent.length if sent.body else 0, counted)
        # What went back is well-formed HTTP/1.1, one response per request answered.
        parseResponses(self.transport.value())


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(validRequest(), min_size=1, max_size=3), st.data())
    def test_wellFormedRequestsReachTheBackendExactly(self, reqs: list[tuple[bytes, bytes, bytes, bytes]],
                                                       data: st.DataObject) -> None:
        """RFC 9112 §6 / §9.3.2: pipelined, arbitrarily split valid requests are forwarded as parsed, in order."""
        wire = b"".join(r[0] for r in reqs)
        pieces = _split(data.draw, wire)
        run = _Run()
        run.feed(pieces, [0.1] * len(pieces))
        run.check(self)
        sent = run.wire.agent.sent
        self.assertEqual(len(sent), len(reqs))
        for s, (_, method, target, body) in zip(sent, reqs, strict=True):
            self.assertEqual(s.method, method)
            self.assertEqual(s.uri, b"http://127.0.0.1:9999" + target)
            self.assertEqual(s.body or b"", body)
        statuses = [r.status for r in parseResponses(run.transport.value())]
        self.assertEqual(statuses, [200] * len(reqs))

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(), st.data())
    def test_mutatedRequestsNeverCrashHangOrReframe(self, raw: bytes, data: st.DataObject) -> None:
        """RFC 9112 §6.3 / §11.2: whatever the bytes, no crash, no hang past the deadlines, no re-framed forward."""
        pieces = _split(data.draw, raw)
        pauses = data.draw(st.lists(st.sampled_from([0.0, 0.5, 3.0, 12.0]), min_size=len(pieces),
                                    max_size=len(pieces)))
        run = _Run()
        run.feed(pieces, pauses)
        run.check(self)

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.binary(max_size=400))
    def test_randomBytesNeverCrashOrHang(self, raw: bytes) -> None:
        """RFC 9112 §2.2: arbitrary bytes are answered with an error or ignored, and the connection always ends."""
        run = _Run()
        run.feed([raw], [])
        run.check(self)


def _seen(run: _Run) -> tuple[list[Any], list[Any]]:
    """What the client and the upstream got, without the per-request random ids."""
    ids = re.compile(rb'"request_id":"[0-9a-f]+"')
    client = [(r.status, [h for h in r.headers if h[0].lower() != b"x-request-id"], ids.sub(b"", r.body))
              for r in parseResponses(run.transport.value())]
    upstream = [(s.method, s.uri, s.body,
                 sorted((k, v) for k, vs in s.headers.getAllRawHeaders() for v in vs
                        if k.lower() not in (b"x-request-id", b"traceparent")))
                for s in run.wire.agent.sent]
    return client, upstream


class WholeHeadTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(validRequest().map(lambda r: r[0]), mutated()))
    def test_aHeadInOneReadIsTakenAsLineByLine(self, raw: bytes) -> None:
        """A request head read whole (the channel's shortcut) gets exactly what it gets read a byte at a time."""
        whole, bytewise = _Run(), _Run()
        whole.feed([raw], [])
        bytewise.feed([raw[i:i + 1] for i in range(len(raw))], [0.0] * len(raw))
        whole.check(self)
        bytewise.check(self)
        self.assertEqual(_seen(whole), _seen(bytewise))
