"""
The listening side's limits and deadlines, at the wire, on a Clock.

GatewayChannel is fed bytes through a C{StringTransport}; time only moves
when a test advances the C{MemoryReactorClock} the GatewaySite was given.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.support import BASE_CONFIG, FakeResponse, Wire, get, parseResponses
from txgateway.http.channel import GatewayChannel
from txgateway.http.request import GatewayRequest
from txgateway.http.site import GatewaySite


def _status(transport: StringTransport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


class LimitTests(SynchronousTestCase):
    def test_siteBuildsGatewayChannels(self) -> None:
        """The Site's protocol and request classes are the bounded ones."""
        wire = Wire()
        proto, _ = wire.connect()
        self.assertIsInstance(proto, GatewayChannel)
        self.assertIs(wire.site.requestFactory, GatewayRequest)

    def test_headOverMaxHeaderBytesIs431(self) -> None:
        """RFC 6585 §5: a request head over max_header_bytes (2 KiB here) gets 431 and the connection closes."""
        wire = Wire()
        _, transport = wire.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n" + b"X-A: aaaaaaaaaa\r\n" * 200)
        self.assertEqual(_status(transport), b"HTTP/1.1 431 Request Header Fields Too Large")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(wire.agent.sent, [])

    def test_oneHugeHeaderLineIs431(self) -> None:
        """RFC 6585 §5: a single header line longer than the head limit gets 431, not a silent close."""
        wire = Wire()
        _, transport = wire.send(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"y" * 3000)
        self.assertEqual(_status(transport), b"HTTP/1.1 431 Request Header Fields Too Large")

    def test_contentLengthOverLimitIs413WithoutContinue(self) -> None:
        """RFC 9110 §10.1.1 / §15.5.14: 413 from Content-Length at once; no 100 Continue invites the upload."""
        wire = Wire()
        _, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n"
                                 b"Content-Length: 1025\r\n\r\n")
        self.assertEqual(_status(transport), b"HTTP/1.1 413 Content Too Large")
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_bodyWithinLimitGetsContinue(self) -> None:
        """RFC 9110 §10.1.1: a body the gateway will take is invited with 100 Continue."""
        wire = Wire()
        wire.agent.autoRespond = FakeResponse(200, [], b"")
        proto, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n"
                                     b"Content-Length: 4\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        proto.dataReceived(b"abcd")
        self.assertEqual(wire.agent.sent[0].body, b"abcd")

    def test_chunkedBodyOverLimitIs413AndNeverForwarded(self) -> None:
        """RFC 9112 §7.1: a chunked body is cut off once it passes max_request_body, even when it all arrived at once."""
        wire = Wire()
        chunk = b"x" * 600
        _, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n")
        self.assertEqual(_status(transport), b"HTTP/1.1 413 Content Too Large")
        self.assertEqual(wire.agent.sent, [])
        self.assertEqual(len(parseResponses(transport.value())), 1)

    def test_malformedChunkIs400Json(self) -> None:
        """RFC 9112 §7.1: a bad chunk size is refused with our JSON 400."""
        wire = Wire()
        _, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"zz\r\nabc\r\n0\r\n\r\n")
        r = parseResponses(transport.value())[0]
        self.assertEqual(r.status, 400)
        self.assertEqual(r.header(b"content-type"), [b"application/json"])
        self.assertEqual(wire.agent.sent, [])

    def test_malformedRequestLineIs400(self) -> None:
        """RFC 9112 §3: a request line that is not method SP target SP version gets 400."""
        for line in (b"GET /", b"GET  / HTTP/1.1", b"GET / HTTP/2.0", b"G(T / HTTP/1.1", b"GET / HTTP/1.1 x"):
            wire = Wire()
            _, transport = wire.send(line + b"\r\nHost: example.com\r\n\r\n")
            self.assertEqual(_status(transport), b"HTTP/1.1 400 Bad Request", line)

    def test_pipelinedRequestsAreAnsweredInOrder(self) -> None:
        """RFC 9112 §9.3.2: pipelined requests get their responses in the order they were sent."""
        wire = Wire()
        responses, _ = wire.exchange(get(b"/one") + get(b"/two"), FakeResponse(200, [], b"x"))
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertEqual([s.uri for s in wire.agent.sent],
                         [b"http://127.0.0.1:9999/one", b"http://127.0.0.1:9999/two"])


