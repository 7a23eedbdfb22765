# -*- test-case-name: tests.test_protection -*-
"""
Micro-batching in the forward path: many clients' JSON bodies, one backend call.

L{BatchingForwarder} takes a route's POSTs with a JSON body, hands each
decoded body to the route's L{txgateway.concurrency.batching.MicroBatcher}
and answers each client with its own item of the batch answer (200,
C{application/json}).  Anything else on the route (a GET, another content
type) passes to the inner forwarder unbatched.

A batch is one unit of backend work: it goes through the rest of the chain
(admission, then the attempt loop) once, as C{POST target_path} with the
items encoded by L{encodeBatch} (a bare JSON array, or C{{"instances":
[...]}}), C{Content-Type} and C{Accept: application/json}, an
C{X-Request-Id} of its own (C{batch-<n>}) and none of the clients' headers
(they differ per item, and each client was authenticated already).  It
queues in the highest priority class of its items.  Each client's access-log
line has C{batch_id} (the batch call's C{X-Request-Id}) and C{batch_size},
and C{queue_ms} when the batch waited for an admission permit.

An answer that is not a 2xx, not JSON, or has the wrong number of items
fails every client of that batch with 502 and the reason, unless the batch
call itself failed as the attempt loop reports it (a shed batch stays 503
with C{Retry-After}, a timeout 504); with C{on_error: single} each client's
own request is sent as it came instead.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.attempts import UpstreamFailure, discard
from txgateway.concurrency.batching import FAILED, BatchError, MicroBatcher, decodeBatch, encodeBatch
from txgateway.context import RequestContext
from txgateway.deadlines import withDeadline
from txgateway.http.interim import INTERIM
from txgateway.interfaces import IForwarder
from txgateway.protection.memory import MemoryExchange, MemoryResponse, readWhole

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.concurrency.specs import BatchSpec, PrioritySpec

__all__ = ["BatchingForwarder", "isJSON"]

_JSON = ((b"Content-Type", b"application/json"),)
#: The most a batch answer may weigh per item before it is refused as a bad response.
_PER_ITEM = 1 << 20


def isJSON(contentType: bytes | None) -> bool:
    """C{application/json} or any C{+json} type, parameters ignored."""
    if not contentType:
        return False
    kind = contentType.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or kind.endswith(b"+json")


class _Item:
    __slots__ = ("abandoned", "context", "value")

    def __init__(self, context: RequestContext, value: Any) -> None:
        self.context = context
        self.value = value
        self.abandoned = False  # its client went away or timed out: a late single answer is ended here


class _Single:
    """A client's own exchange, fetched one by one after a batch failed (C{on_error: single})."""

    __slots__ = ("exchange",)

    def __init__(self, exchange: Any) -> None:
        self.exchange = exchange


class _BatchRequest:
    """The outgoing request of one batch call, as the attempt loop reads a client's request."""

    method = b"POST"

    def __init__(self, path: bytes, body: bytes, requestId: bytes) -> None:
        self.uri = path
        self.content = io.BytesIO(body)
        self.requestHeaders = Headers({b"content-type": [b"application/json"], b"accept": [b"application/json"],
                                       b"x-request-id": [requestId]})
        self.gone = False

    def isSecure(self) -> bool:
        return False


