# -*- test-case-name: tests.test_hardening,tests.test_observe -*-
"""
The request path: the resource tree the Site serves, from request head to log line.

L{GatewayRoot} is the root of the tree.  It reads the current L{Runtime}
once per request (a reload swaps that one attribute, so a request never sees
half of two configs), answers the gateway's own endpoints, and hands a
matched request to its route's leaf, L{RouteResource}, which runs the chain
and the forward.

At C{logging.level: debug} the routing decision of every request is a log
line (the route chosen and what it matched, or why none did), carrying
C{request_id}, C{route} and C{upstream}; C{Runtime.debug} is decided once per
config, so with debug off no request formats anything for it.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txgateway.answers import answerFor
from txgateway.compression import CompressingForwarder
from txgateway.context import LocalResponse, RequestContext, jsonResponse, respond
from txgateway.endpoints import OwnEndpoint, healthReport
from txgateway.forwarding import BODY_RESET, forward
from txgateway.http.addresses import AddressSet, peerIP
from txgateway.http.grpcstatus import codeName as grpcCodeName
from txgateway.http.h2body import pendingBody
from txgateway.http.headers import H_HOST, H_REQUEST_ID, H_TRACEPARENT, H_VIA, fields, viaLooped
from txgateway.http.paths import PathError, normalizeHost, normalizePath, pathHazards
from txgateway.observe import IdSource, parentSpanId, requestBodySize
from txgateway.observe.ids import continueTrace
from txgateway.protection.build import protect
from txgateway.splitting import routeForwarder
from txgateway.websocket import WebSocketRegistry, proxyFor

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster
    from txgateway.config import GatewayConfig
    from txgateway.forwarding import Forwarder
    from txgateway.interfaces import IForwarder
    from txgateway.observe import AccessLog, Metrics
    from txgateway.observe.tracing import Tracer
    from txgateway.routing import CompiledRoute, Match, RouteTable

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
        self.tracer: Tracer | None = None  # set once by the service when the config has tracing:
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
                 redis: Any = None, websockets: WebSocketRegistry | None = None) -> None:
        self.config = config
        self.websockets = websockets or WebSocketRegistry(clock, metrics)  # kept across reloads (issue 20)
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
        # logging.level is debug: log each routing decision (decided once, here).
        self.debug = config.logging.level == "debug"

    def clientIP(self, peer: str, request: Any) -> str:
        """The real client of C{request} from C{peer} (see L{ForwardedFor})."""
        ff = self.forwardedFor
        if not ff.trusted or peer not in ff.trusted:
            return peer
        return ff.clientIPOf(peer, request.requestHeaders, self.messages.forwardedMode)

    def healthReport(self) -> tuple[int, dict[str, Any]]:
        """C{(status code, report)} of C{/health}: see L{txgateway.endpoints.healthReport}."""
        return healthReport(self)


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
        peer = peerIP(request)
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
        continueTrace(context, raw, state.ids)
        tracer = state.tracer
        if tracer is not None:
            parent = raw.get(H_TRACEPARENT)
            tracer.begin(context, parentSpanId(parent[0]) if parent else None)

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
            context.trace = None  # probes and scrapes are not traced
            if runtime.debug:
                _debug(context, "answered by the gateway's own {kind} endpoint (server.endpoints)", kind=kind)
            return OwnEndpoint(kind, runtime, gw.state)

        if runtime.viaName is not None and viaLooped(raw.get(H_VIA), runtime.viaName):
            log.warn("request {request_id} already passed through this gateway ({via}): refused as a loop",
                     request_id=context.requestId, via=runtime.viaName.decode())
            return _Local(jsonResponse(context, 508, "loop detected: the request already passed through this gateway"))

        if (runtime.globalDeny and context.clientIP in runtime.globalDeny) or (
                runtime.globalAllow and context.clientIP not in runtime.globalAllow):
            runtime.metrics.authFailures.labels("", "ip").inc()
            if runtime.debug:
                _debug(context, "refused before routing: client {client} is not allowed by access.ip_allow/ip_deny",
                       client=context.clientIP)
            return _Local(jsonResponse(context, 403, "forbidden: client address not allowed"))

        match = runtime.routes.match(request.method, context.host, context.path, request.requestHeaders,
                                     context.query, context.clientIP)
        route = match.route
        if runtime.debug:
            _logRouting(context, runtime, match)
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


def _debug(context: RequestContext, text: str, **fields: Any) -> None:
    route = context.route
    log.debug("request {request_id} {method} {host}{path}: " + text, request_id=context.requestId,
              method=context.method.decode("latin-1"), host=context.host, path=context.path,
              route=route.name if route is not None else "", upstream=route.upstreamName if route is not None else "",
              **fields)


def _logRouting(context: RequestContext, runtime: Runtime, match: Match) -> None:
    """The routing decision, in words: the route and what it matched, or why no route did."""
    route = match.route
    request = context.request
    if route is not None:
        log.debug("request {request_id} {method} {host}{path}: route {route} ({matched}) to upstream {upstream}, "
                  "upstream path {upstream_path}", request_id=context.requestId,
                  method=context.method.decode("latin-1"), host=context.host, path=context.path, route=route.name,
                  matched=route.describe(), upstream=route.upstreamName,
                  upstream_path=route.upstreamPath(context.path))
        return
    if match.allowed:
        why = "method not allowed; routes for this path take " + ", ".join(sorted(m.decode() for m in match.allowed))
    else:
        reasons = [f"{r.name}: {reason}" for r, reason in
                   runtime.routes.explain(request.method, context.host, context.path, request.requestHeaders,
                                          context.query, context.clientIP)]
        why = "no route matches (" + ("; ".join(reasons[:20]) or "no routes configured") + \
            (f"; and {len(reasons) - 20} more" if len(reasons) > 20 else "") + ")"
    _debug(context, "no route: {why}", why=why)


def _refusePath(context: RequestContext, reason: str) -> Resource:
    log.info("request {request_id} from {client} refused: {reason}",
             request_id=context.requestId, client=context.clientIP, reason=reason)
    return _Local(jsonResponse(context, 400, f"bad request path: {reason}"))


def _requestDone(result: Any, context: RequestContext, runtime: Runtime, state: GatewayState) -> None:
    state.requestEnded()
    runtime.metrics.inFlight.dec()
    end = runtime.clock.seconds()
    duration = end - context.started
    request = context.request
    if context.outcome == BODY_RESET:
        # The target broke off the body and the gateway cut the client: the
        # status sent stands, and the outcome says what happened (not 499).
        context.status = request.code
    else:
        context.status = request.code if not getattr(request, "gone", False) or request.finished else 499
    route = context.route
    routeName = route.name if route is not None else ""
    exemplar = None
    if context.trace is not None and context.trace.tracer.end(context, end):
        exemplar = context.traceId
    runtime.metrics.observeRequest(routeName, context.method, context.status, duration, exemplar,
                                   context.upstream or "")
    if context.grpcStatus is not None:
        runtime.metrics.grpcRequests.labels(context.upstream or "", grpcCodeName(context.grpcStatus)).inc()
    if context.forwarded >= 0:
        runtime.metrics.observeProcessing(routeName, context.forwarded - context.started,
                                          end - context.answered if context.answered >= 0 else None)
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


class RouteResource(Resource):
    """The leaf for one route: run its chain, then forward (through its cache, if any)."""

    isLeaf = True

    def __init__(self, route: CompiledRoute, runtime: Runtime) -> None:
        super().__init__()
        self.route = route
        self.runtime = runtime
        # The route's way upstream: the attempt loop on its cluster, wrapped
        # by the route's cache when it has one.
        upstream: IForwarder | None = answerFor(route)  # redirect / respond: no upstream
        if upstream is None:
            upstream = routeForwarder(route, runtime.forwarder)  # the cluster's, or a split and mirror: txgateway.splitting
            upstream = protect(upstream, route, runtime.clock, runtime.metrics)  # issue 24: admission, batching, coalescing
            cache = route.chain.cache if route.chain is not None else None
            if cache is not None:
                upstream = cache.wrap(upstream)
        if route.config.compress is not None:  # outside the cache: it compresses what the cache serves
            upstream = CompressingForwarder(upstream, route.config.compress)
        self.upstream = upstream
        # A mirror, batching or POST coalescing reads the whole body first: an HTTP/2 body still streaming is awaited.
        rc, canary = route.config.concurrency, route.canary
        self.wholeBody = bool(rc.batch or rc.idempotent_post or (canary is not None and canary.mirror is not None))
        self.websocket = proxyFor(route, runtime)  # websocket: true: upgrades are proxied (issue 20)

    def render(self, request: Any) -> Any:
        pending = pendingBody(request) if self.wholeBody else None
        if pending is not None:
            pending.addCallbacks(lambda _: self.render(request), lambda _: None)
            return NOT_DONE_YET
        context: RequestContext = request.context
        chain = self.route.chain
        # Filters that answer at once (the usual case: IP rules, a local
        # rate limit, key or JWT checks) run as plain calls; only a filter
        # that returns a Deferred puts the rest of the chain in a coroutine.
        local = chain.runNow(context) if chain.filters else None
        if local is None:
            d = ensureDeferred(self.send(context))
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
        await self.send(context)

    def send(self, context: RequestContext) -> Coroutine[Any, Any, None]:
        """What the chain let through: a WebSocket upgrade on a route that proxies them, else the forward."""
        websocket = self.websocket
        if websocket is not None and websocket.wanted(context.request):
            return websocket.upgrade(context)
        return forward(context, self.upstream, self.runtime.messages)

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
