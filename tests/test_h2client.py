"""
The HTTP/2 upstream client against h2's own server-side state machine, in
memory (tests/h2target.py): multiplexing and its caps, flow control both
ways, GOAWAY, PING keep-alive, cancellation, trailers.
"""

from __future__ import annotations

from typing import Any

import h2.errors
import h2.settings
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface.verify import verifyObject

from txgateway.attempts import classify
from txgateway.http.client.h2client import h2Fields
from txgateway.http.client.h2pool import H2Settings
from txgateway.http.client.h2protocol import STREAM_WINDOW, StreamRefused
from txgateway.http.replay import BytesProducer
from txgateway.interfaces import IUpstreamClient

from .h2target import makeClient

URL = b"http://app:8000"


class Body(Protocol):
    """Collects a response body and how it ended."""

    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.reason = reason


def host(name: bytes = b"app:8000") -> Headers:
    return Headers({b"Host": [name], b"X-Request-ID": [b"r1"]})


class RequestTests(SynchronousTestCase):
    def test_providesTheUpstreamClientInterface(self) -> None:
        """The attempt loop can use it as it uses the HTTP/1.1 client."""
        client, _, _ = makeClient()
        self.assertTrue(verifyObject(IUpstreamClient, client))

    def test_requestHeadAndResponse(self) -> None:
        """A GET goes out as HTTP/2 pseudo-fields plus the gateway's fields; status, headers, length and body come back."""
        client, wire, _ = makeClient()
        d = client.request(b"GET", URL + b"/v1/models?x=1", host())
        wire.pump()
        target = wire.targets[0]
        sent = target.requests[1]
        self.assertEqual(sent["headers"][b":method"], b"GET")
        self.assertEqual(sent["headers"][b":path"], b"/v1/models?x=1")
        self.assertEqual(sent["headers"][b":authority"], b"app:8000")
        self.assertEqual(sent["headers"][b":scheme"], b"http")
        self.assertEqual(sent["headers"][b"x-request-id"], b"r1")
        self.assertNotIn(b"host", sent["headers"])
        self.assertTrue(sent["ended"])
        target.respond(1, 200, [(b"content-type", b"text/plain"), (b"content-length", b"5")], b"hello")
        wire.pump()
        response = self.successResultOf(d)
        self.assertTrue(verifyObject(IResponse, response))
        self.assertEqual((response.code, response.length), (200, 5))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        body = Body()
        response.deliverBody(body)
        self.assertEqual(body.data, b"hello")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))

    def test_connectionSpecificFieldsNotSent(self) -> None:
        """Connection-specific fields never reach an HTTP/2 target; te: trailers always does (gRPC needs it)."""
        headers = Headers({b"Host": [b"a"], b"Connection": [b"close"], b"Keep-Alive": [b"1"], b"TE": [b"gzip"],
                           b"X-A": [b"1", b"2"]})
        authority, fields = h2Fields(headers, 3)
        self.assertEqual(authority, b"a")
        self.assertEqual(sorted(fields), sorted([(b"x-a", b"1"), (b"x-a", b"2"), (b"content-length", b"3"),
                                                 (b"te", b"trailers")]))

    def test_trailersAfterBody(self) -> None:
        """The response's trailers (grpc-status) are on it by the time its body ends."""
        client, wire, _ = makeClient()
        d = client.request(b"POST", URL + b"/pkg.Svc/Call", host(), BytesProducer(b"\x00\x00\x00\x00\x00"))
        wire.pump()
        target = wire.targets[0]
        self.assertEqual(target.requests[1]["body"], b"\x00\x00\x00\x00\x00")
        target.respond(1, 200, [(b"content-type", b"application/grpc")], b"\x00\x00\x00\x00\x00",
                       trailers=[(b"grpc-status", b"0"), (b"grpc-message", b"ok")])
        wire.pump()
        response = self.successResultOf(d)
        body = Body()
        response.deliverBody(body)
        self.assertEqual(response.trailers.getRawHeaders(b"grpc-status"), [b"0"])
        self.assertEqual(response.trailers.getRawHeaders(b"grpc-message"), [b"ok"])

    def test_connectFailureIsAConnectError(self) -> None:
        """A target that refuses the connection fails the request as a connect failure (retryable, any method)."""
        from twisted.internet.error import ConnectionRefusedError

        client, wire, _ = makeClient()
        wire.refuse = ConnectionRefusedError("nobody home")
        f = self.failureResultOf(client.request(b"POST", URL + b"/", host(), BytesProducer(b"x")))
        self.assertEqual(classify(f), "connect_failure")


