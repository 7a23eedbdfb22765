# -*- test-case-name: tests.test_h2server -*-
"""
One HTTP/2 request stream, as the gateway's request path sees it.

twisted.web's L{H2Stream} is the channel of one L{GatewayRequest
<txgateway.http.request.GatewayRequest>} on an HTTP/2 connection.  This
subclass makes it answer what the HTTP/1.1 channel answers: it checks the
request's fields the way L{txgateway.http.channel} checks a request head
(C{:authority} is the Host and must be valid, a C{Content-Length} must be
one number within C{server.max_request_body}, the path within
C{server.max_uri_bytes}), refuses with the gateway's JSON errors on the
stream alone (the connection and its other streams carry on), drops the
connection-specific fields HTTP/2 forbids from responses (RFC 9113
§8.2.2) instead of letting the h2 package raise on them, carries response
trailers (L{writeTrailers}), and offers itself as its request's transport
so that "abort the connection" (a broken upstream body, a gateway error
after the head went out) resets this stream only.

Private Twisted names used here (held to stock Twisted by
tests/test_h2server.py): C{H2Stream._convertHeaders} (replaced),
C{H2Stream._request}, C{H2Stream._conn}, C{H2Stream._send100Continue} and
the connection's C{_streamIsActive}, C{_stillProducing}, C{_requestDone},
C{_tryToWriteControlData}, C{_consumerBlocked}, C{priority}; C{H2Stream._producerProducing} (read);
C{Headers._rawHeaders}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h2.errors
import h2.exceptions
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._http2 import H2Stream

from txgateway.http.errors import errorBody
from txgateway.http.h2body import StreamedBody
from txgateway.http.heads import validAuthority

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["GatewayH2Stream", "REQUEST_PROTOCOL"]

log = Logger(namespace="txgateway")

# What twisted.web gives a request as its clientproto on an HTTP/2 stream.
REQUEST_PROTOCOL = b"HTTP/2"

# RFC 9113 §8.2.2: connection-specific fields never appear in HTTP/2.
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"))
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large"}


class GatewayH2Stream(H2Stream):
    """An HTTP/2 stream with the gateway's request checks, JSON refusals and response trailers."""

    refused = False
    # (status, message) found while reading the request's fields; the
    # connection answers it once the stream is registered (it cannot be
    # sent from the constructor).
    problem: tuple[int, str] | None = None
    ended = False  # the client sent END_STREAM: the request body is complete
    deadline: IDelayedCall | None = None
    body: StreamedBody | None = None  # set when the request was forwarded before its body ended
    declaredLength: int | None = None  # the request's Content-Length, if it sent one
    stalled: IDelayedCall | None = None  # the response's window shut: reset at server.timeouts.write
    _bodyWait = 0.0  # server.timeouts.request_body, once the body streams: the most a pause may last

    @property
    def transport(self) -> Any:
        """
        The request's transport is this stream: what the request path does
        to "the connection" (abort it, ask its addresses) it does to this
        stream, never to the client's other requests.
        """
        return self

    @transport.setter
    def transport(self, value: Any) -> None:
        pass  # fixed: always this stream

    def _convertHeaders(self, headers: Any) -> None:
        request = self._request
        site = self.site
        limits = site.limits
        add = request.requestHeaders.addRawHeader
        authority: bytes | None = None
        hosts: list[bytes] = []
        cookies: list[bytes] = []
        lengths: list[bytes] = []
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    self.command = value
                elif name == b":path":
                    self.path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"host":
                hosts.append(value)
            elif name == b"cookie":
                # RFC 9113 §8.2.3: split cookie fields are one field again
                # for an HTTP/1.1 upstream.
                cookies.append(value)
            else:
                if name == b"content-length":
                    lengths.append(value)
                add(name, value)
        if cookies:
            add(b"cookie", b"; ".join(cookies))
        self.problem = self._check(authority, hosts, lengths, limits)
        if authority is None and len(hosts) == 1:
            authority = hosts[0]
        if authority is not None:
            request.requestHeaders._rawHeaders[b"host"] = [authority]
        length: int | None = int(lengths[0]) if lengths and self.problem is None else None
        self.declaredLength = length
        if length is None and self.command in (b"GET", b"HEAD"):
            length = 0
        request.gotLength(length)
        if self.problem is None:
            expect = request.requestHeaders.getRawHeaders(b"expect")
            if expect and expect[0].lower() == b"100-continue":
                self._send100Continue()

    def _check(self, authority: bytes | None, hosts: list[bytes], lengths: list[bytes],
               limits: Any) -> tuple[int, str] | None:
        """What is wrong with the request's fields, as (status, message), or None."""
        path = self.path or b""
        if self.command == b"CONNECT":
            return 400, "CONNECT is not supported"
        if len(path) > limits.max_uri_bytes:
            return 414, f"request-target over {limits.max_uri_bytes} bytes"
        if path[:1] != b"/" and not (path == b"*" and self.command == b"OPTIONS"):
            return 400, "unsupported request-target"
        if len(hosts) > 1:
            return 400, "more than one Host header"
        if authority is not None and hosts and hosts[0] != authority:
            # RFC 9113 §8.3.1: a client must not send a Host that differs.
            # The h2 package ends the connection for it first (a malformed
            # header block, PROTOCOL_ERROR); this stays should it ever not.
            return 400, "Host and :authority differ"
        host = authority if authority is not None else (hosts[0] if hosts else None)
        if host is None:
            return 400, "missing :authority"
        if not validAuthority(host):
            return 400, "invalid :authority"
        if lengths:
            if len(set(lengths)) > 1 or not lengths[0].isdigit():
                return 400, "invalid Content-Length"
            if int(lengths[0]) > limits.max_request_body:
                return 413, f"request body over {limits.max_request_body} bytes"
        return None

    # -- a request forwarded before its body ended (see txgateway.http.h2body)

    def startStreaming(self) -> None:
        """
        Forward the request now, its body to stream after it: called by the
        connection at the end of the read that brought the request's HEADERS
        when its body did not end in that read.
        """
        request = self._request
        self.body = StreamedBody(self, request, self.declaredLength)
        request.bodyStream = self.body
        if self.deadline is not None:
            # From now on request_body bounds each pause in the body, not its
            # whole length: a gRPC stream may last as long as its call does.
            self._bodyWait = self.deadline.getTime() - self.site.reactor.seconds()
        request.requestReceived(self.command, self.path, b"HTTP/2")

    def receiveDataChunk(self, data: bytes, flowControlledLength: int) -> None:
        body = self.body
        if body is None:
            super().receiveDataChunk(data, flowControlledLength)
            return
        deadline = self.deadline
        if deadline is not None and deadline.active():
            deadline.reset(self._bodyWait)
        body.received(data, flowControlledLength)

    def requestComplete(self) -> None:
        body = self.body
        if body is None:
            super().requestComplete()
        else:
            body.end()

    def connectionLost(self, reason: Any) -> None:
        self._stopStall()
        body = self.body
        if body is not None:
            body.fail(reason)
        super().connectionLost(reason)

    def openWindow(self, increment: int) -> None:
        """Give C{increment} bytes of flow-control credit back to the client (stream and connection)."""
        conn = self._conn
        if conn._stillProducing:
            conn.openStreamWindow(self.streamID, increment)

    def streamDone(self) -> None:
        """
        The response is complete: a body still arriving is no longer
        wanted (RST_STREAM NO_ERROR, RFC 9113 §8.1) and the credit still
        owed for it goes back to the connection.
        """
        self.disarm()
        self._stopStall()
        body = self.body
        if body is None or self.ended:
            return
        body.fail(Failure(ConnectionLost("response complete before the request body")))
        state = self._conn.conn
        try:
            state.reset_stream(self.streamID, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            return  # closed already
        self._conn._tryToWriteControlData()

    # -- response flow control

    def flowControlBlocked(self) -> None:
        """
        The client's window is spent: the upstream is paused (Twisted), and
        the stream leaves the send loop until a WINDOW_UPDATE puts it back.
        Twisted leaves it in, and its loop then spins on a zero window
        (callLater(0) again and again) for as long as the client waits.
        """
        super().flowControlBlocked()
        conn = self._conn
        if conn._stillProducing and conn.conn.local_flow_control_window(self.streamID) <= 0:
            conn.priority.block(self.streamID)
            seconds = self.site.limits.timeouts.write
            if self.stalled is None and seconds and seconds > 0:
                self.stalled = self.site.reactor.callLater(seconds, self._windowShut, seconds)

    def windowUpdated(self) -> None:
        # A window opened while the client's socket is full: the upstream
        # stays paused until the socket drains (the connection resumes us).
        if self.stalled is not None and self._conn.conn.local_flow_control_window(self.streamID) > 0:
            self._stopStall()
        if self._conn._consumerBlocked is None:
            super().windowUpdated()

    def _stopStall(self) -> None:
        call, self.stalled = self.stalled, None
        if call is not None and call.active():
            call.cancel()

    def _windowShut(self, seconds: float) -> None:
        """
        server.timeouts.write for HTTP/2: a client that keeps a stream's
        window shut holds the upstream paused for as long as it likes; after
        this long the stream is reset (CANCEL) and the upstream let go.
        """
        self.stalled = None
        log.warn("HTTP/2 client {peer} opened no flow-control window on stream {sid} for {seconds:g}s "
                 "(server.timeouts.write); resetting the stream", peer=getattr(self._conn, "_peerHost", None) or "?",
                 sid=self.streamID, seconds=seconds)
        self.site.metrics.writeTimeouts.inc()
        conn = self._conn
        sid = self.streamID
        if not conn._stillProducing or not conn._streamIsActive(sid):
            return
        try:
            conn.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass
        if conn._tryToWriteControlData():
            # As when the client resets it: the forward is cancelled, the upstream stopped.
            self.connectionLost(Failure(ConnectionLost("response window held shut")))
            if conn._streamIsActive(sid):
                conn._requestDone(sid)

    # -- answering

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if self.body is not None:
            self.disarm()  # answered: the body's pauses are the upstream's business now
        fields: list[tuple[bytes, bytes]] = []
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower in _CONNECTION_SPECIFIC or (lower == b"te"):
                continue
            fields.extend((lower, v) for v in values)
        try:
            self._conn.writeHeaders(version, code, reason, fields, self.streamID)
        except h2.exceptions.ProtocolError as e:
            # A field h2 will not send (an upstream's invalid value): the
            # stream is reset rather than the connection dropped.
            log.warn("HTTP/2 response head refused by h2 ({error}); resetting the stream", error=e)
            self.abortConnection()

    def writeTrailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """
        Send C{fields} as this response's trailers: a last HEADERS frame
        that ends the stream, after the body (gRPC's C{grpc-status}).
        Call before the request's C{finish}.
        """
        kept = [(n.lower(), v) for n, v in fields if n.lower() not in _CONNECTION_SPECIFIC and n[:1] != b":"]
        if kept and self._conn._streamIsActive(self.streamID):
            self._conn.conn.pendingTrailers[self.streamID] = kept

    def abortConnection(self) -> None:
        """Reset this stream (RST_STREAM), unless the connection is already gone."""
        conn = self._conn
        if conn._stillProducing and conn._streamIsActive(self.streamID):
            conn.abortRequest(self.streamID)

    def refuse(self, status: int, reason: bytes, message: str) -> None:
        """
        Answer this request with a JSON error and end the stream; the
        connection and its other streams carry on.  A request body still
        arriving is stopped with RST_STREAM(NO_ERROR) (RFC 9113 §8.1).
        """
        if self.refused:
            return
        self.refused = True
        self.disarm()
        conn = self._conn
        if self.body is not None:
            self.body.fail(Failure(ConnectionLost(f"request refused: {status}")))
            if self._request.startedWriting:
                # The response is under way: too late for an answer of ours.
                log.info("HTTP/2 request body refused after its response started ({status} {message}); "
                         "resetting the stream", status=status, message=message)
                self.site.metrics.observeRefusal(status)
                self.abortConnection()
                return
        site = self.site
        peer = getattr(conn, "_peerHost", None) or "?"
        log.info("refused an HTTP/2 request from {peer}: {status} {message}", peer=peer, status=status,
                 message=message)
        site.metrics.observeRefusal(status)
        requestId = None
        hook = site.onRefusal
        if hook is not None:
            try:
                requestId = hook(peer, self.command or b"-", self.path or b"-", self._request.requestHeaders,
                                 status)
            except Exception:
                log.failure("recording a refused request failed")
        if not conn._stillProducing or not conn._streamIsActive(self.streamID):
            return
        body = errorBody(status, message, requestId)
        fields = [(b":status", b"%d" % status), (b"content-type", b"application/json"),
                  (b"content-length", b"%d" % len(body))]
        if requestId is not None:
            fields.append((b"x-request-id", requestId.encode("ascii")))
        state = conn.conn
        sid = self.streamID
        try:
            if state.local_flow_control_window(sid) >= len(body):
                state.send_headers(sid, fields)
                state.send_data(sid, body, end_stream=True)
            else:
                state.send_headers(sid, fields, end_stream=True)
            if not self.ended:
                state.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass  # the stream closed under us: nothing left to tell its client
        if conn._tryToWriteControlData():
            self._request.connectionLost(Failure(ConnectionLost("request refused")))
            if conn._streamIsActive(sid):
                conn._requestDone(sid)

    # -- the request body's deadline (server.timeouts.request_body)

    def arm(self, seconds: float) -> None:
        """The request body must be complete within C{seconds}: 408 otherwise."""
        if seconds and seconds > 0:
            self.deadline = self.site.reactor.callLater(seconds, self._expired, seconds)

    def disarm(self) -> None:
        call, self.deadline = self.deadline, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self, seconds: float) -> None:
        self.deadline = None
        self.refuse(408, _REASONS[408], f"request body not received within {seconds:g}s")

    def refuseProblem(self) -> None:
        """Answer the problem found in the request's fields, if any."""
        if self.problem is not None:
            status, message = self.problem
            self.refuse(status, _REASONS.get(status, b"Bad Request"), message)
