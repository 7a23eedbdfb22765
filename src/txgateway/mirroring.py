# -*- test-case-name: tests.test_canary_flow -*-
"""
Shadow traffic in the forward path: a route's forwarder wrapped so that a
copy of each sampled request goes to the mirror upstream (issue 23).

L{MirroringForwarder} decorates the route's L{IForwarder} the way the cache
does.  The copy is taken (headers as the primary gets them, the buffered
body up to C{mirror.max_body}) before the primary's producer starts, the
primary's request is handed to its client, and only then is the copy
offered to the route's L{txgateway.canary.mirror.Mirror}, which merely
queues it: it leaves in a later reactor turn.  Nothing here can delay or
fail the primary: a full queue drops the copy, a slow mirror times out on
its own clock.  When the route compares answers, the primary's body is
kept (up to C{max_body}) as it is relayed, and handed to the mirror's
ticket when the exchange finishes.

L{mirrorSender} is the other half: how a copy reaches the mirror upstream,
through that upstream's own L{Cluster} (its balancer, breakers, health,
in-flight count and metrics) and client, with a lease that records the
outcome, never a retry, and no route filter (no rate limit is consumed, no
credential checked: the primary already passed them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.attempts import classify
from txgateway.canary.build import BodyKeeper
from txgateway.canary.interfaces import Answer, MirrorRequest
from txgateway.http.interim import INTERIM
from txgateway.http.replay import BytesProducer
from txgateway.interfaces import IForwarder

if TYPE_CHECKING:
    from twisted.web.iweb import IResponse

    from txgateway.canary.mirror import Mirror, MirrorTicket
    from txgateway.cluster import Cluster
    from txgateway.context import RequestContext
    from txgateway.http.messages import Messages

__all__ = ["MIRROR_HEADER", "MirroringForwarder", "mirrorSender"]

#: Every copy carries it, so the mirror upstream can tell shadow traffic from real traffic.
MIRROR_HEADER = b"X-Txgateway-Mirror"


class _NoEndpoint:
    """Stands for the target while the copy's headers are made: the mirror's own target sets Host later."""

    netloc = b""


_NO_ENDPOINT: Any = _NoEndpoint()


def _requestBody(request: Any, limit: int) -> tuple[bytes, int]:
    """The buffered body when it is at most C{limit} bytes (else b""), and its size; the position is kept at 0."""
    content = getattr(request, "content", None)
    if content is None:
        return b"", 0
    n = getattr(request, "_bodyBytes", None)
    if not isinstance(n, int):
        content.seek(0, 2)
        n = content.tell()
    if n == 0 or n > limit:
        content.seek(0)
        return b"", n
    content.seek(0)
    data = content.read()
    content.seek(0)
    return data, n


@implementer(IForwarder)
class MirroringForwarder:
    """A route's forwarder that also offers each sampled request to the route's mirror."""

    __slots__ = ("inner", "mirror", "messages")

    def __init__(self, inner: Any, mirror: Mirror, messages: Messages) -> None:
        self.inner = inner
        self.mirror = mirror
        self.messages = messages

    def fetch(self, context: RequestContext, method: bytes | None = None,
              extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Deferred[Any]:
        mirror = self.mirror
        if not mirror.sample():
            return ensureDeferred(self.inner.fetch(context, method, extraHeaders))
        copy, size = self._copy(context, method)
        # The primary's request goes out first: the attempt loop hands it to
        # the target's client before its first wait, i.e. within this call.
        primary = ensureDeferred(self.inner.fetch(context, method, extraHeaders))
        if context.upstream == mirror.upstream:
            return primary  # the split chose the mirror's own upstream: nothing to shadow
        ticket = mirror.submit(copy, size, sampled=True)
        if ticket is None:
            return primary
        if mirror.comparer is None:
            ticket.primaryFailed()  # nothing to compare: the ticket only needs closing
            return primary
        return primary.addCallbacks(_Compared, _primaryFailed, callbackArgs=(ticket, mirror.spec.max_body),
                                    errbackArgs=(ticket,))

    def _copy(self, context: RequestContext, method: bytes | None) -> tuple[MirrorRequest, int]:
        body, size = _requestBody(context.request, self.mirror.spec.max_body)
        headers = self.messages.upstreamHeaders(context, _NO_ENDPOINT)
        path = context.upstreamPath.encode("latin-1")
        if context.query is not None:
            path += b"?" + context.query
        return MirrorRequest(method or context.method, path,
                             tuple((k, v) for k, vs in headers.getAllRawHeaders() for v in vs),
                             body, context.requestId), size


def _primaryFailed(failure: Failure, ticket: MirrorTicket) -> Failure:
    ticket.primaryFailed()
    return failure


class _Compared:
    """
    The primary's exchange, unchanged for the forward sequence, that also
    keeps the first C{max_body} bytes of the body as it is relayed and gives
    the mirror's ticket the primary's answer when the exchange finishes.
    """

    def __init__(self, exchange: Any, ticket: MirrorTicket, limit: int) -> None:
        self._exchange = exchange
        self._ticket = ticket
        self._keeper = BodyKeeper(limit)
        self.response = _KeptResponse(exchange.response, self._keeper)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._exchange, name)

    def finish(self, complete: bool, clientGone: bool = False) -> None:
        try:
            self._exchange.finish(complete, clientGone)
        finally:
            response = self._exchange.response
            if complete and response is not None:
                headers = tuple((k, v) for k, vs in response.headers.getAllRawHeaders() for v in vs)
                self._ticket.primaryAnswered(self._keeper.answer(response.code, headers))
            else:
                self._ticket.primaryFailed()


class _KeptResponse:
    """An C{IResponse} whose body also goes to a L{BodyKeeper}; everything else is the response's."""

    def __init__(self, response: IResponse, keeper: BodyKeeper) -> None:
        self._response = response
        self._keeper = keeper

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def deliverBody(self, protocol: Any) -> None:
        self._response.deliverBody(_Tee(protocol, self._keeper))


