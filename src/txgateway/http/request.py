# -*- test-case-name: tests.test_channel -*-
"""
The request object twisted.web builds for each request on a gateway channel.

It adds no default Content-Type, counts the body as it reads it (413 as soon
as the count passes C{server.max_request_body}), says once when its response
is done or its client left (L{GatewayRequest.whenDone}), and skips what
twisted.web's C{process} does that a proxy would only undo.

Private Twisted names used here (held to stock Twisted by tests/test_channel.py):
C{Request._parsePOSTFormSubmission} (off: a proxy never reads form fields),
C{Request._handleStar}, C{Headers._rawHeaders}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import getChildForRequest

from txgateway.http.errors import errorBody
from txgateway.http.headers import H_DATE as _DATE

__all__ = ["GatewayRequest"]

log = Logger(namespace="txgateway")


class GatewayRequest(server.Request):
    """A request that adds no default Content-Type and knows when its client left."""

    defaultContentType = None
    # A proxy never reads form fields; parsing a 10 MiB multipart body for
    # request.args would only cost CPU a client chooses to make us spend.
    _parsePOSTFormSubmission = False
    gone = False
    context: Any = None
    _bodyBytes: int | None = None  # body bytes read so far; set once the head is in (gotLength)
    bodyStream: Any = None  # an HTTP/2 body still arriving after the request was dispatched (http/h2body.py)

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
