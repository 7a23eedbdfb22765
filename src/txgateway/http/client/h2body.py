# -*- test-case-name: tests.test_h2client -*-
"""
A request body sent on an HTTP/2 stream no faster than the target lets it.

An C{IBodyProducer} writes into L{RequestBody} (its C{IConsumer}); bytes go
out as DATA frames while the stream's and the connection's send windows
have room, and the rest waits here with the producer paused, until the
target's WINDOW_UPDATE (L{RequestBody.send}) opens the window again.  The
stream ends (END_STREAM) once the producer is done and every byte is out.

No private name of any library is used here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h2.exceptions
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from txgateway.http.client.h2protocol import H2ClientProtocol

__all__ = ["RequestBody"]


@implementer(IConsumer)
class RequestBody:
    """The body of one stream, between its producer and the connection."""

    def __init__(self, connection: H2ClientProtocol, streamID: int, producer: IBodyProducer) -> None:
        self.connection = connection
        self.streamID = streamID
        self.producer = producer
        self.pending: list[bytes] = []
        self.paused = False  # we paused the producer: the window is full
        self.produced = False  # the producer is done
        self.stopped = False  # the stream is over: nothing more is sent

    def start(self) -> None:
        """Ask the producer for the body."""
        d = self.producer.startProducing(self)
        d.addCallbacks(self._produced, self._failed)

    def _produced(self, _: Any) -> None:
        self.produced = True
        self.send()

    def _failed(self, reason: Failure) -> None:
        if not self.stopped:
            self.connection.bodyFailed(self.streamID, reason)

    def stop(self) -> None:
        """The stream ended or was reset: stop the producer if it is still at it."""
        if self.stopped:
            return
        self.stopped = True
        self.pending = []
        if not self.produced:
            self.produced = True
            try:
                self.producer.stopProducing()
            except Exception:
                pass  # a producer that has finished may complain; nothing is owed to it

    # -- IConsumer

    def write(self, data: bytes) -> None:
        if self.stopped or not data:
            return
        self.pending.append(data)
        self.send()
        if self.pending and not self.paused and not self.produced:
            self.paused = True
            self.producer.pauseProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # the IBodyProducer given to start() is the only producer

    def unregisterProducer(self) -> None:
        pass

    # -- sending

    def send(self) -> None:
        """Send what the windows allow; end the stream when all of it is out."""
        if self.stopped:
            return
        connection = self.connection
        conn = connection.conn
        sid = self.streamID
        try:
            while self.pending:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                chunk = self.pending[0]
                if len(chunk) > room:
                    self.pending[0] = chunk[room:]
                    chunk = chunk[:room]
                else:
                    self.pending.pop(0)
                conn.send_data(sid, chunk)
            if not self.pending and self.produced:
                self.stopped = True
                conn.end_stream(sid)
        except (h2.exceptions.ProtocolError, KeyError):
            self.stopped = True  # the stream closed under us (reset by the target)
            self.pending = []
        connection.flush()
        if not self.pending and self.paused and not self.stopped:
            self.paused = False
            self.producer.resumeProducing()