class _Tee(Protocol):
    """Passes a body through to C{inner}, keeping a copy of its first bytes."""

    def __init__(self, inner: Any, keeper: BodyKeeper) -> None:
        self.inner = inner
        self.keeper = keeper

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.keeper.write(data)
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.inner.connectionLost(reason)


# -- sending a copy to the mirror upstream


class _MirrorView:
    """What the mirror upstream's balancer may read of a copy (hash balancers: client, path, headers)."""

    __slots__ = ("clientIP", "path", "identity", "headers", "requestId")

    def __init__(self, request: MirrorRequest) -> None:
        self.clientIP = ""
        self.path = request.path.partition(b"?")[0].decode("latin-1")
        self.identity = None
        self.requestId = request.requestId
        self.headers = Headers()
        for k, v in request.headers:
            self.headers.addRawHeader(k, v)

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class _Collect(Protocol):
    """Reads a mirror answer's body, the first C{limit} bytes kept; more stops reading (truncated)."""

    def __init__(self, done: Deferred[bool], keeper: BodyKeeper) -> None:
        self.done = done
        self.keeper = keeper

    def dataReceived(self, data: bytes) -> None:
        self.keeper.write(data)
        if self.keeper.truncated and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if not self.done.called:
            self.done.callback(isinstance(reason.value, (ResponseDone, PotentialDataLoss)))


def _stop(collect: _Collect) -> None:
    """Cancelled while reading the body (the mirror's timeout): stop the transport, free the connection."""
    if collect.transport is not None:
        collect.transport.stopProducing()  # type: ignore[attr-defined]


def mirrorSender(cluster: Cluster, limit: int) -> Callable[[MirrorRequest], Deferred[Answer]]:
    """The C{MirrorSend} of a mirror upstream: one attempt, on a lease of its own cluster."""

    def send(request: MirrorRequest) -> Deferred[Answer]:
        return ensureDeferred(_send(cluster, limit, request))

    return send


async def _send(cluster: Cluster, limit: int, request: MirrorRequest) -> Answer:
    # The mirror's interim (1xx) responses must never reach the client: this
    # coroutine runs in its own context, where no client is set for them.
    INTERIM.set(None)
    view = _MirrorView(request)
    lease = cluster.choose(view)  # type: ignore[arg-type]  # NoTarget: the copy failed, counted by the mirror
    endpoint = lease.endpoint
    headers = view.headers
    if headers.getRawHeaders(b"host") in (None, [b""]):
        headers.setRawHeaders(b"host", [endpoint.netloc])
    headers.setRawHeaders(MIRROR_HEADER, [b"1"])
    client = cluster.agent
    assert client is not None, "the mirror upstream's cluster has no client: was it started?"
    body = BytesProducer(request.body) if request.body else None
    response: IResponse | None = None
    try:
        response = await client.request(request.method, endpoint.urlBytes + request.path, headers, body)
        lease.responded(response, cluster.clock.seconds())
        keeper = BodyKeeper(limit)
        done: Deferred[bool] = Deferred(lambda _: _stop(collect))
        collect = _Collect(done, keeper)
        response.deliverBody(collect)
        complete = await done
        code = response.code
        if complete or keeper.truncated:
            lease.record(code, code < 500)
        else:
            lease.record("body_reset", False)
        return keeper.answer(code, tuple((k, v) for k, vs in response.headers.getAllRawHeaders() for v in vs))
    except CancelledError:
        lease.cancel()  # the mirror's own timeout or a stop: no verdict on the target
        raise
    except Exception as e:
        outcome = classify(Failure(e))
        if outcome == "cancelled":
            # The client wraps the cancellation (ResponseNeverReceived): unwrap it, so the
            # mirror's timeout sees its own cancel and counts timed_out, not failed.
            lease.cancel()
            raise CancelledError() from e
        lease.record(outcome, False)
        raise
    finally:
        lease.release()
