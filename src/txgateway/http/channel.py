"""
The listening side: twisted.web's Site, Channel and Request, bounded.

twisted.web reads whatever a client sends; a gateway must cap the request
head (431) and body (413) before anything is buffered, put deadlines on how
long a client may take to send them (408), refuse request heads a backend
could read differently from us (400, RFC 9112), count connections per client
address and answer with its own small JSON errors instead of Twisted's bare
or HTML pages.

Everything here happens before a request reaches the resource tree, so a
refused request never costs a route, a filter or an upstream connection.

Private Twisted names used here (held to stock Twisted by tests/test_channel.py):
C{twisted.web.http._parseRequestLine}; C{HTTPChannel._transferDecoder} and
its C{_ChunkedTransferDecoder.state} / C{.length} (the size a chunk line
declared, to answer 413 before the chunk is sent); C{HTTPChannel}'s
C{_receivedHeaderCount}, C{_buffer} (LineReceiver), C{_abortingCall},
C{_handleStar}; C{Headers._rawHeaders}.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http import _parseRequestLine  # type: ignore[attr-defined]
from twisted.web.http_headers import Headers
from twisted.web.resource import getChildForRequest

from txgateway.http.sending import pendingBytes

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from txgateway.config import ServerConfig
    from txgateway.http.sending import WriteBatcher
    from txgateway.observe import Metrics

log = Logger(namespace="txgateway")


def errorBody(status: int, message: str, requestId: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"error": message, "status": status}
    if requestId is not None:
        body["request_id"] = requestId
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def _rawResponse(status: int, reason: bytes, message: str, requestId: str | None = None) -> bytes:
    body = errorBody(status, message, requestId)
    # The id is one the gateway made or accepted (plain characters only).
    idLine = b"X-Request-ID: %s\r\n" % requestId.encode("ascii") if requestId is not None else b""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s"
            b"Connection: close\r\n\r\n%s" % (status, reason, len(body), idLine, body))


# What the Site calls for a request the channel refused: (client address,
# method, request-target, the request's headers so far or None, status)
# -> the request id to answer with, after writing its access-log line.
RefusalHook = Callable[[str, bytes, bytes, "Headers | None", int], "str | None"]


# RFC 3986 §3.2.2 host (reg-name restricted to unreserved characters: nothing
# a log line, a header or a backend's router could read two ways) and §3.2.3
# port.
_AUTHORITY = re.compile(rb"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._~-]+))(?::([0-9]{0,5}))?")


def validAuthority(value: bytes) -> bool:
    """
    Whether C{value} is a usable C{host[:port]} (RFC 9112 §3.2, RFC 3986 §3.2.2).

    An empty host is refused: an C{http} URI must name one (RFC 9110 §4.2.1).
    """
    m = _AUTHORITY.fullmatch(value)
    if m is None:
        return False
    literal, _, port = m.groups()
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    return not port or int(port) <= 65535


def splitAbsoluteForm(target: bytes) -> tuple[bytes, bytes]:
    """
    C{(authority, origin-form)} of an absolute-form request-target (RFC 9112 §3.2.2).

    Raises L{ValueError} for a scheme other than http(s), user information
    (RFC 9110 §4.2.4) or an invalid authority.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise ValueError("only http and https absolute-form targets are served")
    end = len(rest)
    for stop in (b"/", b"?"):
        i = rest.find(stop)
        if i != -1 and i < end:
            end = i
    authority, origin = rest[:end], rest[end:]
    if b"@" in authority:
        raise ValueError("user information in the request-target")
    if not validAuthority(authority):
        raise ValueError("invalid authority in the request-target")
    if not origin.startswith(b"/"):
        origin = b"/" + origin
    return authority, origin


