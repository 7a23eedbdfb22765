# -*- test-case-name: tests.test_channel,tests.test_hardening -*-
"""
The listening channel: a client's request heads and bodies, bounded.

twisted.web reads whatever a client sends; a gateway must cap the request
head (431) and body (413) before anything is buffered, put deadlines on how
long a client may take to send them (408), refuse request heads a backend
could read differently from us (400, RFC 9112) and answer with its own small
JSON errors instead of Twisted's bare or HTML pages.  The checks that need no
connection state are in L{txgateway.http.heads}; the connection-lifetime
timers in L{txgateway.http.connection}; the Site that counts connections in
L{txgateway.http.site}.

Everything here happens before a request reaches the resource tree, so a
refused request never costs a route, a filter or an upstream connection.

Private Twisted names used here (held to stock Twisted by tests/test_channel.py):
C{twisted.web.http._parseRequestLine}; C{HTTPChannel._transferDecoder} and
its C{_ChunkedTransferDecoder.state} / C{.length} (the size a chunk line
declared, to answer 413 before the chunk is sent); C{HTTPChannel}'s
C{_receivedHeaderCount}, C{_buffer} (LineReceiver), C{_abortingCall};
C{Headers._rawHeaders}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.http import _parseRequestLine  # type: ignore[attr-defined]

from txgateway.http.connection import GatewayConnection
from txgateway.http.headers import H_CONNECTION as _CONNECTION
from txgateway.http.headers import H_HOST as _HOST
from txgateway.http.heads import checkRequestLine, rawResponse, splitAbsoluteForm, splitWholeHead, validAuthority

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["GatewayChannel"]

log = Logger(namespace="txgateway")


# What the channel is reading or doing, for the deadlines.
_HEAD, _BODY, _BUSY, _IDLE = "head", "body", "busy", "idle"


class GatewayChannel(GatewayConnection):
    """
    One client connection, with every limit enforced before Twisted buffers.

    Deadlines: a fresh connection owes a complete request head within
    C{timeouts.request_header}; on a keep-alive connection the next head's
    deadline starts with its first byte (the idle timeout covers the wait
    before it).  A body owes its last byte within C{timeouts.request_body} of
    the end of its head.  Twisted's own timer is an idle timer that every
    byte resets, so a client trickling one header line a second would keep a
    socket forever without these.
    """

    site: Any
    refused = False
    # At most this many header fields in a request head: one more is
    # answered 431 (documented in docs/config/server.md and docs/security.md).
    # Twisted's own cap, named here because the answer is ours.
    maxHeaders = 500
    _phase = _HEAD
    _expectRequestLine = True
    _deadline: IDelayedCall | None = None
    _validHost: bytes | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        limits = self.site.limits
        # No single line may be longer than the whole head may be; the
        # stock 16 KiB line cap would silently drop the connection instead
        # of answering 414 or 431.
        self.MAX_LENGTH = max(limits.max_header_bytes, 1)
        self.totalHeadersSize = limits.max_header_bytes + 1
        self.site.connectionOpened(self)
        if self.site.writes is not None:
            self.site.writes.adopt(self.transport)
        self._arm(limits.timeouts.request_header, "request head")

    def connectionLost(self, reason: Any = None) -> None:
        self._disarm()
        self._stopConnectionTimers()
        self.site.connectionClosed(self)
        super().connectionLost(reason)

    # -- deadlines

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if seconds and seconds > 0:
            self._deadline = self.site.reactor.callLater(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        self.refuse(408, b"Request Timeout", f"{what} not received within {seconds:g}s")

    # -- refusing

    def refuse(self, status: int, reason: bytes, message: str) -> None:
        """Answer a request we will not read, then close: the rest of its bytes are untrusted."""
        if self.refused or self.transport is None:
            return
        self.refused = True
        self._disarm()
        self.setTimeout(None)  # the idle timer would close the connection a second time
        peer = self._peerHost or "?"
        log.info("refused a request from {peer}: {status} {message}", peer=peer, status=status, message=message)
        # These never reach the resource tree, so the request metrics and
        # the access log would not see them.
        self.site.metrics.observeRefusal(status)
        requestId = None
        hook = self.site.onRefusal
        if hook is not None:
            request = self.requests[-1] if self.requests else None
            command = getattr(self, "_command", None) or b"-"
            target = getattr(self, "_path", None) or b"-"
            try:
                requestId = hook(peer, command, target, request.requestHeaders if request is not None else None,
                                 status)
            except Exception:
                log.failure("recording a refused request failed")
        self.transport.write(rawResponse(status, reason, message, requestId))
        self.persistent = False
        self.loseConnection()
        if self.abortTimeout is not None and self._abortingCall is None:
            # A client that sends but never reads would keep the socket open
            # with our answer stuck in its buffer.
            self._abortingCall = self.site.reactor.callLater(self.abortTimeout, self.forceAbortClient)
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.lineReceived = lambda line: None  # type: ignore[method-assign]
        self.rawDataReceived = lambda data: None  # type: ignore[method-assign]

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own malformed-message answer is a bare 400; ours says why
        # in the same JSON shape as every other gateway error.
        self.refuse(400, b"Bad Request", "malformed request")

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._expectRequestLine:
            self.refuse(414, b"URI Too Long", f"request-target over {self.site.limits.max_uri_bytes} bytes")
        else:
            self.refuse(431, b"Request Header Fields Too Large",
                        f"request head over {self.site.limits.max_header_bytes} bytes")

    # -- parsing

    def dataReceived(self, data: bytes) -> None:
        writes = self.site.writes
        if writes is None:
            self._receive(data)
        else:
            writes.run(self._receive, data)

    def _receive(self, data: bytes) -> None:
        if data[-4:] == b"\r\n\r\n" and self.line_mode and self._expectRequestLine and not self._buffer \
                and self._wholeHead(data):
            return
        if self._phase == _IDLE and data:
            # The first byte of the next request on a keep-alive connection:
            # its head's deadline starts now.  It is armed after the bytes
            # are parsed, at the same instant, and only if the head is still
            # incomplete then; a head that arrives whole (nearly always)
            # costs no timer to set and cancel.
            self._phase = _HEAD
        super().dataReceived(data)
        buffered = self._buffer
        if self.line_mode and b"\n" in buffered and b"\r\n" not in buffered and not self.refused \
                and self.transport is not None:
            # The line being read holds an LF without its CR: Twisted's line
            # reader would wait for a CRLF that never comes, until the head
            # deadline.  (A CRLF in what is left means the reader is paused
            # behind a request being answered: those lines come later.)
            self._refuseBareLineFeed()
            return
        if self._phase == _IDLE and self._buffer and self.line_mode:
            # The bytes held a whole request, answered at once, and the start
            # of another: that one's head deadline starts now too.
            self._phase = _HEAD
        if self._phase == _HEAD and self._deadline is None and not self.refused and self.transport is not None:
            self._arm(self.site.limits.timeouts.request_header, "request head")

    def _wholeHead(self, data: bytes) -> bool:
        """
        Take a bodiless request whose head arrived whole, in one read: nearly
        every GET, HEAD and DELETE.

        twisted.web would split it into lines and run each through the line
        machinery, then through C{headerReceived} (about a quarter of the
        Python time spent on such a request).  Here the lines are checked
        first, all of them, and anything the line-by-line path would treat
        specially (a body's framing fields, obs-fold, an invalid name or
        value, a size or count limit, a second pipelined request, a
        connection that is closing) returns False before any state changes:
        that request takes the ordinary path, which answers or refuses it as
        before.  What is taken ends in the same calls, in the same order, as
        the ordinary path: the request line checks, the request, the fields,
        C{allHeadersReceived}, C{allContentReceived}.
        """
        if len(data) > self.site.limits.max_header_bytes or not self.persistent or self.refused:
            return False
        head = splitWholeHead(data, self.maxHeaders)
        if head is None:
            return False
        first, fields = head
        self.resetTimeout()
        if not self._checkRequestLine(first):
            return True
        request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        try:
            self._command, self._path, self._version = _parseRequestLine(first)
        except ValueError:
            self._respondToBadRequestAndDisconnect()
            return True
        self._expectRequestLine = False
        add = request.requestHeaders.addRawHeader
        for name, value in fields:
            add(name, value)
        self._receivedHeaderCount = len(fields)
        self.allHeadersReceived()
        self.allContentReceived()
        return True

    def _refuseBareLineFeed(self) -> None:
        """
        RFC 9112 §2.2 lets a recipient take a bare LF as a line end; the
        gateway does not (a backend or a cache in front of it might split
        the head differently) and answers 400 at once.
        """
        self.refuse(400, b"Bad Request", "bare LF line ending in the request head (CRLF required)")

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        if b"\n" in line:
            self._refuseBareLineFeed()
            return
        if self._expectRequestLine:
            if line:
                if not self._checkRequestLine(line):
                    return
                self._expectRequestLine = False
        elif line[:1] in (b" ", b"\t"):
            # RFC 9112 §5.2: obs-fold may be rejected; joining it would let
            # two parsers disagree on where a field ends.
            self.refuse(400, b"Bad Request", "obsolete line folding in the request head")
            return
        limit = self.site.limits.max_header_bytes
        if self._receivedHeaderSize + len(line) > limit:
            self.refuse(431, b"Request Header Fields Too Large", f"request head over {limit} bytes")
            return
        super().lineReceived(line)

    def _checkRequestLine(self, line: bytes) -> bool:
        problem = checkRequestLine(line, self.site.limits.max_uri_bytes)
        if problem is not None:
            self.refuse(*problem)
            return False
        return True

    def headerReceived(self, line: bytes) -> bool:
        if self.refused:
            return False
        if self._receivedHeaderCount >= self.maxHeaders:
            # Twisted answers a bare 400; RFC 6585 §5 names 431 for this.
            self.refuse(431, b"Request Header Fields Too Large", f"more than {self.maxHeaders} header fields")
            return False
        name, sep, value = line.partition(b":")
        if b"\x00" in value or b"\r" in value:
            # RFC 9110 §5.5.  Twisted checks for NUL itself only since twisted#12228
            # (after 24.7): a NUL must never reach a backend, whatever the release.
            self.refuse(400, b"Bad Request", "CR or NUL in a field value")
            return False
        # RFC 9112 §6.1: chunked is the only coding we decode; Twisted would
        # also take "identity" and read the body as the next request.  An
        # HTTP/1.0 message has no transfer codings at all.
        if sep and name.lower() == b"transfer-encoding" and (
                self._version != b"HTTP/1.1" or value.strip(b" \t").lower() != b"chunked"):
            self.refuse(400, b"Bad Request", "unsupported Transfer-Encoding")
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        if self.refused:
            return
        req = self.requests[-1]
        problem = self._checkHost(req)
        if problem is not None:
            self.refuse(400, b"Bad Request", problem)
            return
        limits = self.site.limits
        if self.length is not None and self.length > limits.max_request_body:
            # Before Twisted would send "100 Continue": the client never uploads it.
            self.refuse(413, b"Content Too Large", f"request body over {limits.max_request_body} bytes")
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._phase = _BODY
            self._arm(limits.timeouts.request_body, "request body")
        else:
            self._disarm()

    def _checkHost(self, req: Any) -> str | None:
        """RFC 9112 §3.2: exactly one valid Host; absolute-form targets override it."""
        hosts = req.requestHeaders._rawHeaders.get(_HOST)
        if hosts is not None and len(hosts) > 1:
            return "more than one Host header"
        if hosts is None and self._version == b"HTTP/1.1":
            return "missing Host header"
        if hosts is not None and hosts[0] != self._validHost:
            if not validAuthority(hosts[0]):
                return "invalid Host header"
            # A keep-alive client sends the same Host on every request.
            self._validHost = hosts[0]
        target = self._path
        if target[:1] == b"/" or (target == b"*" and self._command == b"OPTIONS"):
            return None
        try:
            authority, origin = splitAbsoluteForm(target)
        except ValueError as e:
            return f"unsupported request-target: {e}"
        # RFC 9112 §3.2.2: the target's authority wins over any Host sent,
        # and a proxy forwards a Host generated from it.
        self._path = origin
        req.requestHeaders.setRawHeaders(b"host", [authority])
        return None

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # Twisted splits Connection on spaces only, so "close,x" or
        # "x, close" would keep the connection open; RFC 9110 §7.6.1 lists
        # comma-separated tokens.
        close = False
        for value in request.requestHeaders._rawHeaders.get(_CONNECTION, ()):
            if b"close" in (t.strip(b" \t").lower() for t in value.split(b",")):
                close = True
        if version == b"HTTP/1.1" and not close:
            return True
        if close:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    def rawDataReceived(self, data: bytes) -> None:
        super().rawDataReceived(data)
        decoder = self._transferDecoder
        if self.refused or decoder is None or getattr(decoder, "state", None) != "BODY" or not self.requests:
            return
        # A chunk line declared this many more bytes: refuse now what would
        # pass the limit, instead of reading toward it until the body
        # deadline (a client may declare a huge chunk and send it slowly).
        limit = self.site.limits.max_request_body
        promised = (self.requests[-1]._bodyBytes or 0) + getattr(decoder, "length", 0)
        if promised > limit:
            self.refuse(413, b"Content Too Large", f"request body over {limit} bytes")

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._disarm()
        self._phase = _BUSY
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Set before Twisted replays pipelined bytes through dataReceived.
        self._phase = _IDLE
        self._expectRequestLine = True
        super().requestDone(request)