class DeadlineTests(SynchronousTestCase):
    def test_tricklingHeadIsCutOffAt408(self) -> None:
        """RFC 9110 §15.5.9: a head trickled a line a second is cut off at request_header (10s), idle timer or not."""
        wire = Wire()
        proto, transport = wire.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(9):
            wire.clock.advance(1)
            proto.dataReceived(b"X-Slow: 1\r\n")
        self.assertEqual(transport.value(), b"")
        wire.clock.advance(1)
        self.assertEqual(_status(transport), b"HTTP/1.1 408 Request Timeout")
        self.assertTrue(transport.disconnecting)

    def test_silentNewConnectionIsCutOffAt408(self) -> None:
        """RFC 9110 §15.5.9: a connection that never sends its first request head is closed at request_header."""
        wire = Wire()
        _, transport = wire.connect()
        wire.clock.advance(10)
        self.assertEqual(_status(transport), b"HTTP/1.1 408 Request Timeout")

    def test_headDeadlineIsReArmedPerRequestOnKeepAlive(self) -> None:
        """RFC 9112 §9.3: on a kept-alive connection each request head gets its own deadline from its first byte."""
        wire = Wire()
        wire.agent.autoRespond = FakeResponse(200, [], b"ok")
        proto, transport = wire.send(get(b"/first"))
        self.assertEqual(len(parseResponses(transport.value())), 1)
        transport.clear()
        wire.clock.advance(30)  # idle between requests: the idle timeout's business (60s), not a 408
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"GET /second HTTP/1.1\r\n")
        wire.clock.advance(9.5)
        self.assertEqual(transport.value(), b"")
        wire.clock.advance(0.5)
        self.assertEqual(_status(transport), b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(len(wire.agent.sent), 1)

    def test_completeRequestsLeaveNoDeadlineBehind(self) -> None:
        """A request head and body that arrived in time leave no 408 armed while the response is produced."""
        wire = Wire()
        proto, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi")
        wire.clock.advance(25)  # past both deadlines: the upstream is slow, the client did its part
        self.assertEqual(transport.value(), b"")
        wire.agent.sent[0].deferred.callback(FakeResponse(200, [], b"done"))
        self.assertEqual(parseResponses(transport.value())[0].body, b"done")

    def test_slowBodyIsCutOffAt408(self) -> None:
        """RFC 9110 §15.5.9: a body that has not all arrived within request_body (20s) gets 408; nothing is forwarded."""
        wire = Wire()
        proto, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\n")
        for _ in range(19):
            proto.dataReceived(b"x")
            wire.clock.advance(1)
        self.assertEqual(transport.value(), b"")
        wire.clock.advance(1)
        self.assertEqual(_status(transport), b"HTTP/1.1 408 Request Timeout")
        self.assertIn(b"request body", transport.value())
        self.assertEqual(wire.agent.sent, [])

    def test_slowChunkedBodyIsCutOffAt408(self) -> None:
        """RFC 9110 §15.5.9: the body deadline holds for chunked bodies too."""
        wire = Wire()
        proto, transport = wire.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        proto.dataReceived(b"1\r\nx\r\n")
        wire.clock.advance(20)
        self.assertEqual(_status(transport), b"HTTP/1.1 408 Request Timeout")

    def test_idleKeepAliveConnectionClosesAtIdleTimeout(self) -> None:
        """server.timeouts.idle closes a kept-alive connection with nothing in flight, without a response."""
        wire = Wire()
        wire.agent.autoRespond = FakeResponse(200, [], b"ok")
        _, transport = wire.send(get())
        transport.clear()
        wire.clock.advance(60)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_idleTimeCountsFromTheLastAnswer(self) -> None:
        """A request at 40s keeps the connection: it closes 60s after that answer, not 60s after the first."""
        wire = Wire()
        wire.agent.autoRespond = FakeResponse(200, [], b"ok")
        proto, transport = wire.send(get())
        wire.clock.advance(40)
        proto.dataReceived(get())
        wire.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        wire.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_slowUpstreamIsNotAnIdleConnection(self) -> None:
        """A request waiting 100s on its upstream is not cut by the 60s idle timeout; idleness starts with the answer."""
        wire = Wire(config=BASE_CONFIG.format(extra="").replace(
            "    retries: false", "    retries: false\n    timeouts: {response: 200s}"))
        proto, transport = wire.send(get())
        wire.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        wire.agent.sent[0].deferred.callback(FakeResponse(200, [], b"late"))
        self.assertEqual(_status(transport), b"HTTP/1.1 200 OK")
        wire.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        wire.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_closedConnectionLeavesNoIdleTimer(self) -> None:
        """A connection that goes away does not keep its idle timer (and itself) on the reactor."""
        wire = Wire()
        wire.agent.autoRespond = FakeResponse(200, [], b"ok")
        proto, transport = wire.send(get())
        proto.connectionLost(None)
        self.assertEqual(wire.clock.getDelayedCalls(), [])

    def test_clientThatNeverReadsIsAbortedAfterRefusal(self) -> None:
        """A refused client that does not read our answer is aborted, not kept forever."""
        wire = Wire()
        proto, transport = wire.connect()
        wire.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(wire.clock.getDelayedCalls())
        wire.clock.advance(proto.abortTimeout)
        self.assertTrue(transport.disconnected)

    def test_connectionLostCancelsDeadlines(self) -> None:
        """A connection that goes away leaves no timer behind on the reactor."""
        wire = Wire()
        proto, transport = wire.send(b"GET / HTTP/1.1\r\n")
        proto.connectionLost(None)
        self.assertEqual([c for c in wire.clock.getDelayedCalls() if c.func.__name__ in ("_expired",)], [])


class WriteTimeoutTests(SynchronousTestCase):
    """server.timeouts.write (60s by default): a response the client stops reading is aborted (issue #18, item 3)."""

    def _stalled(self, config: str | None = None) -> tuple[Wire, Any, StringTransport]:
        wire = Wire(config=config)
        proto, transport = wire.send(get())
        # What a TCP transport does when its send buffer fills: pause its producer, the channel.
        proto.pauseProducing()
        return wire, proto, transport

    def _timeouts(self, wire: Wire) -> float:
        return wire.metrics.registry.get_sample_value("txgateway_write_timeouts_total") or 0.0

    def test_aClientThatStopsReadingIsAbortedAtTheWriteTimeout(self) -> None:
        """No progress for timeouts.write: the connection is aborted and counted; a moment before, it is not."""
        wire, _, transport = self._stalled()
        wire.clock.advance(59.9)
        self.assertFalse(transport.disconnected)
        wire.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self._timeouts(wire), 1.0)

    def test_theUpstreamRequestIsCancelledWithIt(self) -> None:
        """Aborting the client connection cancels the forward, so the upstream connection is released too."""
        wire, proto, transport = self._stalled()
        upstream = wire.agent.sent[0].deferred
        wire.clock.advance(60)
        proto.connectionLost(Failure(ConnectionDone()))  # what the reactor reports after the abort
        self.assertTrue(upstream.called)  # cancelled

    def test_resumingBeforeTheDeadlineKeepsTheConnection(self) -> None:
        """A client that reads again (the transport resumes the channel) is not cut."""
        wire, proto, transport = self._stalled()
        wire.clock.advance(59)
        proto.resumeProducing()
        wire.clock.advance(600)
        self.assertFalse(transport.disconnected)
        self.assertEqual(self._timeouts(wire), 0.0)

    def test_theTimeoutIsConfigured(self) -> None:
        """server.timeouts.write sets the deadline."""
        config = BASE_CONFIG.format(extra="").replace("idle: 60s}", "idle: 60s, write: 2s}")
        wire, _, transport = self._stalled(config)
        wire.clock.advance(2)
        self.assertTrue(transport.disconnected)

    def test_connectionLostCancelsTheWriteTimer(self) -> None:
        """A connection that goes away while paused leaves no write timer behind."""
        wire, proto, _ = self._stalled()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([c for c in wire.clock.getDelayedCalls() if c.func.__name__ == "_writeStalled"], [])


