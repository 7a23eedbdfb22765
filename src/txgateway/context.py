# -*- test-case-name: tests.test_forwarder -*-
"""
The per-request state that every stage of the request path reads and adds to.

One L{RequestContext} is made per request, with slots only, so that the
access log, metrics, retries and filters share one small object instead of
each stashing attributes on the Twisted request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from txgateway.http.errors import errorBody
from txgateway.http.grpcstatus import grpcAnswer, isGrpc, messageOf

if TYPE_CHECKING:
    from twisted.web.server import Request

    from txgateway.routing import CompiledRoute

__all__ = ["LocalResponse", "RequestContext", "jsonResponse", "respond"]


class LocalResponse:
    """An answer the gateway gives itself, without reaching a backend."""

    __slots__ = ("code", "headers", "body")

    def __init__(self, code: int, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"") -> None:
        self.code = code
        self.headers = headers if headers is not None else []
        self.body = body

    def __repr__(self) -> str:
        return f"<LocalResponse {self.code} {self.body[:60]!r}>"


class RequestContext:
    """
    What the gateway knows about one request as it moves through the chain.

    C{path} is the normalised path that routing matched and that (after the
    route's strip/rewrite) is forwarded: one view of the path, never two.
    """

    __slots__ = (
        "request", "started", "requestId", "clientIP", "peerIP", "method", "host", "path", "query",
        "route", "upstreamPath", "identity", "upstream", "target", "attempts", "targetsTried",
        "cacheStatus", "status", "bytesOut", "responseHeaders", "forwardHeaders", "removeHeaders",
        "traceId", "spanId", "traceFlags", "tracestate", "outcome", "bodySent", "extra", "onGone",
        "trace", "forwarded", "answered",
        "upstreamChoice", "grpcStatus",
    )

    def __init__(self, request: Request, started: float, requestId: str, clientIP: str, peerIP: str,
                 method: bytes, host: str, path: str, query: bytes | None) -> None:
        self.request = request
        self.started = started
        self.requestId = requestId
        self.clientIP = clientIP
        self.peerIP = peerIP
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.route: CompiledRoute | None = None
        self.upstreamPath = path
        self.identity: str | None = None
        self.upstream: str | None = None
        self.target: str | None = None
        # Why a split route chose its upstream (override, sticky, weighted); None on other routes.
        self.upstreamChoice: str | None = None
        self.attempts = 0
        self.targetsTried: list[str] = []
        self.cacheStatus: str | None = None
        self.status = 0
        self.bytesOut = 0
        # Headers every response to this request carries (rate-limit, CORS, Cache-Status ...).
        self.responseHeaders: list[tuple[bytes, bytes]] = []
        # Headers added to (or replacing those of) the upstream request (identity, ...).
        self.forwardHeaders: list[tuple[bytes, bytes]] = []
        # Request headers never forwarded (credentials, spoofed identity ...).
        self.removeHeaders: list[bytes] = []
        self.traceId: str | None = None
        self.spanId: str | None = None
        self.traceFlags = "01"
        self.tracestate: bytes | None = None
        self.outcome: str | None = None
        self.bodySent = False
        # Access-log fields only some requests have (issue 24: queue_ms,
        # batch_id, batch_size, coalesced), set with L{note}: written after
        # the fixed fields, and absent (no allocation) for every other request.
        self.extra: dict[str, Any] | None = None
        # Called, in order, when the client goes away before its response is
        # finished.  None when nothing dispatches them (a request that did
        # not come through GatewayRoot): then use request.notifyFinish().
        self.onGone: list[Callable[[Any], object]] | None = None
        # The server span (L{txgateway.observe.tracing.Span}) when tracing is on.
        self.trace: Any = None
        # Clock times: the first attempt sent upstream, the answer's head
        # received (-1.0 until then): the processing-time SLIs.
        self.forwarded = -1.0
        self.answered = -1.0
        # A gRPC call's grpc-status (the target's, or the gateway's own error), for the access log and metrics.
        self.grpcStatus: int | None = None

    def note(self, field: str, value: Any) -> None:
        """Add a field (a JSON value) to this request's access-log line."""
        extra = self.extra
        if extra is None:
            extra = self.extra = {}
        extra[field] = value

    @property
    def headers(self) -> Any:
        """The client's request headers (a L{twisted.web.http_headers.Headers})."""
        return self.request.requestHeaders

    def header(self, name: bytes) -> bytes | None:
        """The first value of a request header, or None."""
        values = self.request.requestHeaders.getRawHeaders(name)
        return values[0] if values else None


def jsonResponse(context: RequestContext, status: int, message: str,
                 headers: Sequence[tuple[bytes, bytes]] = (), **extra: Any) -> LocalResponse:
    """A gateway-made JSON error answer, carrying the request id."""
    return LocalResponse(status, [(b"Content-Type", b"application/json"), *headers],
                         errorBody(status, message, context.requestId, **extra))


# Reason phrases twisted.web does not know.
_REASONS = {421: b"Misdirected Request", 422: b"Unprocessable Content", 425: b"Too Early", 426: b"Upgrade Required",
            428: b"Precondition Required", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
            451: b"Unavailable For Legal Reasons", 508: b"Loop Detected", 511: b"Network Authentication Required"}


def respond(context: RequestContext, response: LocalResponse) -> None:
    """Write a gateway-made answer (error, 429, preflight, cache hit...)."""
    request = context.request
    if getattr(request, "gone", False) or request.finished:
        return
    trailers = None
    if response.code >= 400 and isGrpc(context.header(b"content-type")):
        response, trailers = _grpcError(context, response)
    request.setResponseCode(response.code, _REASONS.get(response.code))
    headers = request.responseHeaders
    for k, v in response.headers:
        headers.addRawHeader(k, v)
    headers.setRawHeaders(b"X-Request-ID", [context.requestId.encode()])
    for k, v in context.responseHeaders:
        headers.addRawHeader(k, v)
    if response.code != 204:  # RFC 9110 8.6: a 204 carries no Content-Length
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(response.body)])
    if response.body and request.method != b"HEAD":
        context.bytesOut += len(response.body)
        request.write(response.body)
    if trailers is not None:
        request.channel.writeTrailers(trailers)  # type: ignore[attr-defined]  # an HTTP/2 stream (see _grpcError)
    request.finish()


def _grpcError(context: RequestContext, response: LocalResponse) -> tuple[LocalResponse, Any]:
    """
    The gateway's own error answer to a gRPC call, as gRPC says it: HTTP
    200, no message, C{grpc-status} and C{grpc-message} in the trailers
    (in the head for a client that cannot take trailers).  Headers a client
    acts on (Retry-After, WWW-Authenticate) stay.
    """
    fields = grpcAnswer(response.code, messageOf(response.code, response.body))
    context.grpcStatus = int(fields[0][1])
    kept = [(k, v) for k, v in response.headers if k.lower() in (b"retry-after", b"www-authenticate")]
    headers = [(b"Content-Type", b"application/grpc"), *kept]
    if getattr(getattr(context.request, "channel", None), "writeTrailers", None) is None:
        return LocalResponse(200, headers + fields), None
    return LocalResponse(200, headers), fields
