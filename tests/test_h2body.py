"""
HTTP/2 request bodies that stream: the request goes upstream at the end of
its HEADERS' read, its body after it, with flow control held to what the
upstream takes (txgateway.http.h2body).
"""

from __future__ import annotations

from typing import Any

import h2.errors
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.h2support import H2C, H2Client, h2Wire, ok
from tests.support import FakeResponse, NullProducer, Sent, Wire

POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"), (b":authority", b"example.com")]
WINDOW = 65535  # the HTTP/2 initial window the gateway leaves in place
BIG = H2C.format(budget=0).replace("max_request_body: 1KiB", "max_request_body: 1MiB")


def bigWire() -> Wire:
    return Wire(config=BIG)


def opened(client: H2Client, fields: list[tuple[bytes, bytes]] | None = None, first: bytes = b"") -> int:
    """A POST whose HEADERS (and C{first} DATA) went out without END_STREAM."""
    sid = client.conn.get_next_available_stream_id()
    client.conn.send_headers(sid, POST + (fields or []))
    if first:
        client.conn.send_data(sid, first)
    client.flush()
    return sid


def send(client: H2Client, sid: int, data: bytes, end: bool = False) -> None:
    client.conn.send_data(sid, data, end_stream=end)
    client.flush()


def answer(client: H2Client, sent: Sent, sid: int) -> None:
    """The upstream answers 200: the client gets it on its stream."""
    sent.deferred.callback(ok())
    client.pump()
    assert client.response(sid)[0][b":status"] == b"200"


def upstream(wire: Wire) -> Sent:
    assert wire.agent.sent, "nothing reached the upstream"
    return wire.agent.sent[-1]


