# -*- test-case-name: tests.test_hardening,tests.test_observe -*-
"""
The request path: the resource tree the Site serves, from request head to log line.

L{GatewayRoot} is the root of the tree.  It reads the current L{Runtime}
once per request (a reload swaps that one attribute, so a request never sees
half of two configs), answers the gateway's own endpoints, and hands a
matched request to its route's leaf, L{RouteResource}, which runs the chain
and the forward.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txgateway.context import LocalResponse, RequestContext, jsonResponse, respond
from txgateway.forwarding import BODY_RESET, forward
from txgateway.http.addresses import AddressSet
from txgateway.http.headers import H_HOST, H_REQUEST_ID, H_TRACEPARENT, H_TRACESTATE, H_VIA, fields
from txgateway.http.paths import PathError, normalizeHost, normalizePath, pathHazards
from txgateway.observe import IdSource, parseTraceparent, requestBodySize
from txgateway.splitting import routeForwarder
from txgateway.workshop import workshopHealth

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster
    from txgateway.config import GatewayConfig
    from txgateway.forwarding import Forwarder
    from txgateway.interfaces import IForwarder
    from txgateway.observe import AccessLog, Metrics
    from txgateway.routing import CompiledRoute, RouteTable

__all__ = ["GatewayRoot", "GatewayState", "RouteResource", "Runtime"]

log = Logger(namespace="txgateway")


class GatewayState:
    """Process-wide facts that outlive any one config: readiness and in-flight requests."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.inFlight = 0
        self.workerId: int | None = None  # set in a worker process (see workers.py)
        self.ids = IdSource()
        self._idle: list[Deferred[None]] = []

    def requestStarted(self) -> None:
        self.inFlight += 1

    def requestEnded(self) -> None:
        self.inFlight -= 1
        if self.inFlight == 0 and self._idle:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """Fires once no request is in flight (at once if none is)."""
        d: Deferred[None] = Deferred()
        if self.inFlight == 0:
            d.callback(None)
        else:
            self._idle.append(d)
        return d


class Runtime:
    """Everything built from one config: routes with their chains, clusters, forwarder."""

    def __init__(self, config: GatewayConfig, routes: RouteTable, clusters: Mapping[str, Cluster],
                 forwarder: Forwarder, metrics: Metrics, accessLog: AccessLog, clock: IReactorTime,
                 redis: Any = None) -> None:
        self.config = config
        self.redis = redis  # the txgateway.stores client (or None): its state is part of healthReport
        self.routes = routes
        self.clusters = clusters
        self.forwarder = forwarder
        self.metrics = metrics
        self.accessLog = accessLog
        self.clock = clock
        e = config.server.endpoints
        self.endpoints = {p: kind for p, kind in ((e.health, "health"), (e.ready, "ready"), (e.metrics, "metrics"))
                          if p is not None}
        # The forwarder's trusted_proxies and X-Forwarded-For walk: one for the whole config.
        self.messages = forwarder.messages
        self.forwardedFor = forwarder.messages.forwardedFor
        # This gateway's Via pseudonym: a request already carrying it has looped.
        self.viaName: bytes | None = config.server.via.lower().encode() or None
        self.globalAllow = AddressSet(config.access.ip_allow)
        self.globalDeny = AddressSet(config.access.ip_deny)
        self.leaves = {r.name: RouteResource(r, self) for r in routes.routes}

    def clientIP(self, peer: str, request: Any) -> str:
        """The real client of C{request} from C{peer} (see L{ForwardedFor})."""
        ff = self.forwardedFor
        if not ff.trusted or peer not in ff.trusted:
            return peer
        return ff.clientIP(peer, request.requestHeaders.getRawHeaders(b"x-forwarded-for"))

    def healthReport(self) -> tuple[int, dict[str, Any]]:
        now = self.clock.seconds()
        upstreams: dict[str, Any] = {}
        degraded = []
        anyUsable = False
        for name, cluster in self.clusters.items():
            targets = []
            for e in cluster.endpoints:
                healthy = e.healthy(now)
                circuit = e.breaker.state if e.breaker is not None else "closed"
                targets.append({
                    "url": e.url,
                    "healthy": healthy,
                    # Why not, when not: the active probe says so, or real traffic ejected it.
                    "active_check": "passing" if e.activeHealthy else "failing",
                    "ejected": now < e.ejectedUntil,
                    "circuit": circuit,
                    "usable": healthy and circuit != "open",
                    "in_flight": e.inFlight,
                })
            usable = cluster.usable()
            # fail_open with no healthy target still forwards (to targets whose
            # circuit is not open): that gateway works, degraded, and must not
            # tell a load balancer otherwise.
            failingOpen = not usable and cluster.failOpen and any(t["circuit"] != "open" for t in targets)
            anyUsable = anyUsable or usable or failingOpen
            # Degraded: some target cannot take traffic now (unhealthy or its circuit open).
            if not usable or not all(t["usable"] for t in targets):
                degraded.append(name)
            upstreams[name] = {"usable": usable, "failing_open": failingOpen, "targets": targets}
        status = "ok" if anyUsable and not degraded else ("degraded" if anyUsable else "unavailable")
        # Redis down is not unhealthy (limits and the cache decide locally) but an operator must see it.
        report = {"status": status, "degraded": degraded, "upstreams": upstreams,
                  "stores": {"redis": self.redis.describe()} if self.redis is not None else {}}
        return (200 if anyUsable else 503), workshopHealth(report, self.config.server.environment, self.clusters)


