# -*- test-case-name: tests.test_websocket_http,tests.e2e.test_websocket -*-
"""
A route's WebSocket upgrades: from an upgrade request that went through the
route's whole chain to an open L{Splice <txgateway.websocket.splice.Splice>}.

L{WebSocketProxy.upgrade} runs where a plain request would be forwarded
(the route's leaf, after matching, IP rules, auth, CORS and the rate limit
have let it through): the CORS origin check that browsers do not make for
WebSockets (an C{Origin} the route's C{cors.allow_origins} does not list is
refused 403), a slot in the route's caps, a target from
L{Cluster.choose} (balancer, health, breaker), the upgrade request on a
connection of its own (L{txgateway.http.handshake}) with C{Upgrade} and
C{Connection} kept, then either the 101 relayed and the connection taken
over (L{txgateway.http.upgrade}), or the target's other answer relayed as it
was, the way every response is.

One try, no retry: an upgrade is answered quickly or not at all, and a
client reconnects by itself.  The target's verdict is given once for the
handshake (a 101 is a success); a target that later drops its connection
without a close frame is recorded as a failure too, on a lease of its own,
so its breaker and passive health hear of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI

from txgateway.attempts import UpstreamFailure, classify, statusFor
from txgateway.cluster import Lease, NoTarget
from txgateway.context import jsonResponse, respond
from txgateway.deadlines import withDeadline
from txgateway.forwarding import relay, upstreamFailed
from txgateway.http.handshake import UpgradeRefused, connectTarget, requestHead
from txgateway.http.upgrade import isUpgrade, takeOver, upgradeFields
from txgateway.websocket.registry import Refusal, Slot
from txgateway.websocket.splice import Splice

if TYPE_CHECKING:
    from txgateway.context import RequestContext
    from txgateway.gateway import Runtime
    from txgateway.routing import CompiledRoute

__all__ = ["WebSocketProxy", "proxyFor"]

log = Logger(namespace="txgateway.websocket")


def proxyFor(route: CompiledRoute, runtime: Runtime) -> WebSocketProxy | None:
    """The route's WebSocket proxy, when it has C{websocket: true} and an upstream."""
    if not route.config.websocket.enabled or route.cluster is None:
        return None
    return WebSocketProxy(route, runtime)


