# -*- test-case-name: tests.test_hardening,tests.test_observe -*-
"""
The gateway's own endpoints on the main port (C{server.endpoints}):
C{/health}, C{/ready} and C{/metrics}, answered by L{txgateway.gateway.GatewayRoot}
before any route is matched.

C{/health} tells one story with the forwarding: an upstream that fails open
still forwards, so it is reported working (degraded), never "unavailable".
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txgateway.context import LocalResponse, RequestContext, jsonResponse, respond
from txgateway.workshop import workshopHealth

if TYPE_CHECKING:
    from txgateway.gateway import GatewayState, Runtime

__all__ = ["OwnEndpoint", "healthReport"]


def healthReport(runtime: Runtime) -> tuple[int, dict[str, Any]]:
    """
    C{(status code, report)} of C{/health} (and the admin API's and status
    page's view of it): per upstream, whether it can take traffic and why
    each target can or cannot; 503 only when no upstream can.
    """
    now = runtime.clock.seconds()
    upstreams: dict[str, Any] = {}
    degraded = []
    # A gateway with no upstream at all (every route a redirect or an answer) serves every request.
    anyUsable = not runtime.clusters
    for name, cluster in runtime.clusters.items():
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
              "stores": {"redis": runtime.redis.describe()} if runtime.redis is not None else {}}
    return (200 if anyUsable else 503), workshopHealth(report, runtime.config.server.environment, runtime.clusters)


class OwnEndpoint(Resource):
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
            # OpenMetrics (with exemplars) when the scraper asks for it.
            openMetrics, contentType = self.runtime.metrics.negotiate(context.header(b"accept"))
            body = self.runtime.metrics.render(openMetrics)
            respond(context, LocalResponse(200, [(b"Content-Type", contentType)], body))
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
