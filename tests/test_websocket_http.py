"""
WebSocket upgrades through the real Site, channel and resource tree, over
StringTransports on a Clock: what reaches the target, what the client reads,
and what is refused before any target is asked.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txgateway.config.schema import TracingConfig, TracingOTLP
from txgateway.http.handshake import TargetProtocol, requestHead
from txgateway.http.upgrade import isUpgrade
from txgateway.observe.tracing import Tracer
from txgateway.websocket.frames import GOING_AWAY

from .support import FakeAgent, FakeResponse, Wire, parseResponses
from .wssupport import closeCodeOf, frame

CONFIG = """\
server:
  listen: "tcp:8080"
  max_connections_per_ip: 50
logging: {access_log: false}
upstreams:
  app:
    targets: [http://127.0.0.1:9999]
    retries: false
    timeouts: {connect: 2s, response: 3s}
routes:
  - name: denied
    match: {path_prefix: /denied}
    upstream: app
    websocket: true
    ip_deny: [192.0.2.0/24]
  - name: browser
    match: {path_prefix: /browser}
    upstream: app
    websocket: true
    cors: {allow_origins: ["https://app.example"]}
  - name: live
    match: {path_prefix: /live}
    upstream: app
    websocket: true
    websocket_idle_timeout: 30s
    max_websockets: 2
    max_websockets_per_ip: 1
  - name: plain
    match: {path_prefix: /}
    upstream: app
"""

UPGRADE = (b"GET %s HTTP/1.1\r\nHost: gw.example\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
ACCEPT = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


class _Connect:
    """An endpoint whose connections are StringTransports the test reads and answers."""

    def __init__(self, agent: WsAgent) -> None:
        self.agent = agent

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.agent.hold:
            d: Deferred[Any] = Deferred()
            self.agent.pending.append(d)
            return d
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.agent.targets.append((proto, transport))
        return succeed(proto)


class WsAgent(FakeAgent):
    """The upstream's client: plain requests as L{FakeAgent}, upgrades on StringTransports."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[TargetProtocol, StringTransport]] = []
        self.hold = False
        self.pending: list[Deferred[Any]] = []

    def _getEndpoint(self, uri: Any) -> _Connect:
        self.uri = uri
        return _Connect(self)


class UpgradeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.agent = WsAgent()
        self.wire = Wire(config=CONFIG, agent=self.agent)
        self.logged: list[tuple[int, str | None, int, int]] = []
        runtime = self.wire.gateway.runtime

        class Log:
            def record(_, context: Any, duration: float) -> None:
                self.logged.append((context.status, context.outcome, context.request.bytesIn, context.bytesOut))

        runtime.accessLog = Log()  # type: ignore[assignment]

    def sample(self, name: str, **labels: str) -> float:
        return self.wire.metrics.registry.get_sample_value(name, labels) or 0.0

    def open(self, path: bytes = b"/live/feed", peer: str = "198.51.100.7") -> tuple[Any, StringTransport, Any,
                                                                                       StringTransport]:
        proto, client = self.wire.send(UPGRADE % path, peer)
        target, wire = self.agent.targets[-1]
        target.dataReceived(ACCEPT)
        return proto, client, target, wire

    def test_upgradeRelayedThenBytesBothWays(self) -> None:
        proto, client, target, wire = self.open()
        sent = wire.value()
        head = sent.split(b"\r\n\r\n")[0].lower()
        self.assertTrue(head.startswith(b"get /live/feed http/1.1\r\n"), head)
        for field in (b"upgrade: websocket", b"connection: upgrade", b"sec-websocket-key: dghlihnhbxbszsbub25jzq==",
                      b"x-forwarded-for: 198.51.100.7"):
            self.assertIn(field, head)
        answer = client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), answer)
        for field in (b"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=", b"upgrade: websocket",
                      b"connection: upgrade", b"x-request-id: "):
            self.assertIn(field, answer.lower())
        client.clear()
        wire.clear()
        hello = frame(1, b"hello", b"abcd")
        proto.dataReceived(hello)
        self.assertEqual(wire.value(), hello)
        target.dataReceived(frame(1, b"HELLO"))
        self.assertEqual(client.value(), frame(1, b"HELLO"))
        self.assertEqual(self.sample("txgateway_websocket_connections", route="live"), 1)
        self.assertEqual(self.sample("txgateway_websocket_upgrades_total", route="live", outcome="upgraded"), 1)
        # The client closes: the access-log line now, with the bytes each way and the close code.
        proto.dataReceived(frame(8, b"\x03\xe8", b"wxyz"))
        self.assertEqual(self.logged, [])
        proto.connectionLost(ConnectionError("closed"))
        self.assertEqual(self.logged, [(101, "websocket_closed_1000", len(hello) + 8, 7)])
        self.assertEqual(self.sample("txgateway_websocket_connections", route="live"), 0)
        self.assertTrue(wire.disconnecting)
        self.assertEqual(self.wire.gateway.state.inFlight, 0)

    def test_bytesSentWithTheRequestReachTheTarget(self) -> None:
        """A client that sends a frame right behind its upgrade request loses nothing (the channel had buffered it)."""
        hello = frame(1, b"early", b"abcd")
        proto, client = self.wire.send(UPGRADE % b"/live/x" + hello)
        target, wire = self.agent.targets[-1]
        wire.clear()
        target.dataReceived(ACCEPT)
        self.assertEqual(wire.value(), hello)

    def test_targetDroppingIsAFailureForItsBreaker(self) -> None:
        """A 101 counts as a success; a target that then drops the connection without a close frame, as a failure."""
        proto, client, target, wire = self.open()
        url = "http://127.0.0.1:9999"
        self.assertEqual(self.sample("txgateway_upstream_requests_total", upstream="app", target=url, status="101"), 1)
        target.connectionLost(ConnectionError("reset"))  # type: ignore[arg-type]
        self.assertEqual(self.sample("txgateway_upstream_requests_total", upstream="app", target=url,
                                     status="websocket_reset"), 1)
        self.assertEqual(closeCodeOf(client.value().split(b"\r\n\r\n", 1)[1]), 1011)
        self.assertEqual(self.wire.gateway.runtime.clusters["app"].endpoints[0].inFlight, 0)

    def test_tracedLikeARequest(self) -> None:
        """A traced upgrade: the handshake is a client span whose id the target gets as the traceparent parent."""
        spans: list[Any] = []

        class Sink:
            def add(_, batch: list[Any]) -> None:
                spans.extend(batch)

        state = self.wire.gateway.state
        state.tracer = Tracer(TracingConfig(TracingOTLP("http://127.0.0.1:4318/v1/traces")), self.wire.clock,
                              state.ids, Sink())
        proto, client, target, wire = self.open()
        traceparent = [line for line in wire.value().split(b"\r\n") if line.lower().startswith(b"traceparent:")]
        proto.connectionLost(ConnectionError("closed"))
        self.assertEqual(len(spans), 2)
        [server] = [span for span in spans if span.parentId is None]
        [attempt] = [span for span in spans if span.parentId is not None]
        self.assertEqual(attempt.parentId, server.spanId)
        self.assertIn(attempt.spanId.encode(), traceparent[0])
        self.assertIn(("http.response.status_code", 101), attempt.attributes)

    def test_channelTimersOffAfterTakeover(self) -> None:
        """The HTTP/1.1 channel keeps its timers off a taken-over connection: the head deadline does not fire."""
        proto, client, target, wire = self.open()
        self.wire.clock.advance(25)
        self.assertFalse(client.disconnecting)
        self.wire.clock.advance(6)  # the route's 30 s idle timeout
        self.assertEqual(closeCodeOf(client.value().split(b"\r\n\r\n", 1)[1]), GOING_AWAY)

    def test_nonUpgradeAnswerRelayedAsItWas(self) -> None:
        proto, client = self.wire.send(UPGRADE % b"/live/x")
        target, wire = self.agent.targets[-1]
        target.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"5\r\nno ws\r\n")
        target.dataReceived(b"0\r\n\r\n")
        [response] = parseResponses(client.value())
        self.assertEqual((response.status, response.body), (403, b"no ws"))
        self.assertEqual(response.header(b"content-type"), [b"text/plain"])
        self.assertTrue(wire.disconnecting, "an upgrade's target connection is never reused")
        self.assertFalse(client.disconnecting, "the client's connection stays an HTTP/1.1 connection")
        self.assertEqual(self.sample("txgateway_websocket_upgrades_total", route="live", outcome="target_refused"), 1)
        self.assertEqual(self.logged[0][:2], (403, None))

    def test_routeWithoutWebsocketForwardsAPlainGet(self) -> None:
        """Today's behaviour, kept: Upgrade and Connection are hop-by-hop and go no further."""
        self.agent.autoRespond = FakeResponse(200, body=b"plain")
        _, client = self.wire.send(UPGRADE % b"/other")
        [response] = parseResponses(client.value())
        self.assertEqual((response.status, response.body), (200, b"plain"))
        [sent] = self.agent.sent
        self.assertEqual((sent.header(b"upgrade"), sent.header(b"connection")), ([], []))
        self.assertEqual(self.agent.targets, [])

    def test_routeRulesComeFirst(self) -> None:
        """An upgrade the route's IP rules refuse gets their 403; no target is asked."""
        [response], _ = self.wire.exchange(UPGRADE % b"/denied/x", peer="192.0.2.10")
        self.assertEqual(response.status, 403)
        self.assertEqual(self.agent.targets, [])

    def test_originCheckedAgainstCors(self) -> None:
        """Browsers do not apply CORS to WebSockets: the route's allow_origins is enforced on the upgrade."""
        withOrigin = UPGRADE.replace(b"Host: gw.example\r\n", b"Host: gw.example\r\nOrigin: %s\r\n")
        [refused], _ = self.wire.exchange(withOrigin % (b"/browser/x", b"https://evil.example"))
        self.assertEqual(refused.status, 403)
        self.assertEqual(self.agent.targets, [])
        self.wire.send(withOrigin % (b"/browser/x", b"https://app.example"))
        self.wire.send(UPGRADE % b"/browser/x")  # no Origin: not a browser, as for CORS
        self.assertEqual(len(self.agent.targets), 2)

    def test_caps(self) -> None:
        """Per client address 429, per route 503; a closed WebSocket gives its place back."""
        first = self.open(peer="198.51.100.7")
        [again], _ = self.wire.exchange(UPGRADE % b"/live/x", peer="198.51.100.7")
        self.assertEqual(again.status, 429)
        self.open(peer="198.51.100.8")
        [full], _ = self.wire.exchange(UPGRADE % b"/live/x", peer="198.51.100.9")
        self.assertEqual(full.status, 503)
        self.assertEqual(len(self.agent.targets), 2)
        first[0].connectionLost(ConnectionError("closed"))
        self.open(peer="198.51.100.9")
        self.assertEqual(self.sample("txgateway_websocket_connections", route="live"), 2)

    def test_targetClosesBeforeAnswering(self) -> None:
        proto, client = self.wire.send(UPGRADE % b"/live/x")
        target, _ = self.agent.targets[-1]
        target.connectionLost(ConnectionError("reset"))  # type: ignore[arg-type]
        [response] = parseResponses(client.value())
        self.assertEqual(response.status, 502)

    def test_noAnswerInTime(self) -> None:
        """The upstream's response timeout covers the handshake: 504, and the target connection is dropped."""
        proto, client = self.wire.send(UPGRADE % b"/live/x")
        _, wire = self.agent.targets[-1]
        self.wire.clock.advance(3.1)
        [response] = parseResponses(client.value())
        self.assertEqual(response.status, 504)
        self.assertTrue(wire.disconnecting)

    def test_targetNotConnecting(self) -> None:
        """A connection that does not come within timeouts.connect: 502, as a connect failure is for a request."""
        self.agent.hold = True
        proto, client = self.wire.send(UPGRADE % b"/live/x")
        self.wire.clock.advance(2.1)
        [response] = parseResponses(client.value())
        self.assertEqual(response.status, 502)
        self.assertEqual(self.sample("txgateway_upstream_requests_total", upstream="app",
                                     target="http://127.0.0.1:9999", status="connect_failure"), 1)

    def test_drainingRefusesUpgrades(self) -> None:
        self.wire.gateway.runtime.websockets.drain(10)
        [response], _ = self.wire.exchange(UPGRADE % b"/live/x")
        self.assertEqual(response.status, 503)

    def test_drainClosesWith1001BothWays(self) -> None:
        proto, client, target, wire = self.open()
        client.clear()
        wire.clear()
        self.wire.gateway.runtime.websockets.drain(10)
        self.wire.clock.advance(9.5)
        self.assertEqual(closeCodeOf(client.value()), GOING_AWAY)
        self.assertEqual(closeCodeOf(wire.value()), GOING_AWAY)