class GatewayRoot(Resource):
    """
    The root of the resource tree.

    Routing needs the whole normalised path, host and headers at once, so the
    root decides on the first segment walk and returns the route's leaf (or an
    answer of its own); the leaf has C{isLeaf} set and gets the request.
    """

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        gw = self.gateway
        runtime: Runtime = gw.runtime
        state: GatewayState = gw.state
        raw = fields(request.requestHeaders)  # Headers' own dict: no name encoding per lookup
        peer = _peerIP(request)
        context = RequestContext(
            request, runtime.clock.seconds(), state.ids.requestId(raw.get(H_REQUEST_ID, (None,))[0]),
            runtime.clientIP(peer, request), peer, request.method,
            normalizeHost(raw.get(H_HOST, (b"",))[0]), "/", None,
        )
        # One finish notification per request: _requestDone calls these when
        # the client leaves, instead of each stage asking for its own.
        context.onGone = []
        request.context = context
        request.bytesIn = requestBodySize(request)  # the body is gone by the time the access log is written
        state.requestStarted()
        runtime.metrics.inFlight.inc()
        whenDone = getattr(request, "whenDone", None)
        if whenDone is not None:
            whenDone(_requestDone, context, runtime, state)
        else:  # a plain twisted.web Request (tests, embedding)
            request.notifyFinish().addBoth(_requestDone, context, runtime, state)
        _trace(context, raw, state.ids)

        uri = request.uri
        q = uri.find(b"?")
        rawPath = uri if q == -1 else uri[:q]
        if q != -1:
            context.query = uri[q + 1:]
        try:
            context.path = normalizePath(rawPath)
        except PathError as e:
            return _Local(jsonResponse(context, 400, f"bad request path: {e}"))
        refused, slashy = pathHazards(rawPath)
        if refused is not None:
            return _refusePath(context, refused)

        kind = runtime.endpoints.get(context.path)
        if kind is not None:
            return _OwnEndpoint(kind, runtime, gw.state)

        if runtime.viaName is not None and _looped(raw.get(H_VIA), runtime.viaName):
            log.warn("request {request_id} already passed through this gateway ({via}): refused as a loop",
                     request_id=context.requestId, via=runtime.viaName.decode())
            return _Local(jsonResponse(context, 508, "loop detected: the request already passed through this gateway"))

        if (runtime.globalDeny and context.clientIP in runtime.globalDeny) or (
                runtime.globalAllow and context.clientIP not in runtime.globalAllow):
            runtime.metrics.authFailures.labels("", "ip").inc()
            return _Local(jsonResponse(context, 403, "forbidden: client address not allowed"))

        match = runtime.routes.match(request.method, context.host, context.path, request.requestHeaders)
        route = match.route
        if route is None:
            if match.allowed:
                allow = b", ".join(sorted(match.allowed))
                return _Local(jsonResponse(context, 405, "method not allowed", [(b"Allow", allow)],
                                           allow=allow.decode()))
            return _Local(jsonResponse(context, 404, "no route", host=context.host, path=context.path))
        context.route = route
        if slashy and not route.allowEncodedSlash:
            return _refusePath(context, "encoded slash or backslash in the path")
        context.upstreamPath = route.upstreamPath(context.path)
        return runtime.leaves[route.name]


def _refusePath(context: RequestContext, reason: str) -> Resource:
    log.info("request {request_id} from {client} refused: {reason}",
             request_id=context.requestId, client=context.clientIP, reason=reason)
    return _Local(jsonResponse(context, 400, f"bad request path: {reason}"))


def _looped(values: list[bytes] | None, name: bytes) -> bool:
    """Whether a Via field names this gateway as a received-by (RFC 9110 §7.6.3)."""
    if not values:
        return False
    for value in values:
        for entry in value.split(b","):
            parts = entry.split()
            if len(parts) >= 2 and parts[1].lower() == name:
                return True
    return False


def _peerIP(request: Any) -> str:
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else "0.0.0.0"


def _trace(context: RequestContext, raw: dict[bytes, list[bytes]], ids: IdSource) -> None:
    """W3C trace context: continue the caller's trace, with this hop as the new parent span."""
    parent = raw.get(H_TRACEPARENT)
    parsed = parseTraceparent(parent[0]) if parent else None
    state = raw.get(H_TRACESTATE)
    if parsed is None:
        context.traceId = ids.traceId()
        # W3C: vendor state belongs to the trace it came with; a new trace
        # must not carry the old one's.
        if state:
            context.removeHeaders.append(b"tracestate")
    else:
        context.traceId, context.traceFlags = parsed
        context.tracestate = state[0] if state else None
    context.spanId = ids.spanId()