class MultiplexTests(SynchronousTestCase):
    def test_concurrentRequestsShareOneConnection(self) -> None:
        """Requests in flight at once are streams of one connection."""
        client, wire, _ = makeClient()
        ds = [client.request(b"GET", URL + b"/%d" % i, host()) for i in range(5)]
        wire.pump()
        self.assertEqual(len(wire.targets), 1)
        self.assertEqual(sorted(wire.targets[0].requests), [1, 3, 5, 7, 9])
        for sid in (1, 3, 5, 7, 9):
            wire.targets[0].respond(sid, 204)
        wire.pump()
        self.assertEqual([self.successResultOf(d).code for d in ds], [204] * 5)

    def test_fullConnectionOpensAnother(self) -> None:
        """At pool.max_streams a connection takes no more streams: a second connection opens."""
        client, wire, _ = makeClient(H2Settings(maxConnections=2, maxStreams=2))
        for i in range(4):
            client.request(b"GET", URL + b"/%d" % i, host())
        wire.pump()
        self.assertEqual([len(t.requests) for t in wire.targets], [2, 2])

    def test_atTheCapsRequestsWaitForAStream(self) -> None:
        """With every connection full at pool.max_connections, a request waits and goes when a stream ends."""
        client, wire, _ = makeClient(H2Settings(maxConnections=1, maxStreams=2))
        first = client.request(b"GET", URL + b"/1", host())
        client.request(b"GET", URL + b"/2", host())
        third = client.request(b"GET", URL + b"/3", host())
        wire.pump()
        self.assertEqual(len(wire.targets), 1)
        self.assertEqual(len(wire.targets[0].requests), 2)
        self.assertNoResult(third)
        wire.targets[0].respond(1, 200)
        wire.pump()
        self.assertEqual(self.successResultOf(first).code, 200)
        self.assertEqual(len(wire.targets[0].requests), 3)
        self.assertEqual(wire.targets[0].requests[5]["headers"][b":path"], b"/3")

    def test_waitingRequestCancelledLeavesTheQueue(self) -> None:
        """A waiting request whose deadline passes is cancelled and never sent."""
        client, wire, _ = makeClient(H2Settings(maxConnections=1, maxStreams=1))
        client.request(b"GET", URL + b"/1", host())
        waiting = client.request(b"GET", URL + b"/2", host())
        wire.pump()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        wire.targets[0].respond(1, 200)
        wire.pump()
        self.assertEqual(len(wire.targets[0].requests), 1)

    def test_targetsConcurrencyLimitIsHeld(self) -> None:
        """SETTINGS_MAX_CONCURRENT_STREAMS from the target caps the streams below pool.max_streams."""
        client, wire, _ = makeClient(H2Settings(maxConnections=1, maxStreams=100),
                                     targetSettings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        client.request(b"GET", URL + b"/1", host())
        wire.pump()
        second = client.request(b"GET", URL + b"/2", host())
        wire.pump()
        self.assertEqual(len(wire.targets[0].requests), 1)
        wire.targets[0].respond(1, 200)
        wire.pump()
        self.assertNoResult(second)
        self.assertEqual(len(wire.targets[0].requests), 2)

    def test_idleConnectionClosedAfterIdleTimeout(self) -> None:
        """A connection with no stream for pool.idle_timeout is closed; the clock has nothing left to run."""
        client, wire, clock = makeClient(H2Settings(idleTimeout=30.0))
        d = client.request(b"GET", URL + b"/", host())
        wire.pump()
        wire.targets[0].respond(1, 200)
        wire.pump()
        self.successResultOf(d)
        clock.advance(29)
        wire.pump()
        self.assertFalse(wire.targets[0].lost)
        clock.advance(1)
        wire.pump()
        self.assertTrue(wire.targets[0].lost)
        self.assertEqual(clock.getDelayedCalls(), [])


class FlowControlTests(SynchronousTestCase):
    def test_pausedBodyStopsTheTargetOnThatStream(self) -> None:
        """A slow client's stream gets no more window until it resumes; other streams still flow."""
        client, wire, _ = makeClient()
        slow = client.request(b"GET", URL + b"/big", host())
        other = client.request(b"GET", URL + b"/small", host())
        wire.pump()
        target = wire.targets[0]
        target.respond(1, 200, end=False)
        target.respond(3, 200, end=False)
        wire.pump()
        response = self.successResultOf(slow)
        body = Body()
        response.deliverBody(body)
        response.pauseProducing()
        chunk = b"x" * 16384
        for _ in range(STREAM_WINDOW // len(chunk)):
            target.conn.send_data(1, chunk)
        target.flush()
        wire.pump()
        self.assertEqual(target.conn.local_flow_control_window(1), 0)
        self.assertEqual(body.data, b"")
        # The other stream is not held up by the paused one.
        target.conn.send_data(3, b"fine", end_stream=True)
        target.flush()
        wire.pump()
        otherBody = Body()
        self.successResultOf(other).deliverBody(otherBody)
        self.assertEqual(otherBody.data, b"fine")
        response.resumeProducing()
        wire.pump()
        self.assertEqual(len(body.data), STREAM_WINDOW)
        # The window is given back (h2 sends WINDOW_UPDATE once half of it is used).
        self.assertGreaterEqual(target.conn.local_flow_control_window(1), STREAM_WINDOW // 2)

    def test_requestBodyWaitsForTheTargetsWindow(self) -> None:
        """A request body larger than the target's window is paused at its producer and finishes as the window opens."""
        client, wire, _ = makeClient(targetSettings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
        producer = _Producer()
        d = client.request(b"POST", URL + b"/upload", host(), producer)
        wire.pump()
        producer.consumer.write(b"a" * 25)
        wire.pump()
        target = wire.targets[0]
        self.assertEqual(target.requests[1]["body"], b"a" * 10)
        self.assertTrue(producer.paused)
        target.conn.acknowledge_received_data(10, 1)
        target.conn.increment_flow_control_window(100, 1)
        target.flush()
        wire.pump()
        self.assertEqual(target.requests[1]["body"], b"a" * 25)
        self.assertFalse(producer.paused)
        self.assertFalse(target.requests[1]["ended"])
        producer.finished.callback(None)
        wire.pump()
        self.assertTrue(target.requests[1]["ended"])
        self.assertNoResult(d)


class EndingTests(SynchronousTestCase):
    def test_goAwayLetsEarlierStreamsFinishAndRefusesLaterOnes(self) -> None:
        """After GOAWAY, streams up to last_stream_id finish; later ones fail as never sent; new ones use a new connection."""
        client, wire, _ = makeClient()
        first = client.request(b"GET", URL + b"/1", host())
        second = client.request(b"POST", URL + b"/2", host(), BytesProducer(b"x"))
        wire.pump()
        target = wire.targets[0]
        target.conn.close_connection(last_stream_id=1)
        target.flush()
        wire.pump()
        # The refused stream, its body in memory, went again on a new connection, as did a new request.
        third = client.request(b"GET", URL + b"/3", host())
        wire.pump()
        self.assertEqual(len(wire.targets), 2)
        self.assertEqual([r["headers"][b":path"] for r in wire.targets[1].requests.values()], [b"/2", b"/3"])
        self.assertEqual(wire.targets[1].requests[1]["body"], b"x")
        self.assertNoResult(second)
        # The first stream still finishes on the old connection (h2's own
        # state machine would refuse its frames after a GOAWAY).
        target.conn.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
        target.respond(1, 200, body=b"done")
        wire.pump()
        body = Body()
        self.successResultOf(first).deliverBody(body)
        self.assertEqual(body.data, b"done")
        self.assertTrue(target.lost)
        self.assertNoResult(third)

    def test_refusedStreamIsSentOnceMore(self) -> None:
        """RST_STREAM(REFUSED_STREAM): the request is sent once more; refused again, it is a connect failure."""
        client, wire, _ = makeClient()
        d = client.request(b"POST", URL + b"/", host(), BytesProducer(b"x"))
        wire.pump()
        for sid in (1, 3):
            wire.targets[0].conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            wire.targets[0].flush()
            wire.pump()
        self.assertEqual(wire.targets[0].requests[3]["body"], b"x")
        self.assertEqual(classify(self.failureResultOf(d, StreamRefused)), "connect_failure")

    def test_refusedStreamWithAStreamedBodyIsNotResent(self) -> None:
        """A body that cannot be produced again is not resent: the attempt loop decides (a connect failure)."""
        client, wire, _ = makeClient()
        d = client.request(b"POST", URL + b"/", host(), _Producer())
        wire.pump()
        wire.targets[0].conn.reset_stream(1, h2.errors.ErrorCodes.REFUSED_STREAM)
        wire.targets[0].flush()
        wire.pump()
        self.assertEqual(classify(self.failureResultOf(d, StreamRefused)), "connect_failure")
        self.assertEqual(len(wire.targets[0].requests), 1)

    def test_resetAfterRequestIsAReset(self) -> None:
        """A stream reset by the target for another reason is a reset, not retried for POST."""
        client, wire, _ = makeClient()
        d = client.request(b"POST", URL + b"/", host(), BytesProducer(b"x"))
        wire.pump()
        wire.targets[0].conn.reset_stream(1, h2.errors.ErrorCodes.INTERNAL_ERROR)
        wire.targets[0].flush()
        wire.pump()
        self.assertEqual(classify(self.failureResultOf(d)), "reset")

    def test_cancelSendsRstStream(self) -> None:
        """Cancelling the request (the client went away, the deadline passed) resets the stream with CANCEL."""
        client, wire, _ = makeClient()
        d = client.request(b"GET", URL + b"/slow", host())
        wire.pump()
        d.cancel()
        wire.pump()
        self.assertEqual(classify(self.failureResultOf(d)), "cancelled")
        self.assertEqual(wire.targets[0].resets, {1: h2.errors.ErrorCodes.CANCEL})

    def test_stoppingTheBodyResetsTheStream(self) -> None:
        """The relay stopping the body (its client left mid-response) resets the stream; the body fails."""
        client, wire, _ = makeClient()
        d = client.request(b"GET", URL + b"/stream", host())
        wire.pump()
        wire.targets[0].respond(1, 200, body=b"part", end=False)
        wire.pump()
        response = self.successResultOf(d)
        body = Body()
        response.deliverBody(body)
        response.stopProducing()
        wire.pump()
        self.assertEqual(wire.targets[0].resets, {1: h2.errors.ErrorCodes.CANCEL})
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))

    def test_streamIdsUsedUpMovesToANewConnection(self) -> None:
        """A connection out of stream ids takes no more: the request goes on a new connection, the old one closes."""
        client, wire, _ = makeClient()
        first = client.request(b"GET", URL + b"/1", host())
        wire.pump()
        wire.targets[0].respond(1, 200)
        wire.pump()
        self.successResultOf(first)
        wire.clients[0].conn.highest_outbound_stream_id = 2**31 - 1
        client.request(b"GET", URL + b"/2", host())
        wire.pump()
        self.assertEqual(len(wire.targets), 2)
        self.assertEqual(wire.targets[1].requests[1]["headers"][b":path"], b"/2")
        self.assertTrue(wire.targets[0].lost)

    def test_connectionLostFailsStreamsInFlight(self) -> None:
        """A dropped connection fails a waiting request as a reset and breaks a body mid-way."""
        client, wire, _ = makeClient()
        waiting = client.request(b"GET", URL + b"/a", host())
        streaming = client.request(b"GET", URL + b"/b", host())
        wire.pump()
        wire.targets[0].respond(3, 200, body=b"half", end=False)
        wire.pump()
        body = Body()
        self.successResultOf(streaming).deliverBody(body)
        wire.clients[0].transport.abortConnection()
        wire.pump()
        self.assertEqual(classify(self.failureResultOf(waiting)), "reset")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))


