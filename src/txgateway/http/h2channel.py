# -*- test-case-name: tests.test_h2server -*-
"""
An HTTP/2 client connection, with the gateway's limits.

twisted.web's L{H2Connection} speaks HTTP/2 over the h2 package; this
subclass builds L{GatewayH2Stream <txgateway.http.h2stream.GatewayH2Stream>}s
instead of plain streams, is counted by the Site like an HTTP/1.1 channel
(C{server.max_connections_per_ip}, the drain), and adds what a server facing
the internet needs (RFC 9113 §10.5, CVE-2023-44487):

  - C{SETTINGS_MAX_CONCURRENT_STREAMS} = C{server.http2_max_concurrent_streams};
    h2 treats a client that opens more as a protocol error (GOAWAY);
  - C{SETTINGS_MAX_HEADER_LIST_SIZE} = C{server.max_header_bytes}, and the
    HPACK decoder held to it (an HPACK bomb ends in GOAWAY
    ENHANCE_YOUR_CALM), and a header block split over CONTINUATION frames
    may not buffer more than that either;
  - rapid reset: each stream the client resets spends one token of a bucket
    of C{server.http2_max_resets}, refilled at a tenth of that per second;
    an empty bucket ends the connection with GOAWAY ENHANCE_YOUR_CALM;
  - a request budget: after C{server.http2_max_requests_per_connection}
    streams, a graceful GOAWAY (the client opens a new connection; streams
    in flight finish);
  - C{server.timeouts}: the first request's HEADERS (and any header block
    in progress) within C{request_header}, a request body within
    C{request_body} (408 on that stream), C{idle} only while no stream is
    open.

The drain sets C{persistent = False} on every channel: here that sends a
graceful GOAWAY and closes once the streams in flight are done.

Private Twisted names used here (held to stock Twisted by
tests/test_h2server.py): C{H2Connection._requestReceived},
C{_requestDataReceived}, C{_requestEnded}, C{_requestAborted} (replaced),
C{streams}, C{_streamCleanupCallbacks}, C{_outboundStreamQueues},
C{priority}, C{_terminate}, C{_tryToWriteControlData}, C{_requestDone},
C{_stillProducing}, C{_reactor}, C{H2Stream._producerProducing}.  Private h2 names: C{H2Connection._data_to_send},
C{incoming_buffer._headers_buffer} (the CONTINUATION frames buffered).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.settings
import priority
from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection

from txgateway.http.h2stream import GatewayH2Stream

__all__ = ["GatewayH2Connection", "H2_PREFACE"]

log = Logger(namespace="txgateway")

# RFC 9113 §3.4: what a client speaking HTTP/2 with prior knowledge sends first.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Methods whose request has no body unless it declares one: never streamed.
_BODILESS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"))


class _H2State(h2.connection.H2Connection):
    """h2's connection state machine, ending a stream with its trailers when it has some."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        self.pendingTrailers: dict[int, list[tuple[bytes, bytes]]] = {}

    def end_stream(self, stream_id: int) -> None:
        trailers = self.pendingTrailers.pop(stream_id, None)
        if trailers is None:
            super().end_stream(stream_id)
        else:
            self.send_headers(stream_id, trailers, end_stream=True)

    def queueGoAway(self, lastStreamId: int, errorCode: int) -> None:
        """
        A GOAWAY that leaves the connection usable for the streams up to
        C{lastStreamId} (h2's C{close_connection} closes its state machine:
        no frame could be sent or received after it).
        """
        frame = GoAwayFrame(0, last_stream_id=lastStreamId, error_code=errorCode)
        self._data_to_send += frame.serialize()


