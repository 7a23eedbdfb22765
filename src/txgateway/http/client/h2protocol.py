# -*- test-case-name: tests.test_h2client -*-
"""
One HTTP/2 connection to a target, carrying many requests at once.

L{H2ClientProtocol} drives the h2 package's client state machine over a
Twisted transport: a request is a stream (L{H2ClientProtocol.request}),
its body is read from an C{IBodyProducer} only as fast as the stream's and
the connection's send windows allow (L{txgateway.http.client.h2body}), and
its response (L{H2Response}) holds the body back, withholding window, while
the gateway's client is slow.

What a connection owes the pool (L{txgateway.http.client.h2pool}) and the
attempt loop:

  - GOAWAY: streams the target says it never processed (above its
    C{last_stream_id}) fail with L{StreamRefused}, a connect error, so the
    attempt loop may send them again even when they are not idempotent;
    the streams below it finish; no new stream opens here and the
    connection closes when the last one ends.
  - PING keep-alive (L{txgateway.http.client.h2ping}): no ACK within
    C{ping_timeout} and the connection is dropped, failing its streams
    (they are then "reset", as for a dead HTTP/1.1 connection).
  - Cancellation: cancelling a request's Deferred, or stopping its body,
    sends RST_STREAM(CANCEL).

No private name of any library is used here (see L{txgateway.http.client.h2state}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from txgateway.http.client.h2body import RequestBody
from txgateway.http.client.h2ping import KeepAlive
from txgateway.http.client.h2response import H2Response, responseHead
from txgateway.http.client.h2state import ClientState, StreamRefused, codeName

__all__ = ["H2ClientProtocol", "StreamRefused"]

log = Logger(namespace="txgateway.upstream")

# Each stream may have this much unread body in flight; the connection as a whole 16 times that.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 * STREAM_WINDOW


class _Stream:
    """A request in flight: its Deferred until the head arrives, then its response."""

    __slots__ = ("id", "deferred", "response", "body")

    def __init__(self, streamID: int, deferred: Deferred[IResponse]) -> None:
        self.id = streamID
        self.deferred: Deferred[IResponse] | None = deferred
        self.response: H2Response | None = None
        self.body: RequestBody | None = None


@implementer(IHandshakeListener)
class H2ClientProtocol(Protocol):
    """
    A client HTTP/2 connection.  C{onChange(self)} is called whenever it
    can take more streams than before (one ended, the target's settings
    arrived) or can take none any more (GOAWAY, closed): the pool's cue.
    """

    def __init__(self, clock: IReactorTime, maxStreams: int, onChange: Callable[[H2ClientProtocol], None],
                 pingInterval: float = 0.0, pingTimeout: float = 10.0, alpn: bool = False) -> None:
        self.clock = clock
        self.maxStreams = maxStreams
        self.onChange = onChange
        self.alpn = alpn  # a TLS connection: the target must have chosen h2
        self.conn = ClientState(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, _Stream] = {}
        self.goingAway = False
        self.closed = False
        self.lastUsed = clock.seconds()
        self._checked = not alpn
        self.keepAlive = KeepAlive(clock, pingInterval, pingTimeout, self._ping, self._pingExpired)

    # -- capacity, for the pool

    def capacity(self) -> int:
        """How many more streams this connection may open now."""
        if self.goingAway or self.closed:
            return 0
        allowed = min(self.maxStreams, self.conn.remote_settings.max_concurrent_streams)
        return max(0, allowed - len(self.streams))

    # -- the connection's life

    def connectionMade(self) -> None:
        # Each event writes whole frames: holding back a small last segment
        # for the previous one's ACK (Nagle with delayed ACKs) costs up to 40 ms.
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            try:
                noDelay(True)
            except OSError:
                pass
        conn = self.conn
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,  # a target opens no stream to us
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self.keepAlive.start()

    def handshakeCompleted(self) -> None:
        """TLS is up (C{IHandshakeListener}): the target must have chosen h2 by ALPN."""
        if self._checked:
            return
        self._checked = True
        chosen = getattr(self.transport, "negotiatedProtocol", None)
        if chosen != b"h2":
            why = (f"the target did not choose h2 by ALPN (it chose "
                   f"{chosen.decode('ascii', 'replace') if chosen else 'no protocol'}); is it an HTTP/2 server?")
            log.warn("HTTP/2 connection to {peer} refused: {why}", peer=self._peer(), why=why)
            self._fail(ConnectError(string=why))

    def dataReceived(self, data: bytes) -> None:
        if not self._checked:
            self.handshakeCompleted()
            if self.goingAway:
                return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warn("HTTP/2 protocol error from target {peer}: {error}", peer=self._peer(), error=e)
            self.flush()
            self._fail(ConnectionLost(f"HTTP/2 protocol error: {e}"))
            return
        for event in events:
            self._event(event)
        self.flush()

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:  # noqa: B008
        self.closed = True
        self.keepAlive.stop()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._broken(stream, reason)
        self.onChange(self)

    def close(self) -> None:
        """Close now if idle (saying GOAWAY), or once the streams in flight end."""
        if self.closed:
            return
        self.goingAway = True
        if not self.streams and self.transport is not None:
            try:
                self.conn.close_connection()
            except h2.exceptions.ProtocolError:
                pass
            self.flush()
            self.transport.loseConnection()

    def _fail(self, reason: Exception) -> None:
        """Drop the connection; its streams fail with C{reason}."""
        self.goingAway = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            self._broken(stream, Failure(reason))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- requests

    def request(self, method: bytes, scheme: bytes, authority: bytes, path: bytes,
                fields: list[tuple[bytes, bytes]], bodyProducer: IBodyProducer | None) -> Deferred[IResponse]:
        """Open a stream for one request; fires with its response once the head is in."""
        conn = self.conn
        try:
            streamID = conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            # 2^30 streams on one connection: it takes no more, and closes once idle.
            self.close()
            self.onChange(self)
            return fail(StreamRefused(string="the connection has used up its stream ids"))
        d: Deferred[IResponse] = Deferred(lambda _: self._cancel(streamID))
        stream = self.streams[streamID] = _Stream(streamID, d)
        head = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", path), *fields]
        try:
            conn.send_headers(streamID, head, end_stream=bodyProducer is None)
        except (h2.exceptions.ProtocolError, ValueError, TypeError) as e:
            del self.streams[streamID]
            stream.deferred = None
            d.errback(ResponseNeverReceived([Failure(e)]))
            return d
        self.lastUsed = self.clock.seconds()
        if bodyProducer is not None:
            stream.body = RequestBody(self, streamID, bodyProducer)
            stream.body.start()
        self.flush()
        return d

    def _cancel(self, streamID: int) -> None:
        stream = self.streams.get(streamID)
        if stream is None:
            return
        self.resetStream(streamID)
        self._end(stream)
        deferred, stream.deferred = stream.deferred, None
        if deferred is not None and not deferred.called:
            deferred.errback(Failure(CancelledError()))

    def resetStream(self, streamID: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """RST_STREAM: the gateway gave up on this stream (its client left, its body failed)."""
        stream = self.streams.get(streamID)
        if stream is not None and stream.body is not None:
            stream.body.stop()
        try:
            self.conn.reset_stream(streamID, code)
        except h2.exceptions.ProtocolError:
            pass  # already closed on the wire
        self.flush()

    def bodyFailed(self, streamID: int, reason: Failure) -> None:
        """The request body's producer failed: the target must not take a half body for a whole one."""
        stream = self.streams.get(streamID)
        if stream is None:
            return
        self.resetStream(streamID)
        self._end(stream)
        self._broken(stream, reason)

    def _acknowledger(self, streamID: int) -> Callable[[int], None]:
        def acknowledge(n: int) -> None:
            # A stream that already ended still gives the connection's window back.
            if n and not self.closed:
                try:
                    self.conn.acknowledge_received_data(n, streamID)
                except (h2.exceptions.ProtocolError, KeyError):
                    return
                self.flush()
        return acknowledge

    # -- h2's events

    def _event(self, event: Any) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.response is not None:
                stream.response.bodyReceived(event.data, event.flow_controlled_length)
            elif event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif kind is h2.events.ResponseReceived:
            self._head(event.stream_id, event.headers)
        elif kind is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.response is not None:
                for name, value in event.headers:
                    if name[:1] != b":":
                        stream.response.trailers.addRawHeader(name, value)
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._end(stream)
                if stream.response is not None:
                    stream.response.bodyEnded()
                else:
                    self._broken(stream, Failure(ConnectionLost("the stream ended without a response head")))
        elif kind is h2.events.StreamReset:
            self._reset(event)
        elif kind is h2.events.WindowUpdated:
            self._windowOpened(event.stream_id)
        elif kind is h2.events.RemoteSettingsChanged:
            self._windowOpened(0)
            self.onChange(self)
        elif kind is h2.events.ConnectionTerminated:
            self._goAway(event)
        elif kind is h2.events.PingAckReceived:
            self.keepAlive.answered(event.ping_data)

    def _head(self, streamID: int, fields: list[tuple[bytes, bytes]]) -> None:
        stream = self.streams.get(streamID)
        if stream is None:
            return
        code, headers, length = responseHead(fields)
        response = stream.response = H2Response(code, headers, length, self._acknowledger(streamID),
                                                lambda: self._stopBody(streamID))
        deferred, stream.deferred = stream.deferred, None
        if deferred is not None:
            deferred.callback(response)

    def _stopBody(self, streamID: int) -> None:
        stream = self.streams.get(streamID)
        if stream is not None:
            self.resetStream(streamID)
            self._end(stream)

    def _reset(self, event: Any) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        self._end(stream)
        if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and stream.response is None:
            why: Exception = StreamRefused(string="the target refused the stream (REFUSED_STREAM)")
        else:
            why = ConnectionLost(f"the target reset the stream ({codeName(event.error_code)})")
        self._broken(stream, Failure(why))

    def _goAway(self, event: Any) -> None:
        last = event.last_stream_id
        self.goingAway = True
        log.info("target {peer} sent GOAWAY ({code}, last stream {last}); {n} stream(s) in flight",
                 peer=self._peer(), code=codeName(event.error_code), last=last, n=len(self.streams))
        for streamID in sorted(self.streams):
            if streamID > last:
                stream = self.streams[streamID]
                self._end(stream)
                self._broken(stream, Failure(StreamRefused(string=f"the target went away (GOAWAY) before "
                                                                  f"reading stream {streamID}")))
        self.onChange(self)
        if not self.streams and self.transport is not None:
            self.transport.loseConnection()

    def _windowOpened(self, streamID: int) -> None:
        if streamID:
            stream = self.streams.get(streamID)
            if stream is not None and stream.body is not None:
                stream.body.send()
            return
        for stream in list(self.streams.values()):
            if stream.body is not None:
                stream.body.send()

    def _end(self, stream: _Stream) -> None:
        """The stream is over for the connection: it no longer counts against the cap."""
        if self.streams.pop(stream.id, None) is None:
            return
        if stream.body is not None:
            stream.body.stop()
        self.lastUsed = self.clock.seconds()
        if self.goingAway and not self.streams and self.transport is not None and not self.closed:
            self.transport.loseConnection()
        self.onChange(self)

    def _broken(self, stream: _Stream, reason: Failure) -> None:
        if stream.body is not None:
            stream.body.stop()  # the producer of a body still being sent stops too
        deferred, stream.deferred = stream.deferred, None
        if deferred is not None and not deferred.called:
            if reason.check(ConnectError):
                deferred.errback(reason)
            else:
                deferred.errback(ResponseNeverReceived([reason]))
        elif stream.response is not None:
            stream.response.bodyEnded(Failure(ResponseFailed([reason])))

    def _ping(self, data: bytes) -> None:
        if not self.closed:
            self.conn.ping(data)
            self.flush()

    def _pingExpired(self) -> None:
        log.warn("target {peer} did not answer a PING within {t:g}s; dropping the connection",
                 peer=self._peer(), t=self.keepAlive.timeout)
        self._fail(ConnectionLost(f"no PING answer within {self.keepAlive.timeout:g}s"))

    # -- writing

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _peer(self) -> str:
        peer = getattr(self.transport, "getPeer", None)
        return str(peer()) if peer is not None else "?"