class GatewayRequest(server.Request):
    """A request that adds no default Content-Type and knows when its client left."""

    defaultContentType = None
    # A proxy never reads form fields; parsing a 10 MiB multipart body for
    # request.args would only cost CPU a client chooses to make us spend.
    _parsePOSTFormSubmission = False
    gone = False
    context: Any = None
    _bodyBytes: int | None = None  # body bytes read so far; set once the head is in (gotLength)

    def gotLength(self, length: int | None) -> None:
        self._bodyBytes = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        channel: Any = self.channel
        if channel is None or channel.refused:
            return
        limit = channel.site.limits.max_request_body
        n = self._bodyBytes = (self._bodyBytes or 0) + len(data)
        if n > limit:
            channel.refuse(413, b"Content Too Large", f"request body over {limit} bytes")
            return
        super().handleContentChunk(data)

    _onDone: tuple[Callable[..., None], tuple[Any, ...]] | None = None

    def whenDone(self, hook: Callable[..., None], *args: Any) -> None:
        """
        Call C{hook(result, *args)} once: C{result} is None when the response
        is finished, the reason (a Failure) when the client left first.

        What C{notifyFinish().addBoth(hook, *args)} does, as one plain call
        instead of a Deferred made, chained and fired for every request.
        """
        self._onDone = (hook, args)

    def _done(self, result: Failure | None) -> None:
        onDone = self._onDone
        if onDone is not None:
            self._onDone = None
            onDone[0](result, *onDone[1])

    def finish(self) -> None:
        super().finish()
        self._done(None)

    def connectionLost(self, reason: Any) -> None:
        self.gone = True
        super().connectionLost(reason)
        self._done(reason)

    def process(self) -> None:
        """
        twisted.web's C{process}, minus what the gateway would only undo.

        No C{Server} header: the gateway does not advertise its software, so
        this is the one place that would have set it (nothing downstream has
        to remove it again).  C{Date} comes from the Site,
        formatted once a second rather than once a response.  The path is not
        split into unquoted segments (C{postpath}) nor C{prepath} copied:
        the root routes on the whole raw path in one step (see
        L{txgateway.gateway.GatewayRoot}) and no resource reads them.
        """
        site = self.site = self.channel.site  # type: ignore[attr-defined]
        self.responseHeaders._rawHeaders[_DATE] = [site.httpDate()]
        if self.path == b"*":
            self._handleStar()  # type: ignore[no-untyped-call]
            return
        self.prepath = []
        self.postpath = [self.path[1:]]
        try:
            self.render(getChildForRequest(site.resource, self))
        except BaseException:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Any) -> None:
        # Never Twisted's HTML traceback page: log, then a JSON 500.
        log.failure("unhandled error handling a request", reason)
        if self.gone or self.finished:
            return None
        if not self.startedWriting:
            body = errorBody(500, "internal gateway error")
            self.setResponseCode(500)
            self.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
            self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
            self.write(body)
            self.finish()
        else:
            self.channel.transport.abortConnection()  # type: ignore[union-attr]
        return None


def storedName(name: bytes) -> bytes:
    """The key twisted.web's Headers files C{name} under (its own spelling rules, whatever the version)."""
    h = Headers()
    h.addRawHeader(name, b"")
    return next(iter(h.getAllRawHeaders()))[0]


_DATE = storedName(b"Date")
_HOST = storedName(b"Host")
_CONNECTION = storedName(b"Connection")


# RFC 9110 §5.6.2 token characters, the only ones a field name may use.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Fields that give a request a body: such a request takes the line-by-line path.
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))


# What the channel is reading or doing, for the deadlines.
_HEAD, _BODY, _BUSY, _IDLE = "head", "body", "busy", "idle"