class CloseTests(SynchronousTestCase):
    def test_closeWaitsForStreamsInFlight(self) -> None:
        """Closing the client (drain, reload) lets a stream in flight finish, then closes; nothing left on the clock."""
        client, wire, clock = makeClient(H2Settings(pingInterval=30.0))
        d = client.request(b"GET", URL + b"/", host())
        wire.pump()
        closed = client.closeCachedConnections()
        wire.pump()
        self.assertNoResult(closed)
        self.assertFalse(wire.targets[0].lost)
        wire.targets[0].respond(1, 200, body=b"last")
        wire.pump()
        body = Body()
        self.successResultOf(d).deliverBody(body)
        self.assertEqual(body.data, b"last")
        self.successResultOf(closed)
        self.assertTrue(wire.targets[0].lost)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lostConnectionStopsARequestBody(self) -> None:
        """A connection lost while a request body is still being produced stops the producer."""
        client, wire, _ = makeClient()
        producer = _Producer()
        d = client.request(b"POST", URL + b"/upload", host(), producer)
        wire.pump()
        stopped: list[bool] = []
        producer.stopProducing = lambda: stopped.append(True)  # type: ignore[method-assign]
        wire.clients[0].transport.abortConnection()
        wire.pump()
        self.assertEqual(stopped, [True])
        self.assertEqual(classify(self.failureResultOf(d)), "reset")