class StreamingTests(SynchronousTestCase):
    def test_forwardedBeforeTheBodyEnds(self) -> None:
        """The request reaches the upstream with its first chunk; later chunks follow as they come."""
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, first=b"one,")
        sent = upstream(wire)
        assert sent.sink is not None
        self.assertEqual(sent.method, b"POST")
        self.assertEqual(sent.length, UNKNOWN_LENGTH)  # no Content-Length: sent chunked upstream
        self.assertEqual(sent.sink.data, b"one,")
        send(client, sid, b"two,")
        self.assertEqual(sent.sink.data, b"one,two,")
        self.assertFalse(sent.sink.done)
        send(client, sid, b"three", end=True)
        self.assertEqual(sent.sink.data, b"one,two,three")
        self.assertTrue(sent.sink.done)
        sent.deferred.callback(ok(b"got it"))
        client.pump()
        head, body, _ = client.response(sid)
        self.assertEqual((head[b":status"], body), (b"200", b"got it"))

    def test_declaredLengthIsKept(self) -> None:
        """A streamed body with a Content-Length goes upstream with that length, not chunked."""
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, [(b"content-length", b"10")], b"01234")
        self.assertEqual(upstream(wire).length, 10)
        send(client, sid, b"56789", end=True)
        sink = upstream(wire).sink
        assert sink is not None
        self.assertEqual((sink.data, sink.done), (b"0123456789", True))
        answer(client, upstream(wire), sid)

    def test_bodyWithItsHeadIsBuffered(self) -> None:
        """A body that came whole in the read of its HEADERS goes upstream with its length, as before."""
        wire = h2Wire()
        wire.agent.autoRespond = ok()
        client = H2Client(wire)
        sid = client.request(b"/up", b"POST", body=b"payload")
        self.assertEqual(client.response(sid)[0][b":status"], b"200")
        self.assertEqual((upstream(wire).body, upstream(wire).length), (b"payload", 7))

    def test_creditOnlyAsTheUpstreamTakes(self) -> None:
        """
        While the upstream takes nothing, the client gets no WINDOW_UPDATE:
        it can send one window and must stop; once the upstream reads, the
        window opens again.
        """
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, first=b"x")
        sent = upstream(wire)
        assert sent.sink is not None
        sent.producer.pauseProducing()  # the upstream connection's buffer is full
        chunk = b"y" * 16384
        while client.conn.local_flow_control_window(sid) >= len(chunk):
            send(client, sid, chunk)
        self.assertLess(client.conn.local_flow_control_window(sid), len(chunk))
        self.assertEqual(sent.sink.data, b"x")
        stored = wire.site.channels  # nothing else grows while paused: the client cannot send
        self.assertEqual(len(stored), 1)
        sent.producer.resumeProducing()
        client.pump()
        self.assertGreaterEqual(len(sent.sink.data), WINDOW - len(chunk))
        self.assertGreater(client.conn.local_flow_control_window(sid), WINDOW // 2)
        send(client, sid, chunk, end=True)
        self.assertTrue(sent.sink.done)
        answer(client, sent, sid)

    def test_aPauseOverRequestBodyIs408(self) -> None:
        """A streamed body that stops for longer than timeouts.request_body: 408 and the forward is cancelled."""
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, first=b"x")
        sent = upstream(wire)
        wire.clock.advance(21)
        client.pump()
        self.assertEqual(client.response(sid)[0][b":status"], b"408")
        self.assertTrue(sent.deferred.called)  # cancelled
        assert sent.sink is not None
        self.assertIsNotNone(sent.sink.failure)

    def test_aSteadyStreamOutlivesRequestBody(self) -> None:
        """request_body bounds each pause of a streamed body, not its whole length: a gRPC stream may last."""
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, first=b"x")
        for _ in range(6):  # 24 s in all, with a request_body of 20 s
            wire.clock.advance(4)
            send(client, sid, b"x")
        send(client, sid, b"", end=True)
        sink = upstream(wire).sink
        assert sink is not None
        self.assertEqual((sink.data, sink.done), (b"x" * 7, True))
        self.assertEqual(client.response(sid)[0], {})
        answer(client, upstream(wire), sid)

    def test_overMaxRequestBodyIs413(self) -> None:
        """A streamed body passing server.max_request_body (1 KiB here) is cut off with 413."""
        wire = h2Wire()
        client = H2Client(wire)
        sid = opened(client, first=b"x" * 1000)
        sent = upstream(wire)
        send(client, sid, b"x" * 100)
        self.assertEqual(client.response(sid)[0][b":status"], b"413")
        self.assertTrue(sent.deferred.called)

    def test_clientResetFailsTheUpstreamBody(self) -> None:
        """A client that resets its stream mid-body: the upstream request is cancelled, its body failed."""
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, first=b"x")
        sent = upstream(wire)
        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        assert sent.sink is not None
        self.assertIsNotNone(sent.sink.failure)
        self.assertTrue(sent.deferred.called)

    def test_answerBeforeTheBodyEndsResetsNoError(self) -> None:
        """
        An upstream that answers before the body ended: the client gets the
        whole answer, then RST_STREAM(NO_ERROR) to stop sending (RFC 9113 §8.1),
        and the connection's window is whole again.
        """
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, first=b"x" * 1000)
        sent = upstream(wire)
        sent.producer.pauseProducing()
        send(client, sid, b"y" * 16000)
        send(client, sid, b"y" * 16000)  # past half the connection's window: h2 then sends its WINDOW_UPDATE
        sent.deferred.callback(FakeResponse(200, [(b"content-length", b"4")], b"done"))
        client.pump()
        head, body, _ = client.response(sid)
        self.assertEqual((head[b":status"], body), (b"200", b"done"))
        self.assertTrue(client.ended(sid))
        self.assertEqual(client.reset(sid), h2.errors.ErrorCodes.NO_ERROR)
        self.assertEqual(client.conn.outbound_flow_control_window, WINDOW)
        # The connection carries on.
        wire.agent.autoRespond = ok(b"next")
        self.assertEqual(client.response(client.request(b"/n"))[1], b"next")


RETRY = BIG.replace("    retries: false", "    retries: {attempts: 2, on: [connect_failure]}")