class WebSocketProxy:
    """Upgrades on one route of one runtime (the registry they count in outlives both)."""

    def __init__(self, route: CompiledRoute, runtime: Runtime) -> None:
        self.route = route
        self.spec = route.config.websocket
        self.cluster = route.cluster
        self.registry = runtime.websockets
        self.messages = runtime.messages
        self.clock = runtime.clock
        m = runtime.metrics
        self.authFailures = m.authFailures
        cors = route.config.cors
        self.origins = None
        if cors is not None:  # imported only then: a gateway without CORS never loads it
            from txgateway.cors import OriginMatcher

            self.origins = OriginMatcher(cors.allow_origins)
        self.upgrades = m.websocketUpgrades
        self.duration = m.websocketDuration.labels(route.name)
        self.countIn = m.websocketBytes.labels(route.name, "client_to_target").inc
        self.countOut = m.websocketBytes.labels(route.name, "target_to_client").inc

    def wanted(self, request: Any) -> bool:
        """Whether C{request} asks for a WebSocket (else it is forwarded as the GET it also is)."""
        return isUpgrade(request)

    def _outcome(self, outcome: str) -> None:
        self.upgrades.labels(self.route.name, outcome).inc()

    async def upgrade(self, context: RequestContext) -> None:
        """Open a WebSocket to a target for C{context}'s client, or answer why not."""
        origin = context.header(b"origin")
        if self.origins is not None and origin is not None and not self.origins.allows(origin):
            # Browsers do not hold WebSockets to CORS: a page from any origin may open one with the user's
            # cookies.  The route's cors.allow_origins is who may, so the gateway refuses the others.
            self.authFailures.labels(self.route.name, "cors").inc()
            self._outcome("refused_origin")
            context.outcome = "websocket_refused_origin"
            respond(context, jsonResponse(context, 403, "WebSocket origin not allowed (cors.allow_origins)",
                                          origin=origin.decode("latin-1")))
            return
        admitted = self.registry.admit(self.route.name, context.clientIP, self.spec)
        if isinstance(admitted, Refusal):
            self._outcome(admitted.outcome)
            context.outcome = "websocket_" + admitted.outcome
            respond(context, jsonResponse(context, admitted.status, admitted.message))
            return
        slot = admitted
        try:
            opened = await self._handshake(context, slot)
        finally:
            if slot.splice is None:
                slot.release()
        if opened:
            self._outcome("upgraded")

    async def _handshake(self, context: RequestContext, slot: Slot) -> bool:
        cluster = self.cluster
        assert cluster is not None
        context.upstream = cluster.name
        try:
            lease = cluster.choose(context, ())
        except NoTarget as e:
            context.outcome = "no_target"
            self._outcome("no_target")
            upstreamFailed(context, UpstreamFailure(503, e.reason, e.retryAfter))
            return False
        endpoint = lease.endpoint
        context.attempts = 1
        context.target = endpoint.url
        context.targetsTried.append(endpoint.url)
        context.forwarded = lease.sent
        request = context.request
        server = context.trace
        span = None if server is None else server.tracer.attempt(context, b"GET", endpoint.url, 1, None)
        if span is None:
            headers = self.messages.upstreamHeaders(context, endpoint)
        else:  # the traceparent sent names the handshake's client span as the parent
            own, context.spanId = context.spanId, span.spanId
            try:
                headers = self.messages.upstreamHeaders(context, endpoint)
            finally:
                context.spanId = own
        for name, value in upgradeFields(request):
            headers.setRawHeaders(name, [value])
        url = self.messages.upstreamURL(context, endpoint)
        timeouts = cluster.config.timeouts
        connected = False
        try:
            target = await withDeadline(connectTarget(cluster.agent, url, requestHead(URI.fromBytes(url).originForm,
                                                                                       headers)),
                                        timeouts.connect, self.clock)
            connected = True
            response = await withDeadline(target.answered, timeouts.response, self.clock)
        except Exception as e:  # (not GeneratorExit: a coroutine closed unfinished just ends)
            lease.release()
            failure = Failure(e)
            outcome = "invalid_response" if failure.check(UpgradeRefused) else classify(failure)
            if not connected and outcome != "cancelled":
                outcome = "connect_failure"  # nothing was sent: as the attempt loop says it
            if span is not None:
                server.tracer.attemptEnded(span, outcome)
            if outcome == "cancelled" or getattr(request, "gone", False):
                lease.cancel()
                raise CancelledError() from e
            lease.record(outcome, False)
            context.outcome = outcome
            self._outcome("target_failed")
            log.info("WebSocket upgrade {request_id} to {target} failed: {outcome}", request_id=context.requestId,
                     target=endpoint.url, outcome=outcome, route=self.route.name)
            upstreamFailed(context, UpstreamFailure(statusFor(outcome), outcome))
            return False
        now = self.clock.seconds()
        if span is not None:
            server.tracer.attemptEnded(span, response.code)
        lease.responded(response, now)
        context.answered = now
        if response.code != 101:
            return await self._refused(context, lease, response)
        lease.record(101, True)
        lease.release()  # an open WebSocket does not hold one of the target's request slots
        slot.upstream, slot.target = cluster.name, endpoint.url
        splice = Splice(target.transport, self.clock, self.spec.idle_timeout,
                        lambda s: self._closed(context, slot, s), self.countIn, self.countOut)
        self.messages.startResponse(context, response)
        upgrade = response.headers.getRawHeaders(b"upgrade", [b"websocket"])[0]
        fromClient, fromTarget = splice.fromClient, splice.fromTarget
        writes = getattr(getattr(request.channel, "site", None), "writes", None)
        if writes is not None:
            # What one read wrote leaves in that reactor turn (see txgateway.http.sending), both ways.
            writes.adopt(target.transport)
            run = writes.run
            fromClient = lambda data: run(splice.fromClient, data)  # noqa: E731
            fromTarget = lambda data: run(splice.fromTarget, data)  # noqa: E731
        early = target.pipeTo(fromTarget, lambda reason: self._targetLost(splice, lease, reason))
        client = takeOver(request, request.responseHeaders, upgrade, fromClient, splice.clientLost)
        self.registry.opened(slot, splice)
        splice.start(client)
        if early:
            splice.fromTarget(early)
        return True

    async def _refused(self, context: RequestContext, lease: Lease, response: Any) -> bool:
        """The target answered, but not 101: that answer goes to the client as it was."""
        code = response.code
        if code >= 500:
            lease.record(code, False)
        self._outcome("target_refused")
        complete = False
        try:
            self.messages.startResponse(context, response)
            complete = await relay(context, response)
        finally:
            lease.finish(complete, getattr(context.request, "gone", False))
        return False

    def _targetLost(self, splice: Splice, lease: Lease, reason: Failure) -> None:
        splice.targetLost(reason)
        if splice.targetFailed:
            # The handshake's verdict is given: the failure goes on a lease of its own.
            endpoint = lease.endpoint
            log.warn("target {target} of upstream {upstream} dropped a WebSocket without a close frame",
                     target=endpoint.url, upstream=lease.cluster.name, route=self.route.name)
            failed = Lease(lease.cluster, endpoint, self.clock.seconds())
            failed.record("websocket_reset", False)
            failed.release()

    def _closed(self, context: RequestContext, slot: Slot, splice: Splice) -> None:
        """The client's side closed: the request's access-log line is written next, with these figures."""
        slot.release()
        context.bytesOut += splice.bytesOut
        request: Any = context.request
        request.bytesIn = getattr(request, "bytesIn", 0) + splice.bytesIn
        outcome = splice.outcome or "websocket_closed"
        code = splice.closeCode
        context.outcome = f"{outcome}_{code}" if code is not None else outcome
        self.duration.observe(self.clock.seconds() - splice.started)