class ConnectionCapTests(SynchronousTestCase):
    def test_extraConnectionsFromOneAddressAreRefused(self) -> None:
        """server.max_connections_per_ip (3 here): the 4th socket from one address gets 503 and is closed."""
        wire = Wire()
        held = [wire.connect("198.51.100.1", 1000 + i) for i in range(3)]
        extra, transport = wire.connect("198.51.100.1", 2000)
        self.assertNotIsInstance(extra, GatewayChannel)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(wire.site.perAddress["198.51.100.1"], 3)

        other, otherTransport = wire.connect("198.51.100.2")
        self.assertIsInstance(other, GatewayChannel)

        held[0][0].connectionLost(None)
        again, _ = wire.connect("198.51.100.1", 3000)
        self.assertIsInstance(again, GatewayChannel)

    def test_trustedProxiesAreNotCapped(self) -> None:
        """A trusted proxy carries many clients' connections: it is exempt from the per-address cap."""
        wire = Wire()
        protos = [wire.connect("10.0.0.5", 1000 + i)[0] for i in range(5)]
        self.assertTrue(all(isinstance(p, GatewayChannel) for p in protos))

    def test_zeroMeansUnlimited(self) -> None:
        """max_connections_per_ip: 0 turns the cap off."""
        wire = Wire(config=BASE_CONFIG.format(extra="").replace("max_connections_per_ip: 3",
                                                                "max_connections_per_ip: 0"))
        protos = [wire.connect("198.51.100.1", 1000 + i)[0] for i in range(10)]
        self.assertTrue(all(isinstance(p, GatewayChannel) for p in protos))

    def test_countsFollowOpenAndClose(self) -> None:
        """The per-address counts and the active-connections gauge go back to zero."""
        wire = Wire()
        protos = [wire.connect("198.51.100.1", 1000 + i)[0] for i in range(3)]
        self.assertEqual(wire.metrics.activeConnections._value.get(), 3)
        for p in protos:
            p.connectionLost(None)
        self.assertEqual(wire.site.perAddress, {})
        self.assertEqual(wire.metrics.activeConnections._value.get(), 0)

    def test_nonInetListenersAreNotCapped(self) -> None:
        """A UNIX-socket peer has no address to count by."""
        wire = Wire()
        site: GatewaySite = wire.site
        for _ in range(5):
            self.assertIsInstance(site.buildProtocol(UNIXAddress(None)), GatewayChannel)

    def test_ipv4PeerAddressIsCounted(self) -> None:
        """Counting uses the transport's peer host."""
        wire = Wire()
        proto, _ = wire.connect("203.0.113.9")
        self.assertEqual(proto._peerHost, "203.0.113.9")
        self.assertEqual(wire.site.perAddress, {"203.0.113.9": 1})


class WhenDoneTests(SynchronousTestCase):
    """GatewayRequest.whenDone: the request-done hook the access log and metrics hang on."""

    def request(self) -> tuple[GatewayRequest, list[Any]]:
        from twisted.web.test.requesthelper import DummyChannel

        request = GatewayRequest(DummyChannel())
        calls: list[Any] = []
        request.whenDone(lambda result, tag: calls.append((result, tag)), "t")
        return request, calls

    def test_finishedResponseCallsItOnceWithNone(self) -> None:
        """A finished response reports success once, even if the connection closes later."""
        request, calls = self.request()
        request.finish()
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(calls, [(None, "t")])

    def test_clientGoneCallsItOnceWithTheReason(self) -> None:
        """A client that leaves first is reported with the reason, once."""
        request, calls = self.request()
        reason = Failure(ConnectionDone())
        request.connectionLost(reason)
        self.assertEqual(calls, [(reason, "t")])
        self.assertTrue(request.gone)