class PingTests(SynchronousTestCase):
    def test_answeredPingKeepsTheConnection(self) -> None:
        """Every ping_interval a PING goes out; an answer keeps the connection and schedules the next."""
        client, wire, clock = makeClient(H2Settings(pingInterval=10.0, pingTimeout=2.0))
        client.request(b"GET", URL + b"/", host())
        wire.pump()
        clock.advance(10)
        wire.pump()
        self.assertEqual(wire.targets[0].pings, 1)
        clock.advance(2)
        clock.advance(8)
        wire.pump()
        self.assertEqual(wire.targets[0].pings, 2)
        self.assertFalse(wire.targets[0].lost)

    def test_unansweredPingDropsTheConnection(self) -> None:
        """No PING answer within ping_timeout: the connection is dropped and its streams fail."""
        client, wire, clock = makeClient(H2Settings(pingInterval=10.0, pingTimeout=2.0))
        d = client.request(b"GET", URL + b"/", host())
        wire.pump()
        clock.advance(10)  # the PING is written, but the target never reads it
        clock.advance(2)
        self.assertEqual(classify(self.failureResultOf(d)), "reset")
        wire.pump()
        self.assertTrue(wire.targets[0].lost)
        self.assertEqual(clock.getDelayedCalls(), [])


class _Producer:
    """An IBodyProducer the test writes through, recording pauses."""

    length = 25

    def __init__(self) -> None:
        self.consumer: Any = None
        self.paused = False
        self.finished: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self.consumer = consumer
        return self.finished

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class TlsTests(SynchronousTestCase):
    def test_targetThatDidNotChooseH2IsAConnectFailure(self) -> None:
        """Over TLS the target must choose h2 by ALPN; one that does not fails the request clearly."""
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from txgateway.http.client.h2protocol import H2ClientProtocol

        changes: list[Any] = []
        protocol = H2ClientProtocol(MemoryReactorClock(), 10, changes.append, alpn=True)
        transport = StringTransport()
        transport.negotiatedProtocol = b"http/1.1"  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        d = protocol.request(b"GET", b"https", b"app", b"/", [], None)
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        f = self.failureResultOf(d, ConnectError)
        self.assertIn("did not choose h2", str(f.value))