@implementer(IForwarder)
class BatchingForwarder:
    """A batching route's way upstream; see the module docstring."""

    def __init__(self, inner: IForwarder, spec: BatchSpec, clock: IReactorTime, timeout: float,
                 priority: PrioritySpec | None = None,
                 observe: Callable[[int, float], None] | None = None,
                 onFailure: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        self.spec = spec
        self.clock = clock
        self.timeout = timeout
        self.priority = priority
        self._ids = itertools.count(1)
        self.batcher = MicroBatcher(self._send, clock, maxSize=spec.max_size, maxWait=spec.max_wait,
                                    onError=spec.on_error,
                                    sendOne=self._sendOne if spec.on_error == "single" else None,
                                    observe=observe, onFailure=onFailure)

    async def fetch(self, context: RequestContext, method: bytes | None = None,
                    extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Any:
        request = context.request
        if method is not None or context.method != b"POST" or not isJSON(context.header(b"content-type")):
            return await self.inner.fetch(context, method, extraHeaders)
        content = request.content
        body = b"" if content is None else (content.seek(0), content.read())[1]
        try:
            value = json.loads(body)
        except ValueError:
            context.outcome = "bad_json"
            raise UpstreamFailure(400, "bad_json", message="bad request: a batching route needs a JSON body") from None
        item = _Item(context, value)
        d = withDeadline(self.batcher.submit(item), self.timeout, self.clock)
        try:
            result = await d
        except DeferTimeout:
            item.abandoned = True
            context.outcome = "timeout"
            raise UpstreamFailure(504, "timeout") from None
        except BatchError as e:
            if isinstance(e.cause, UpstreamFailure):
                context.outcome = e.cause.reason
                raise UpstreamFailure(e.cause.status, e.cause.reason, e.cause.retryAfter) from None
            context.outcome = "batch_" + e.kind
            raise UpstreamFailure(502, context.outcome, message=f"bad gateway: {e.reason}") from None
        except BaseException:
            item.abandoned = True  # the client went away
            raise
        if isinstance(result, _Single):
            return result.exchange
        return MemoryExchange(MemoryResponse(200, _JSON, json.dumps(result, separators=(",", ":")).encode()))

    def flush(self) -> None:
        """Send what waits now (shutdown)."""
        self.batcher.flush()

    # -- the batch call

    def _send(self, items: list[_Item]) -> Deferred[list[Any]]:
        return ensureDeferred(self._sendBatch(items))

    async def _sendBatch(self, items: list[_Item]) -> list[Any]:
        # This coroutine runs in a copy of whichever client's context filled
        # the batch: interim responses (1xx) of the batch call are no one client's.
        INTERIM.set(None)
        spec = self.spec
        first = self._leading(items)
        body = encodeBatch([i.value for i in items], spec.envelope)
        n = next(self._ids)
        batchId = f"batch-{n}"
        for i in items:  # each client's access-log line says which batch it went in, and its size
            i.context.note("batch_id", batchId)
            i.context.note("batch_size", len(items))
        path = spec.target_path.encode()
        request = _BatchRequest(path, body, batchId.encode())
        ctx = RequestContext(request, self.clock.seconds(), f"batch-{n}", first.clientIP,  # type: ignore[arg-type]
                             first.peerIP, b"POST", first.host, path.decode(), None)
        ctx.route = first.route
        ctx.identity = first.identity
        ctx.upstreamPath = spec.target_path
        try:
            exchange = await self.inner.fetch(ctx)
        finally:
            waited = ctx.extra.get("queue_ms") if ctx.extra is not None else None
            if waited is not None:  # the batch's wait for its permit was each of its clients'
                for i in items:
                    i.context.note("queue_ms", waited)
        response = exchange.response
        try:
            answer = await readWhole(response, _PER_ITEM * len(items))
        except Exception as e:
            exchange.finish(False, False)
            raise BatchError(f"batch answer could not be read: {e}", FAILED) from None
        exchange.finish(True, False)
        for i in items:
            i.context.upstream = ctx.upstream
            i.context.target = ctx.target
            i.context.attempts = ctx.attempts
        if not 200 <= response.code < 300:
            raise BatchError(f"batch call to {spec.target_path} answered {response.code}", FAILED)
        return decodeBatch(answer, spec.envelope, len(items))

    def _leading(self, items: list[_Item]) -> RequestContext:
        """The item whose priority class is highest: the batch queues in it."""
        priority = self.priority
        if priority is None or len(priority.classes) < 2:
            return items[0].context
        classes = priority.classes

        def rank(i: _Item) -> int:
            route = i.context.route
            return classes.index(priority.classOf(route.name if route is not None else None, i.context.identity))

        return min(items, key=rank).context

    def _sendOne(self, item: _Item) -> Deferred[_Single]:
        return ensureDeferred(self._fetchOne(item))

    async def _fetchOne(self, item: _Item) -> _Single:
        exchange = await self.inner.fetch(item.context)
        if item.abandoned:
            # Nobody will relay it: end it here, or its lease and permit would stay taken.
            discard(exchange.response)
            exchange.finish(False, True)
        return _Single(exchange)