class GatewayH2Connection(H2Connection):
    """One HTTP/2 client connection, counted by the Site and held to C{server.*} limits."""

    site: Any
    conn: Any  # an _H2State
    requestFactory: Any
    callLater: Any
    _peerHost: str | None = None
    _goingAway: int | None = None  # the last stream id served, once a graceful GOAWAY is out
    _headDeadline: Any = None
    _closed = False
    _requestCount = 0
    _undecided: list[GatewayH2Stream]
    _writeStall: Any = None  # the client's socket full since: server.timeouts.write

    def __init__(self, site: Any) -> None:
        super().__init__(site.reactor)
        self.site = site
        limits = site.limits
        state = _H2State(h2.config.H2Configuration(client_side=False, header_encoding=None))
        state.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.http2_max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
        })
        state.decoder.max_header_list_size = limits.max_header_bytes
        self.conn = state
        self.timeOut = limits.timeouts.idle or None
        self.callLater = site.reactor.callLater
        self._resets = float(limits.http2_max_resets)
        self._resetsAt = site.reactor.seconds()
        self._undecided = []  # streams whose HEADERS came in this read, their body still open

    # -- the connection's life

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connectionOpened(self)
        self._armHead()

    def connectionLost(self, reason: Any = None, _cancelTimeouts: bool = True) -> None:
        self._disarmHead()
        call, self._writeStall = self._writeStall, None
        if call is not None and call.active():
            call.cancel()
        for stream in list(self.streams.values()):
            stream.disarm()
        super().connectionLost(reason, _cancelTimeouts)
        if not self._closed:
            self._closed = True
            self.site.connectionClosed(self)

    def dataReceived(self, data: bytes) -> None:
        writes = self.site.writes
        if writes is None or self.site.isTLS:
            self._receive(data)
        else:
            writes.run(self._receive, data)

    def _receive(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._undecided:
            self._dispatchStreaming()
        if not self._stillProducing:
            return
        pending = self.conn.incoming_buffer._headers_buffer
        if pending:
            if sum(len(f.data) for f in pending) > self.site.limits.max_header_bytes:
                log.warn("HTTP/2 client {peer} sent a header block over {n} bytes in CONTINUATION frames; "
                         "closing", peer=self._peerHost or "?", n=self.site.limits.max_header_bytes)
                self._calm("header block too large")
                return
            if self._headDeadline is None:
                self._armHead()
        elif self._requestCount:
            self._disarmHead()

    # -- the client's socket full: every stream's upstream paused

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full.  Twisted only stops its send loop;
        the streams' upstreams would go on filling their queues up to the
        client's windows (up to 2 GiB each).  They are paused too.
        """
        super().pauseProducing()
        for stream in self.streams.values():
            producer = stream.producer
            if producer is not None and stream._producerProducing:
                stream._producerProducing = False
                producer.pauseProducing()
        seconds = self.site.limits.timeouts.write
        if self._writeStall is None and seconds and seconds > 0:
            self._writeStall = self.site.reactor.callLater(seconds, self._socketStalled, seconds)

    def resumeProducing(self) -> None:
        call, self._writeStall = self._writeStall, None
        if call is not None and call.active():
            call.cancel()
        super().resumeProducing()
        for stream in list(self.streams.values()):
            stream.windowUpdated()  # resumes its upstream if its window has room

    def _socketStalled(self, seconds: float) -> None:
        """server.timeouts.write: the client read nothing of what was sent for this long."""
        self._writeStall = None
        if self.transport is None or not self._stillProducing:
            return
        log.warn("HTTP/2 client {peer} read nothing for {seconds:g}s (server.timeouts.write); closing its "
                 "connection and its streams' upstreams", peer=self._peerHost or "?", seconds=seconds)
        self.site.metrics.writeTimeouts.inc()
        self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- the persistent / requests view the drain uses (as on an HTTP/1.1 channel)

    @property
    def persistent(self) -> bool:
        return self._goingAway is None

    @persistent.setter
    def persistent(self, value: bool) -> None:
        if not value:
            self.goAway()

    @property
    def requests(self) -> list[Any]:
        return list(self.streams.values())

    def goAway(self) -> None:
        """
        A graceful GOAWAY (NO_ERROR): the streams opened so far finish, no
        new one is taken, and the connection closes once they are done.
        """
        if self._goingAway is not None or not self._stillProducing or self.transport is None:
            return
        self._goingAway = self.conn.highest_inbound_stream_id
        self.conn.queueGoAway(self._goingAway, h2.errors.ErrorCodes.NO_ERROR)
        self._tryToWriteControlData()
        if not self.streams:
            self.transport.loseConnection()

    def _calm(self, why: str) -> None:
        """End the connection: GOAWAY ENHANCE_YOUR_CALM, then close."""
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self._terminate(Failure(ConnectionLost(why)))

    # -- streams

    def _requestReceived(self, event: Any) -> None:
        sid = event.stream_id
        if self._goingAway is not None and sid > self._goingAway:
            # After a GOAWAY: refused, so the client retries it elsewhere.
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self._requestCount += 1
        self._disarmHead()
        stream = GatewayH2Stream(sid, self, event.headers, self.requestFactory, self.site, self.factory)
        self.streams[sid] = stream
        self._streamCleanupCallbacks[sid] = Deferred()
        self._outboundStreamQueues[sid] = deque()
        try:
            self.priority.insert_stream(sid)
        except priority.DuplicateStreamError:
            pass  # a PRIORITY frame came first and put it there
        else:
            self.priority.block(sid)
        if event.stream_ended is None:
            stream.arm(self.site.limits.timeouts.request_body)
            if stream.problem is None and (stream.declaredLength or stream.command not in _BODILESS):
                self._undecided.append(stream)
        else:
            stream.ended = True
        if stream.problem is not None:
            stream.refuseProblem()
        budget = self.site.limits.http2_max_requests_per_connection
        if budget and self._requestCount >= budget:
            self.goAway()

    def _dispatchStreaming(self) -> None:
        """
        The requests whose HEADERS came in this read and whose body did not
        end in it are forwarded now, their body streaming after them (see
        L{txgateway.http.h2body}).  A body that came whole with its head
        (nearly every small POST) is forwarded buffered, as over HTTP/1.1.
        """
        undecided, self._undecided = self._undecided, []
        for stream in undecided:
            if stream.ended or stream.refused or self.streams.get(stream.streamID) is not stream:
                continue
            stream.startStreaming()

    def _requestDataReceived(self, event: Any) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.refused:
            # A stream already answered: its flow-control credit is given
            # back, or the connection window would shrink for good.
            if event.flow_controlled_length:
                self.openStreamWindow(event.stream_id, event.flow_controlled_length)
            return
        stream.receiveDataChunk(event.data, event.flow_controlled_length)

    def _requestEnded(self, event: Any) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.ended = True
        stream.disarm()
        if not stream.refused:
            stream.requestComplete()

    def _requestAborted(self, event: Any) -> None:
        sid = event.stream_id
        stream = self.streams.get(sid)
        if stream is not None:
            stream.disarm()
            stream.connectionLost(Failure(ConnectionLost(f"Stream reset with code {event.error_code}")))
            if sid in self.streams:
                self._requestDone(sid)
        if not self._spendReset():
            log.warn("HTTP/2 client {peer} reset more than {n} streams in a burst (rapid reset); closing",
                     peer=self._peerHost or "?", n=self.site.limits.http2_max_resets)
            self._calm("too many stream resets")

    def _spendReset(self) -> bool:
        """One client reset spent; False once the bucket is empty (refilled at a tenth per second)."""
        burst = self.site.limits.http2_max_resets
        now = self._reactor.seconds()
        self._resets = min(float(burst), self._resets + max(0.0, now - self._resetsAt) * burst / 10.0)
        self._resetsAt = now
        if self._resets < 1:
            return False
        self._resets -= 1
        return True

    def _requestDone(self, streamID: int) -> None:
        self.conn.pendingTrailers.pop(streamID, None)
        stream = self.streams.get(streamID)
        if stream is not None:
            stream.streamDone()
        super()._requestDone(streamID)
        if self._goingAway is not None and not self.streams and self.transport is not None:
            self.transport.loseConnection()

    # -- deadlines

    def _armHead(self) -> None:
        seconds = self.site.limits.timeouts.request_header
        if seconds and seconds > 0 and self._headDeadline is None:
            self._headDeadline = self.site.reactor.callLater(seconds, self._headExpired, seconds)

    def _disarmHead(self) -> None:
        call, self._headDeadline = self._headDeadline, None
        if call is not None and call.active():
            call.cancel()

    def _headExpired(self, seconds: float) -> None:
        self._headDeadline = None
        if not self._stillProducing:
            return
        log.info("HTTP/2 client {peer} sent no complete request head within {s:g}s; closing",
                 peer=self._peerHost or "?", s=seconds)
        self.site.metrics.observeRefusal(408)
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
        self._terminate(Failure(ConnectionLost("request head timeout")))

    def timeoutConnection(self) -> None:
        # server.timeouts.idle counts only while no request is open: a slow
        # upstream is not an idle client.
        if self.streams:
            self.setTimeout(self.timeOut)  # TimeoutMixin dropped its timer before calling us: a new one
            return
        super().timeoutConnection()

    # -- what the Site and the requests ask of a channel

    def getPeer(self) -> Any:
        return self.transport.getPeer() if self.transport is not None else None

    def getHost(self) -> Any:
        return self.transport.getHost() if self.transport is not None else None