class HandshakeTests(SynchronousTestCase):
    def test_isUpgrade(self) -> None:
        wire = Wire(config=CONFIG)
        seen: list[bool] = []
        proto, _ = wire.connect()  # a GatewayChannel: HTTP/2 streams are never upgrades
        request = proto.requestFactory(proto, 0)
        request.method, request.clientproto = b"GET", b"HTTP/1.1"
        for upgrade, connection, expected in ((b"websocket", b"Upgrade", True), (b"WebSocket", b"x, upgrade", True),
                                              (b"h2c", b"Upgrade", False), (b"websocket", b"keep-alive", False)):
            request.requestHeaders.setRawHeaders(b"upgrade", [upgrade])
            request.requestHeaders.setRawHeaders(b"connection", [connection])
            seen.append(isUpgrade(request) is expected)
        request.clientproto = b"HTTP/1.0"
        request.requestHeaders.setRawHeaders(b"connection", [b"Upgrade"])
        seen.append(not isUpgrade(request))
        self.assertEqual(seen, [True] * 5)

    def test_contentLengthBodyAndTheHeadSplit(self) -> None:
        """A non-101 head split across reads, its body by Content-Length; a body reader sees it whole."""
        proto = TargetProtocol(requestHead(b"/x", FakeResponse().headers))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), b"GET /x HTTP/1.1\r\n\r\n")
        got: list[Any] = []
        proto.answered.addCallback(got.append)
        proto.dataReceived(b"HTTP/1.1 404 Not Found\r\nContent-Le")
        self.assertEqual(got, [])
        proto.dataReceived(b"ngth: 4\r\n\r\nnope and more")
        [response] = got
        self.assertEqual((response.code, response.phrase, response.length), (404, b"Not Found", 4))

        class Reader:
            data = b""
            done: Any = None

            def makeConnection(self, t: Any) -> None:
                pass

            def dataReceived(self, d: bytes) -> None:
                self.data += d

            def connectionLost(self, reason: Any) -> None:
                self.done = reason

        reader = Reader()
        response.deliverBody(reader)
        self.assertEqual(reader.data, b"nope")
        self.assertIsNotNone(reader.done)
        self.assertTrue(transport.disconnecting)

    def test_noNagleTowardsTheTarget(self) -> None:
        """Small frames are not held back behind delayed ACKs: TCP_NODELAY on the target's connection."""
        calls: list[bool] = []

        class TcpTransport(StringTransport):
            def setTcpNoDelay(self, enabled: bool) -> None:
                calls.append(enabled)

        TargetProtocol(b"").makeConnection(TcpTransport())
        self.assertEqual(calls, [True])

    def test_garbageAnswerIsRefused(self) -> None:
        proto = TargetProtocol(b"")
        proto.makeConnection(StringTransport())
        failures: list[Any] = []
        proto.answered.addErrback(failures.append)
        proto.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertEqual(len(failures), 1)
