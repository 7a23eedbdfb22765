"""
HTTP/2 responses to a slow reader: the upstream is paused, not buffered
without bound, whether the client holds back its flow-control window (it
sends no WINDOW_UPDATE) or stops reading its socket.
"""

from __future__ import annotations

from typing import Any

import h2.errors
import h2.settings
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.h2support import H2Client, h2Wire
from tests.support import Wire

CHUNK = 16384
WINDOW = 65535


class StreamingUpstream:
    """An upstream response whose body the test feeds, honouring pause and resume as a socket would."""

    code = 200
    phrase = b"OK"
    version = (b"HTTP", 1, 1)
    length: Any = None
    request = None
    previousResponse = None

    def __init__(self) -> None:
        self.length = UNKNOWN_LENGTH
        self.headers = Headers({b"content-type": [b"application/octet-stream"]})
        self.paused = False
        self.stopped = False
        self.pauses = 0
        self.sent = 0
        self.protocol: Any = None

    def setPreviousResponse(self, response: Any) -> None:
        pass

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    # the transport the relay pauses
    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True

    def pump(self, limit: int) -> None:
        """Send chunks while not paused, up to C{limit} bytes in all (a busy upstream)."""
        while not self.paused and not self.stopped and self.sent < limit:
            self.protocol.dataReceived(b"z" * CHUNK)
            self.sent += CHUNK

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))


def started(wire: Wire, client: H2Client) -> tuple[int, StreamingUpstream]:
    upstream = StreamingUpstream()
    sid = client.request(b"/big")
    wire.agent.sent[-1].deferred.callback(upstream)
    client.pump()
    return sid, upstream


def received(client: H2Client, sid: int) -> int:
    return len(client.response(sid)[1])


class FlowControlTests(SynchronousTestCase):
    def test_noWindowUpdatePausesTheUpstream(self) -> None:
        """
        A client that never sends WINDOW_UPDATE gets one window of the body;
        the upstream is paused about there (not read to its end into memory),
        and resumed when the client opens its window.
        """
        wire = h2Wire()
        client = H2Client(wire)
        sid, upstream = started(wire, client)
        upstream.pump(10 * 1024 * 1024)
        client.pump()
        self.assertTrue(upstream.paused)
        self.assertLessEqual(upstream.sent, WINDOW + 2 * CHUNK)
        self.assertEqual(received(client, sid), WINDOW)
        client.conn.acknowledge_received_data(WINDOW, sid)
        client.flush()
        self.assertFalse(upstream.paused)
        upstream.pump(upstream.sent + 4 * CHUNK)
        client.pump()
        self.assertGreater(received(client, sid), WINDOW)

    def test_unreadSocketPausesTheUpstream(self) -> None:
        """
        A client with huge windows that stops reading its socket: once the
        socket's buffer is full the upstream is paused too, whatever the
        windows allow; reading again resumes it.
        """
        wire = h2Wire()
        client = H2Client(wire)
        big = 2**31 - 1
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: big})
        client.conn.increment_flow_control_window(big - WINDOW)
        client.flush()
        sid, upstream = started(wire, client)
        socket = client.transport
        socket.producer.pauseProducing()  # what the transport does when its buffer is full
        upstream.pump(10 * 1024 * 1024)
        self.assertTrue(upstream.paused)
        self.assertLessEqual(upstream.sent, 2 * CHUNK)
        socket.producer.resumeProducing()
        client.pump()
        self.assertFalse(upstream.paused)
        upstream.pump(upstream.sent + 4 * CHUNK)
        upstream.end()
        client.pump()
        self.assertEqual(received(client, sid), upstream.sent)
        self.assertTrue(client.ended(sid))

    def test_windowHeldShutPastWriteTimeoutResetsTheStream(self) -> None:
        """
        A stream whose window stays shut for server.timeouts.write (60 s by
        default) is reset (CANCEL) and its upstream stopped: a client cannot
        hold a target's connection for ever by never reading; its other
        streams carry on.
        """
        wire = h2Wire()
        client = H2Client(wire)
        sid, upstream = started(wire, client)
        upstream.pump(10 * 1024 * 1024)
        client.pump()
        wire.clock.advance(59)
        client.pump()
        self.assertIsNone(client.reset(sid))
        wire.clock.advance(2)
        client.pump()
        self.assertTrue(upstream.stopped)
        self.assertEqual(client.reset(sid), h2.errors.ErrorCodes.CANCEL)
        self.assertIsNone(client.goaway())
        self.assertEqual(wire.metrics.registry.get_sample_value("txgateway_write_timeouts_total"), 1.0)

    def test_aWindowOpenedInTimeKeepsTheStream(self) -> None:
        """A client that opens its window before timeouts.write gets the rest of the response."""
        wire = h2Wire()
        client = H2Client(wire)
        sid, upstream = started(wire, client)
        upstream.pump(10 * 1024 * 1024)
        client.pump()
        wire.clock.advance(50)
        client.conn.acknowledge_received_data(WINDOW, sid)
        client.flush()
        wire.clock.advance(50)
        client.pump()
        self.assertIsNone(client.reset(sid))
        upstream.pump(upstream.sent + CHUNK)
        upstream.end()
        client.conn.acknowledge_received_data(WINDOW, sid)
        client.flush()
        self.assertTrue(client.ended(sid))

    def test_unreadSocketPastWriteTimeoutClosesTheConnection(self) -> None:
        """
        A client that reads nothing of its socket for server.timeouts.write
        loses the connection, and its streams' upstreams are stopped.
        """
        wire = h2Wire()
        client = H2Client(wire)
        sid, upstream = started(wire, client)
        client.transport.producer.pauseProducing()
        upstream.pump(10 * 1024 * 1024)
        wire.clock.advance(61)
        self.assertTrue(client.transport.disconnected or client.transport.disconnecting)
        client.proto.connectionLost(Failure(ConnectionLost("aborted")))  # what the aborted transport reports
        self.assertTrue(upstream.stopped)
        self.assertEqual(wire.metrics.registry.get_sample_value("txgateway_write_timeouts_total"), 1.0)