def _requestDone(result: Any, context: RequestContext, runtime: Runtime, state: GatewayState) -> None:
    state.requestEnded()
    runtime.metrics.inFlight.dec()
    duration = runtime.clock.seconds() - context.started
    request = context.request
    if context.outcome == BODY_RESET:
        # The target broke off the body and the gateway cut the client: the
        # status sent stands, and the outcome says what happened (not 499).
        context.status = request.code
    else:
        context.status = request.code if not getattr(request, "gone", False) or request.finished else 499
    route = context.route
    runtime.metrics.observeRequest(route.name if route is not None else "", context.method, context.status, duration,
                                   context.upstream or "")
    try:
        runtime.accessLog.record(context, duration)
    except Exception:
        log.failure("writing the access log failed", request_id=context.requestId)
    hooks = context.onGone
    if hooks and isinstance(result, Failure):
        for hook in hooks:
            hook(result)
    # The request and its context point at each other (and the hooks at the
    # stages holding the context): cut the cycle so reference counting frees
    # a request's ~40 objects now, instead of the garbage collector finding
    # them in a gen-0 pass every few dozen requests.
    context.onGone = None
    request.context = None  # type: ignore[attr-defined]


class _Local(Resource):
    """A leaf that gives one prepared answer."""

    isLeaf = True

    def __init__(self, response: LocalResponse) -> None:
        super().__init__()
        self.response = response

    def render(self, request: Any) -> Any:
        respond(request.context, self.response)
        return NOT_DONE_YET


class _OwnEndpoint(Resource):
    """/health, /ready and /metrics: GET and HEAD only."""

    isLeaf = True

    def __init__(self, kind: str, runtime: Runtime, state: GatewayState) -> None:
        super().__init__()
        self.kind = kind
        self.runtime = runtime
        self.state = state

    def render(self, request: Any) -> Any:
        context: RequestContext = request.context
        if request.method not in (b"GET", b"HEAD"):
            respond(context, jsonResponse(context, 405, "method not allowed", [(b"Allow", b"GET, HEAD")]))
            return NOT_DONE_YET
        if self.kind == "metrics":
            body = self.runtime.metrics.render()
            respond(context, LocalResponse(200, [(b"Content-Type", CONTENT_TYPE_LATEST.encode())], body))
        elif self.kind == "ready":
            ok = self.state.ready and not self.state.draining
            status = "ready" if ok else ("draining" if self.state.draining else "starting")
            facts: dict[str, Any] = {"status": status, "pid": os.getpid()}
            if self.state.workerId is not None:
                facts["worker"] = self.state.workerId
            respond(context, _json(200 if ok else 503, facts))
        else:
            code, report = self.runtime.healthReport()
            respond(context, _json(code, report))
        return NOT_DONE_YET


def _json(code: int, obj: Any) -> LocalResponse:
    return LocalResponse(code, [(b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store")],
                         json.dumps(obj, separators=(",", ":")).encode() + b"\n")


class RouteResource(Resource):
    """The leaf for one route: run its chain, then forward (through its cache, if any)."""

    isLeaf = True

    def __init__(self, route: CompiledRoute, runtime: Runtime) -> None:
        super().__init__()
        self.route = route
        self.runtime = runtime
        # The route's way upstream: the attempt loop on its cluster, wrapped
        # by the route's cache when it has one.
        upstream: IForwarder = routeForwarder(route, runtime.forwarder)  # split and mirror: txgateway.splitting
        cache = route.chain.cache if route.chain is not None else None
        if cache is not None:
            upstream = cache.wrap(upstream)
        self.upstream = upstream

    def render(self, request: Any) -> Any:
        context: RequestContext = request.context
        chain = self.route.chain
        # Filters that answer at once (the usual case: IP rules, a local
        # rate limit, key or JWT checks) run as plain calls; only a filter
        # that returns a Deferred puts the rest of the chain in a coroutine.
        local = chain.runNow(context) if chain.filters else None
        if local is None:
            d = ensureDeferred(forward(context, self.upstream, self.runtime.messages))
        elif isinstance(local, LocalResponse):
            respond(context, local)
            return NOT_DONE_YET
        else:
            d = ensureDeferred(self.handle(context, local))
        if context.onGone is not None:
            context.onGone.append(lambda _: d.cancel())
        else:
            request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addErrback(self._failed, context)
        return NOT_DONE_YET

    async def handle(self, context: RequestContext, pending: Deferred[LocalResponse | None]) -> None:
        """The rest of the chain (C{pending}), then the forward."""
        local = await pending
        if local is not None:
            respond(context, local)
            return
        await forward(context, self.upstream, self.runtime.messages)

    def _failed(self, failure: Any, context: RequestContext) -> None:
        if failure.check(CancelledError):
            context.outcome = context.outcome or "client_gone"
            return
        log.failure("request {request_id} failed inside the gateway", failure, request_id=context.requestId)
        request = context.request
        if not request.startedWriting:
            respond(context, jsonResponse(context, 500, "internal gateway error"))
        elif not getattr(request, "gone", False):
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
