# -*- test-case-name: tests.test_protection -*-
"""
Coalescing in the forward path: identical requests in flight at once go upstream once.

L{CoalescingForwarder} keys each request that may share an answer
(L{mayCoalesce}: GET and HEAD, and POST on routes with C{idempotent_post})
by method, upstream path, query, the configured headers and a hash of the
body (L{coalescingKey}), and runs one fetch per key at a time through a
L{SingleFlight}; a request that joined another's flight has C{coalesced:
true} in its access-log line.  The flight reads the answer whole (at most
C{coalesce_max_body}, 1 MiB) and every caller gets an in-memory exchange of
its own over the same bytes; per-client headers (C{X-Request-Id}, C{Via},
CORS) are added per client by the forward sequence as for any answer.

Coalescing costs nothing when nobody joins: if the request that started a
flight is still its only caller when the answer's head arrives, the answer
streams to it as any answer would, unbuffered.  The fetch of a flight is made
with the context of the caller who started it; a caller who goes away leaves the flight, and the fetch is cancelled
only when every caller has gone.  An answer that sets a cookie is not
shared, nor one over the bound (a download, a stream): it goes, streamed as
any answer, to the caller who started the flight (from its first byte, when
the bound was found only while reading a body of no announced length), and
any other caller fetches its own (one extra backend call per joined caller,
for such answers only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IResponse
from zope.interface import implementer

from txgateway.attempts import discard
from txgateway.concurrency.coalescing import CoalescedResponse, SingleFlight, coalescingKey, mayCoalesce
from txgateway.interfaces import IForwarder
from txgateway.protection.memory import BodyTooLarge, MemoryExchange, MemoryResponse, readWhole

if TYPE_CHECKING:
    from txgateway.concurrency.specs import CoalesceSpec
    from txgateway.context import RequestContext

__all__ = ["MAX_BODY", "CoalescingForwarder"]

#: The largest answer held in memory to be shared (the cache's object limit).
MAX_BODY = 1 << 20

# Fields made afresh for each copy, or that belong to one connection.
_NOT_COPIED = frozenset((b"content-length", b"transfer-encoding", b"connection", b"keep-alive"))


class _Own:
    """An answer for the request that fetched it only (unread); the other callers fetch their own."""

    __slots__ = ("context", "exchange")

    def __init__(self, context: RequestContext | None, exchange: Any) -> None:
        self.context = context
        self.exchange = exchange


@implementer(IForwarder)
class CoalescingForwarder:
    """A route's identical requests in flight at once share one fetch of C{inner}."""

    def __init__(self, inner: IForwarder, spec: CoalesceSpec, idempotentPost: bool, upstream: str,
                 onJoin: Callable[[], None] | None = None, maxBody: int = MAX_BODY) -> None:
        self.inner = inner
        self.keyHeaders = spec.headers
        self.idempotentPost = idempotentPost
        self.upstream = upstream
        self.onJoin = onJoin
        self.maxBody = maxBody
        self.flight: SingleFlight[CoalescedResponse | _Own] = SingleFlight()

    async def fetch(self, context: RequestContext, method: bytes | None = None,
                    extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Any:
        verb = context.method
        if method is not None or extraHeaders or not mayCoalesce(verb, True, self.idempotentPost):
            return await self.inner.fetch(context, method, extraHeaders)
        request = context.request
        body = b""
        if verb == b"POST" and request.content is not None:
            request.content.seek(0)
            body = request.content.read()
            request.content.seek(0)
        pairs = [(k, v) for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        key = coalescingKey(verb, context.upstreamPath.encode(), context.query or b"", pairs, self.keyHeaders, body)
        flights = self.flight.flights
        d = self.flight.call(key, lambda: ensureDeferred(self._work(context, key)))
        if self.flight.flights == flights:
            context.note("coalesced", True)  # the access log: answered by another request's fetch
            if self.onJoin is not None:
                self.onJoin()  # it joined a flight another request started
        answer = await d
        if isinstance(answer, _Own):
            if answer.context is context:
                return answer.exchange  # this request's own fetch, streamed as any other
            if context.extra is not None:
                context.extra.pop("coalesced", None)  # not shareable after all: it fetches its own
            return await self.inner.fetch(context)
        context.upstream = context.upstream or self.upstream
        return MemoryExchange(MemoryResponse(answer.code, answer.headers, answer.body))

    async def _work(self, context: RequestContext, key: bytes) -> CoalescedResponse | _Own:
        exchange = await self.inner.fetch(context)
        response = exchange.response
        length = response.length
        if self.flight.waiting(key) == 1 and not getattr(context.request, "gone", False):
            # Nobody joined while the head was awaited: the answer streams to
            # its request as any other would, with no buffering (later
            # identical requests start a flight of their own).
            return _Own(context, exchange)
        if response.headers.hasHeader(b"set-cookie") or (isinstance(length, int) and length > self.maxBody):
            # Not to be shared (a cookie), or not to be held in memory: the
            # request that made it gets it, unread; the others fetch their own.
            return self._own(context, exchange, response)
        try:
            body = await readWhole(response, self.maxBody)
        except BodyTooLarge as e:
            # A body of no announced length outgrew the bound (a stream, a
            # download): the request that made it gets it whole, from the start.
            return self._own(context, exchange, e.response)
        except BaseException:
            exchange.finish(False, False)
            raise
        exchange.finish(True, False)
        headers = tuple((k, v) for k, vs in response.headers.getAllRawHeaders() if k.lower() not in _NOT_COPIED
                        for v in vs)
        return CoalescedResponse(response.code, headers, body)

    @staticmethod
    def _own(context: RequestContext, exchange: Any, response: IResponse) -> _Own:
        if getattr(context.request, "gone", False):
            discard(response)
            exchange.finish(False, True)
            return _Own(None, None)
        return _Own(context, _Replaced(exchange, response))


class _Replaced:
    """An exchange whose response is given anew (its body partly read, then the rest)."""

    __slots__ = ("inner", "response")

    def __init__(self, inner: Any, response: IResponse) -> None:
        self.inner = inner
        self.response = response

    def finish(self, complete: bool, clientGone: bool = False) -> None:
        self.inner.finish(complete, clientGone)