class ReplayTests(SynchronousTestCase):
    def test_aRetrySendsTheBodyFromItsStart(self) -> None:
        """A retry of a streamed request sends what was already sent again, then what still comes."""
        wire = Wire(config=RETRY)
        client = H2Client(wire)
        sid = opened(client, [(b"content-type", b"text/plain")], b"first,")
        first = upstream(wire)
        first.deferred.errback(ConnectionRefusedError())
        wire.clock.advance(1)
        second = upstream(wire)
        self.assertIsNot(first, second)
        assert second.sink is not None
        self.assertEqual(second.sink.data, b"first,")
        send(client, sid, b"second", end=True)
        self.assertEqual((second.sink.data, second.sink.done), (b"first,second", True))
        second.deferred.callback(ok(b"ok"))
        client.pump()
        self.assertEqual(client.response(sid)[0][b":status"], b"200")


    def test_aRetryOfAWholeBodyEndsItsUpload(self) -> None:
        """
        A retry that starts after the whole streamed body arrived sends all of
        it and ends at once: the upstream client gets a fired Deferred from
        startProducing, not None (an HTTP/2 target's client chains on it).
        """
        wire = Wire(config=RETRY)
        client = H2Client(wire)
        sid = opened(client, [(b"content-type", b"text/plain")], b"first,")
        first = upstream(wire)
        send(client, sid, b"last", end=True)
        first.deferred.errback(ConnectionRefusedError())
        wire.clock.advance(1)
        second = upstream(wire)
        assert second.sink is not None
        self.assertEqual((second.sink.data, second.sink.done), (b"first,last", True))


WHOLE = BIG.replace("    upstream: app\n", "    upstream: app\n    coalesce: {headers: []}\n    idempotent_post: true\n")


class WholeBodyTests(SynchronousTestCase):
    def test_aRouteThatHashesTheBodyWaitsForAllOfIt(self) -> None:
        """
        POST coalescing keys on the whole body: a streamed body is taken in
        at the client's pace (credit on arrival, past one window) and the
        request goes upstream once, whole, with its length.
        """
        wire = Wire(config=WHOLE)
        client = H2Client(wire)
        sid = opened(client, first=b"a" * 16000)
        self.assertEqual(wire.agent.sent, [])
        for _ in range(5):  # 96 KB in all: more than the 64 KiB window without the upstream reading
            send(client, sid, b"b" * 16000)
        self.assertEqual(wire.agent.sent, [])
        send(client, sid, b"c", end=True)
        sent = upstream(wire)
        self.assertEqual((sent.length, sent.body), (96001, b"a" * 16000 + b"b" * 80000 + b"c"))
        answer(client, sent, sid)


class HeldResponse(FakeResponse):
    """An upstream response whose body the test sends piece by piece (a gRPC server stream)."""

    protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(NullProducer())


class BidiTests(SynchronousTestCase):
    def test_answerFlowsWhileTheBodyStillStreams(self) -> None:
        """
        A bidirectional call: the target's answer starts and flows to the
        client while the client's body is still streaming to the target.
        """
        wire = bigWire()
        client = H2Client(wire)
        sid = opened(client, [(b"content-type", b"application/grpc")], b"ping1")
        sent = upstream(wire)
        assert sent.sink is not None
        response = HeldResponse(200, [(b"content-type", b"application/grpc")], length=UNKNOWN_LENGTH)
        sent.deferred.callback(response)
        response.protocol.dataReceived(b"pong1")
        client.pump()
        head, body, _ = client.response(sid)
        self.assertEqual((head[b":status"], body), (b"200", b"pong1"))
        send(client, sid, b"ping2")
        self.assertEqual(sent.sink.data, b"ping1ping2")
        response.protocol.dataReceived(b"pong2")
        client.pump()
        self.assertEqual(client.response(sid)[1], b"pong1pong2")
        wire.clock.advance(25)  # past request_body: the answer has started, the call is alive
        send(client, sid, b"", end=True)
        self.assertTrue(sent.sink.done)
        response.protocol.connectionLost(Failure(ResponseDone()))
        client.pump()
        self.assertTrue(client.ended(sid))
        self.assertIsNone(client.reset(sid))
