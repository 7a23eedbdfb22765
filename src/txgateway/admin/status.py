# -*- test-case-name: tests.test_admin -*-
"""
The status document: what C{/api/status} answers and the page shows, from the gateway's live state.

L{StatusReport.status} is the one function that builds it; state that
should appear on the page and in the API (a shared store's connection, say)
is added to the document there and drawn by L{txgateway.admin.page.renderBody}.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IReactorTime

from txgateway import __version__
from txgateway.admin.canary import CanaryStatus
from txgateway.admin.rates import LatencyHistogram, RateWindow, Snapshot, counters
from txgateway.caching.purging import cacheStats, routeCaches
from txgateway.membership import endpointsOf
from txgateway.observe import Metrics
from txgateway.protection.report import admissionReport

if TYPE_CHECKING:
    from txgateway.building import Gateway


class AdminTarget(Protocol):
    """What the admin listener needs from the running gateway (a L{GatewayService})."""

    gateway: Gateway
    metrics: Metrics

    def reload(self) -> list[str]: ...

def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _isError(status: str) -> bool:
    return not status.isdigit() or int(status) >= 500


def _latency(h: LatencyHistogram) -> dict[str, float | None]:
    return {"mean": _ms(h.mean()), "p50": _ms(h.quantile(0.5)), "p95": _ms(h.quantile(0.95)),
            "p99": _ms(h.quantile(0.99))}


def _matchText(route: Any) -> str:
    m = route.config.match
    parts = []
    if m.host:
        parts.append(f"host {m.host}")
    if m.path is not None:
        parts.append(f"path {m.path}")
    if m.path_prefix is not None:
        parts.append(f"prefix {m.path_prefix}")
    if m.methods:
        parts.append("methods " + ",".join(m.methods))
    for k, v in m.headers:
        parts.append(f"header {k}: {v}")
    return "; ".join(parts) or "everything"


def _rateText(r: Any) -> str:
    unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(float(r.per))
    return f"{r.count}/{unit}" if unit else f"{r.count}/{r.per:g}s"


class StatusReport:
    """Builds the status document (the JSON API and the page) from the gateway's live state."""

    def __init__(self, target: AdminTarget, clock: IReactorTime, window: float = 60.0) -> None:
        self.target = target
        self.clock = clock
        self.started = clock.seconds()
        self.rates = RateWindow(clock, window)
        self.canary = CanaryStatus(target, clock, window)

    def status(self) -> dict[str, Any]:
        gw = self.target.gateway
        runtime = gw.runtime
        metrics = self.target.metrics
        span, base, now = self.rates.sample(metrics)
        code, health = runtime.healthReport()
        return self.canary.add({
            "gateway": {
                "version": __version__,
                "now": _iso(self.clock.seconds()),
                "uptime_s": round(self.clock.seconds() - self.started, 1),
                "ready": gw.state.ready and not gw.state.draining,
                "draining": gw.state.draining,
                "in_flight": gw.state.inFlight,
                "active_connections": int(metrics.gaugeValue(metrics.activeConnections)),
                "listen": runtime.config.server.listen,
                "config": runtime.config.source,
                "window_s": round(min(span, self.rates.window), 1),
                "health": health["status"],
                "health_code": code,
                "environment": runtime.config.server.environment,
                "degraded": health["degraded"],
            },
            "routes": self._routes(span, base, now),
            "upstreams": self._upstreams(span, base, now, health),
            "stores": health.get("stores", {}),
            "reloads": self.reloads(),
        })

    def routes(self) -> list[dict[str, Any]]:
        span, base, now = self.rates.sample(self.target.metrics)
        routes: list[dict[str, Any]] = self.canary.add({"routes": self._routes(span, base, now)})["routes"]
        return routes

    def upstreams(self) -> list[dict[str, Any]]:
        span, base, now = self.rates.sample(self.target.metrics)
        _, health = self.target.gateway.runtime.healthReport()
        return self._upstreams(span, base, now, health)

    def reloads(self) -> list[dict[str, Any]]:
        return [{"time": _iso(h["time"]), "result": h["result"], "problems": list(h.get("problems", ())),
                 "dropped_runtime_changes": list(h.get("dropped_runtime_changes", ()))}
                for h in reversed(self.target.gateway.history)]

    def _routes(self, span: float, base: Snapshot, now: Snapshot) -> list[dict[str, Any]]:
        metrics = self.target.metrics
        limited = counters(metrics.rateLimited, ("route",))
        cache = counters(metrics.cacheRequests, ("route", "result"))
        authFailed = counters(metrics.authFailures, ("route",))
        totals: dict[str, float] = {}
        errors: dict[str, float] = {}
        for (routeName, status), v in now.routeStatus.items():
            totals[routeName] = totals.get(routeName, 0.0) + v
            if _isError(status):
                errors[routeName] = errors.get(routeName, 0.0) + v
        out = []
        caches = dict(routeCaches(self.target.gateway.runtime.routes.routes))
        # In the config's order, the order the operator wrote and reads them in.
        for route in sorted(self.target.gateway.runtime.routes.routes, key=lambda r: r.config.index):
            c = route.config
            key = (route.name,)
            latest = now.routeLatency.get(key, LatencyHistogram())
            recent = latest.minus(base.routeLatency.get(key))
            out.append({
                "name": route.name,
                "match": _matchText(route),
                "upstream": route.upstreamName,
                "auth": c.auth.name if c.auth is not None else None,
                "rate_limit": (f"{c.rate_limit.algorithm} {_rateText(c.rate_limit.rate)}"
                               if c.rate_limit is not None else None),
                "cache": c.cache is not None,
                "requests": int(totals.get(route.name, 0)),
                "errors": int(errors.get(route.name, 0)),
                "rate": round(recent.count / span, 3),
                "latency_ms": _latency(recent),
                "rate_limited": int(limited.get(key, 0)),
                "auth_failures": int(authFailed.get(key, 0)),
                "cache_results": (results := {r: int(v) for (name, r), v in sorted(cache.items())
                                              if name == route.name}),
                "cache_store": cacheStats(caches[route.name], results) if route.name in caches else None,
            })
        return out

    def _upstreams(self, span: float, base: Snapshot, now: Snapshot, health: dict[str, Any]) -> list[dict[str, Any]]:
        metrics = self.target.metrics
        retries = counters(metrics.retries, ("upstream",))
        totals: dict[tuple[str, str], float] = {}
        errors: dict[tuple[str, str], float] = {}
        for (upstream, target, status), v in now.targetStatus.items():
            k = (upstream, target)
            totals[k] = totals.get(k, 0.0) + v
            if _isError(status):
                errors[k] = errors.get(k, 0.0) + v
        out = []
        for name, cluster in self.target.gateway.runtime.clusters.items():
            report = health["upstreams"].get(name, {"usable": False, "targets": []})
            byURL = {t["url"]: t for t in report["targets"]}
            targets = []
            for e in endpointsOf(cluster):
                t = byURL.get(e.url, {})
                k = (name, e.url)
                recent = now.targetLatency.get(k, LatencyHistogram()).minus(base.targetLatency.get(k))
                targets.append({
                    "url": e.url,
                    "weight": e.weight,
                    # A target out of rotation (drained, retiring) is not in the health report: ask it.
                    "healthy": bool(t.get("healthy", e.healthy(self.clock.seconds()))),
                    "circuit": t.get("circuit", "closed"),
                    "in_flight": e.inFlight,
                    "requests": int(totals.get(k, 0)),
                    "errors": int(errors.get(k, 0)),
                    "rate": round(recent.count / span, 3),
                    "latency_ms": _latency(recent),
                    # Discovery and runtime control (txgateway.membership).
                    "host_port": e.netloc.decode("ascii"),
                    "source": e.source,
                    "state": e.state,
                    "configured_weight": e.configuredWeight,
                })
            out.append({
                "name": name,
                "balancer": cluster.config.balancer,
                "usable": bool(report["usable"]),
                "degraded": name in health["degraded"],
                "retries": int(retries.get((name,), 0)),
                "concurrency": admissionReport(cluster),  # issue 24: None without a limit
                "targets": targets,
                "sources": cluster.membership.sourcesReport() if cluster.membership is not None else [],
                "runtime_overrides": len(cluster.membership.overrides) if cluster.membership is not None else 0,
            })
        return out


__all__ = ["AdminTarget", "StatusReport"]