class GatewayChannel(http.HTTPChannel):
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
    _peerHost: str | None = None
    _localAddress: Any = None
    _peerAddress: Any = None
    _idleCall: IDelayedCall | None = None
    _idleFrom = 0.0
    _secure: bool | None = None
    _validHost: bytes | None = None
    _writeCall: IDelayedCall | None = None
    _writePending: int | None = None

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
        self._stopWriteTimer()
        idle, self._idleCall = self._idleCall, None
        if idle is not None and idle.active():
            idle.cancel()
        self.site.connectionClosed(self)
        super().connectionLost(reason)

    # -- the write timeout (server.timeouts.write)

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: the client is not taking what we
        send.  Twisted pauses the response's producer (the upstream), which
        then waits as long as the client does; a client that never reads
        again would hold both connections for ever.  From now on the
        response owes progress within C{timeouts.write}.
        """
        super().pauseProducing()
        seconds = self.site.limits.timeouts.write
        if self._writeCall is None and seconds and seconds > 0 and self.transport is not None:
            self._writePending = pendingBytes(self.transport)
            self._writeCall = self.site.reactor.callLater(seconds, self._writeStalled, seconds)

    def resumeProducing(self) -> None:
        self._stopWriteTimer()
        super().resumeProducing()

    def _stopWriteTimer(self) -> None:
        call, self._writeCall = self._writeCall, None
        if call is not None and call.active():
            call.cancel()

    def _writeStalled(self, seconds: float) -> None:
        self._writeCall = None
        transport = self.transport
        if transport is None:
            return
        pending = pendingBytes(transport)
        before, self._writePending = self._writePending, pending
        if pending is not None and before is not None and pending < before:
            # Slow, but reading: the socket took some since the last look.
            self._writeCall = self.site.reactor.callLater(seconds, self._writeStalled, seconds)
            return
        log.warn("client {peer} read nothing of its response for {seconds:g}s (server.timeouts.write); "
                 "closing its connection and the upstream's", peer=self._peerHost or "?", seconds=seconds)
        self.site.metrics.writeTimeouts.inc()
        # The request sees the connection lost, as when a client leaves: the
        # forward is cancelled and its upstream connection closed.
        transport.abortConnection()  # type: ignore[attr-defined]

    # -- the idle timeout (server.timeouts.idle), kept lazily

    def setTimeout(self, period: float | None) -> float | None:  # type: ignore[override]
        """
        TimeoutMixin's idle timeout, with one timer kept across requests.

        twisted.web turns the idle timeout off while a request is handled and
        on again once it is answered: a timer cancelled and another made for
        every request.  Here turning it off only records that; the timer
        stays, and when it fires it looks at when the connection was last
        active (and whether the timeout is on) before closing anything,
        setting itself again for what is left.
        """
        previous = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        if period is not None:
            self._idleFrom = now = self.site.reactor.seconds()
            call = self._idleCall
            if call is None:
                self._idleCall = self.callLater(period, self._idleCheck)
            elif call.getTime() > now + period:
                call.reset(period)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None and self._idleCall is not None:
            self._idleFrom = self.site.reactor.seconds()

    def _idleCheck(self) -> None:
        self._idleCall = None
        period = self.timeOut
        if period is None:
            return  # a request is being handled; setTimeout sets a timer again when it is done
        now = self.site.reactor.seconds()
        due = self._idleFrom + period
        if now >= due:
            self.timeoutConnection()
        else:
            self._idleCall = self.callLater(due - now, self._idleCheck)

    def getHost(self) -> Any:
        # Every Request asks for it; the TCP transport answers with a
        # getsockname(2) each time.  A connection's own address never changes.
        host = self._localAddress
        if host is None:
            host = self._localAddress = super().getHost()
        return host

    def getPeer(self) -> Any:
        # Every Request asks for it; the TCP transport builds a new address
        # object each time.  A connection's peer never changes.
        peer = self._peerAddress
        if peer is None:
            peer = super().getPeer()
            if self.transport is not None:
                self._peerAddress = peer
        return peer

    def isSecure(self) -> bool:
        # Asked twice a request (twisted.web, X-Forwarded-Proto), each time a
        # zope interface adaptation of the transport; a connection is TLS or
        # not for its whole life.
        secure = self._secure
        if secure is None:
            secure = bool(super().isSecure())
            if self.transport is not None:
                self._secure = secure
        return secure

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
        self.transport.write(_rawResponse(status, reason, message, requestId))
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
        limits = self.site.limits
        if len(data) > limits.max_header_bytes or not self.persistent or self.refused:
            return False
        lines = data[:-4].split(b"\r\n")
        first = lines[0]
        if not first or len(lines) - 1 > self.maxHeaders or b"\n" in first:
            return False
        fields = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or not _TCHAR.issuperset(name) or name.lower() in _FRAMING:
                return False
            value = value.strip(b" \t")
            if b"\x00" in value or b"\r" in value or b"\n" in value:
                return False
            fields.append((name, value))
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
        parts = line.split(b" ")
        if len(parts) != 3:
            self.refuse(400, b"Bad Request", "malformed request line")
            return False
        target = parts[1]
        limit = self.site.limits.max_uri_bytes
        if len(target) > limit:
            self.refuse(414, b"URI Too Long", f"request-target over {limit} bytes")
            return False
        if not target.isascii() or b"\x7f" in target:
            # RFC 3986: a URI is ASCII; DEL and bytes above are never valid.
            self.refuse(400, b"Bad Request", "non-ASCII byte in the request-target")
            return False
        if b"#" in target:
            # RFC 9112 §3.2: no fragment; a backend that cuts at '#' would
            # see another path than the one we routed.
            self.refuse(400, b"Bad Request", "fragment in the request-target")
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


class _TooManyConnections(Protocol):
    """Says why, then hangs up: this client already holds its share of sockets."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_rawResponse(503, b"Service Unavailable", "too many connections from this address"))
        self.transport.loseConnection()


