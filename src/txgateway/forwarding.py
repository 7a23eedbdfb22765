# -*- test-case-name: tests.test_forwarder,tests.test_caching -*-
"""
The forward sequence, written once: fetch, start the client's response, relay, finish.

A route forwards through an L{IForwarder}: L{ClusterForwarder} (the attempt
loop on the route's upstream) or a decorator of one (the cache, see
L{txgateway.caching.flow}).  Whatever it is, L{forward} writes what it gives
back the same way and ends the exchange exactly once, so the in-flight
count, the outcome of the attempt and the access log's story come out the
same for every route.

An exchange is what C{fetch} fires with: its C{response} (an C{IResponse})
and C{finish(complete, clientGone)}, called once when the body has been
relayed or broke off.  The attempt loop's L{txgateway.cluster.Lease} is one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from txgateway.attempts import AttemptLoop, UpstreamFailure, discard
from txgateway.context import jsonResponse, respond
from txgateway.http.grpcstatus import grpcStatusOf
from txgateway.http.headers import NO_BODY_STATUS
from txgateway.http.interim import INTERIM, interimTarget
from txgateway.http.messages import Messages
from txgateway.http.trailers import relayTrailers
from txgateway.interfaces import IForwarder

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster, Lease
    from txgateway.config import ServerConfig
    from txgateway.context import RequestContext
    from txgateway.observe import Metrics

__all__ = ["ClusterForwarder", "Forwarder", "forward", "relay", "upstreamFailed"]

log = Logger(namespace="txgateway")

# What the access log's outcome says when the target broke off a body.
BODY_RESET = "body_reset"


class Forwarder:
    """One config's way to upstreams: its header rules (L{Messages}) and its attempt loop."""

    def __init__(self, reactor: Any, clock: IReactorTime, server: ServerConfig, metrics: Metrics,
                 debug: bool = False) -> None:
        self.clock = clock
        self.messages = Messages(server)
        self.via = self.messages.via
        self.trusted = self.messages.trusted
        self.attempts = AttemptLoop(clock, self.messages, metrics, debug)
        self.startResponse = self.messages.startResponse
        self.finishHeaders = self.messages.finishHeaders
        self.upstreamHeaders = self.messages.upstreamHeaders

    def fetch(self, context: RequestContext, cluster: Cluster, method: bytes | None = None,
              extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Awaitable[Lease]:
        """See L{AttemptLoop.fetch}."""
        return self.attempts.fetch(context, cluster, method, extraHeaders)


@implementer(IForwarder)
class ClusterForwarder:
    """A route's plain way upstream: the attempt loop on its cluster."""

    __slots__ = ("attempts", "cluster")

    def __init__(self, forwarder: Forwarder, cluster: Cluster) -> None:
        self.attempts = forwarder.attempts
        self.cluster = cluster

    def fetch(self, context: RequestContext, method: bytes | None = None,
              extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Awaitable[Lease]:
        return self.attempts.fetch(context, self.cluster, method, extraHeaders)


async def forward(context: RequestContext, upstream: Any, messages: Messages) -> None:
    """
    Fetch through C{upstream} (an L{IForwarder}), write the response to the
    client, end the exchange.  Interim responses (1xx) the upstream sends
    before its final one reach the client as they come (RFC 9110 §15.2, see
    L{txgateway.http.interim}); this coroutine's own context carries the client.
    """
    token = INTERIM.set(interimTarget(context.request))
    try:
        exchange = await upstream.fetch(context)
    except UpstreamFailure as e:
        upstreamFailed(context, e)
        return
    finally:
        try:
            INTERIM.reset(token)
        except ValueError:
            # A coroutine never finished (its request abandoned) is closed by
            # the garbage collector, outside the context it ran in: nothing to
            # restore there, and an exception here would only be "ignored".
            pass
    complete = False
    try:
        response = exchange.response
        messages.startResponse(context, response)
        complete = await relay(context, response)
    finally:
        gone = getattr(context.request, "gone", False) and context.outcome != BODY_RESET
        exchange.finish(complete, gone)
    if not complete and context.outcome == BODY_RESET:
        route = context.route
        log.warn("target {target} of {upstream} broke off the response body of request {request_id} "
                 "(route {route}); the client's connection was cut",
                 target=context.target, upstream=context.upstream, request_id=context.requestId,
                 route=route.name if route is not None else None)


def upstreamFailed(context: RequestContext, e: UpstreamFailure) -> None:
    """Answer the client for an upstream that gave no answer."""
    headers = []
    if e.status == 503 and e.retryAfter:
        headers.append((b"Retry-After", b"%d" % max(1, int(e.retryAfter + 0.999))))
    if e.message is not None:
        respond(context, jsonResponse(context, e.status, e.message, headers))
        return
    message = {502: "bad gateway: the upstream failed", 503: "service unavailable",
               504: "gateway timeout: the upstream did not answer in time"}.get(e.status, "upstream error")
    respond(context, jsonResponse(context, e.status, message, headers, reason=e.reason,
                                  upstream=context.upstream))


def relay(context: RequestContext, response: IResponse,
          tee: Callable[[bytes], None] | None = None) -> Deferred[bool]:
    """
    Stream the body to the client with backpressure; fire True when it
    all arrived, False when either side broke off.
    """
    done: Deferred[bool] = Deferred()
    request = context.request
    code = response.code
    if context.method == b"HEAD" or code in NO_BODY_STATUS or code < 200:
        discard(response)
        if not getattr(request, "gone", False):
            request.finish()
        done.callback(True)
        return done
    response.deliverBody(_Relay(context, done, tee, response))
    return done


class _Relay(Protocol):
    """Copies an upstream body to the client, pausing the backend when the client is slow."""

    def __init__(self, context: RequestContext, done: Deferred[bool], tee: Callable[[bytes], None] | None,
                 response: IResponse | None = None) -> None:
        self.context = context
        self.response = response
        self.request = context.request
        self.done = done
        self.tee = tee
        self.registered = False

    def connectionMade(self) -> None:
        request = self.request
        if getattr(request, "gone", False):
            self.transport.stopProducing()  # type: ignore[union-attr,attr-defined]
            return
        request.registerProducer(self.transport, True)
        self.registered = True
        if self.context.onGone is not None:
            self.context.onGone.append(self._clientGone)
        else:
            request.notifyFinish().addErrback(self._clientGone)

    def _clientGone(self, reason: Failure) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.context.bytesOut += len(data)
        if self.tee is not None:
            self.tee(data)
        if not getattr(self.request, "gone", False):
            self.request.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        request = self.request
        if self.registered and not getattr(request, "gone", False):
            request.unregisterProducer()
        complete = isinstance(reason.value, (ResponseDone, PotentialDataLoss))  # Failure.check walks the MRO by name
        if not getattr(request, "gone", False):
            if complete:
                response = self.response
                if response is not None:
                    relayTrailers(request, response)
                    trailers = getattr(response, "trailers", None)  # an HTTP/2 response: maybe a gRPC status
                    if trailers is not None:
                        self.context.grpcStatus = grpcStatusOf(response.headers, trailers)
                request.finish()
            else:
                # The target broke off the body (reset, bad framing).  Headers
                # are out; the only honest signal left is to cut the
                # connection so the client sees a truncated response.
                self.context.outcome = BODY_RESET
                transport = getattr(request.channel, "transport", None)
                if transport is not None:
                    transport.abortConnection()
        self.done.callback(complete)