class GatewaySite(server.Site):
    """
    A Site that swaps its resource tree atomically on reload and counts
    connections, in total and per client address.
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(self, resource: Any, limits: ServerConfig, metrics: Metrics, reactor: Any = None,
                 writes: WriteBatcher | None = None, onRefusal: RefusalHook | None = None) -> None:
        from txgateway.middleware import AddressSet  # middleware imports this module

        super().__init__(resource, timeout=limits.timeouts.idle, reactor=reactor)
        self.limits = limits
        # Gives a refused request (400, 408, 413, 414, 431) its request id
        # and access-log line: it never reaches the resource tree that does.
        self.onRefusal = onRefusal
        self.writes = writes
        self.metrics = metrics
        self.channels: set[GatewayChannel] = set()
        self.perAddress: dict[str, int] = {}
        self._trusted = AddressSet(limits.trusted_proxies)
        self._dateSecond = -1
        self._date = b""
        self._capped: set[str] = set()
        self._allClosed: list[Deferred[None]] = []

    def httpDate(self) -> bytes:
        """The C{Date} of a response sent now (RFC 9110 §6.6.1: whole seconds)."""
        now = int(self.reactor.seconds())
        if now != self._dateSecond:
            self._dateSecond = now
            self._date = http.datetimeToString(now)
        return self._date

    def buildProtocol(self, addr: Any) -> Any:
        cap = self.limits.max_connections_per_ip
        host = getattr(addr, "host", None)
        if cap and isinstance(host, str) and self.perAddress.get(host, 0) >= cap and host not in self._trusted:
            if host not in self._capped:
                # Once per episode, not once per refused socket.
                self._capped.add(host)
                log.warn("{peer} holds {n} connections (server.max_connections_per_ip); refusing more",
                         peer=host, n=cap)
            self.metrics.observeRefusal(503)
            return _TooManyConnections()
        return super().buildProtocol(addr)

    def connectionOpened(self, channel: GatewayChannel) -> None:
        self.channels.add(channel)
        self.metrics.activeConnections.inc()
        peer = getattr(channel.transport.getPeer(), "host", None) if channel.transport is not None else None
        if isinstance(peer, str):
            channel._peerHost = peer
            self.perAddress[peer] = self.perAddress.get(peer, 0) + 1

    def connectionClosed(self, channel: GatewayChannel) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self.metrics.activeConnections.dec()
            peer = channel._peerHost
            if peer is not None:
                n = self.perAddress.get(peer, 0) - 1
                if n > 0:
                    self.perAddress[peer] = n
                else:
                    self.perAddress.pop(peer, None)
                if n < self.limits.max_connections_per_ip:
                    self._capped.discard(peer)
        if not self.channels and self._allClosed:
            waiters, self._allClosed = self._allClosed, []
            for d in waiters:
                d.callback(None)

    def whenAllClosed(self) -> Deferred[None]:
        """
        Fires once every client connection is closed.  The drain waits for
        this, not just for requests to finish: a response still in the
        socket buffer when the reactor stops would be cut off.
        """
        d: Deferred[None] = Deferred()
        if not self.channels:
            d.callback(None)
        else:
            self._allClosed.append(d)
        return d

    def log(self, request: Any) -> None:
        # The gateway writes its own access log (observe.AccessLog).
        pass
