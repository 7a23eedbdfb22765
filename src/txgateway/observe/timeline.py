# -*- test-case-name: tests.test_observe_timeline -*-
"""
The last 15 minutes, one point a second, for the status page's charts.

Fed once a second from the counters and histograms C{/metrics} exports
(nothing is added to the request path): each tick reads them, subtracts
the previous tick's reading and keeps, per series (the whole gateway, each
route, each target), requests per second, the error share and p50/p95/p99
latency; per route also rate-limit rejections per second and the cache hit
ratio; and breaker and health transitions as marks.  Everything lives in
fixed-size rings (C{deque(maxlen=...)}): memory does not grow with time.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txgateway.observe.metrics import histogramQuantile

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.observe.metrics import Metrics

__all__ = ["Timeline"]

log = Logger(namespace="txgateway")

CACHE_HITS = frozenset(("hit", "stale", "revalidated"))

# One series' reading: requests, errors, and cumulative latency buckets (upper bound -> count).
_Reading = tuple[float, float, dict[float, float]]


def _quantile(bounds: list[float], counts: list[float], q: float) -> float | None:
    """histogram_quantile over one tick's bucket deltas (cumulative), in seconds."""
    return histogramQuantile(bounds, counts, counts[-1] if counts else 0.0, q)


def _read(metrics: Metrics) -> dict[str, Any]:
    """Every number one tick needs, keyed by series."""
    series: dict[str, list[Any]] = {}

    def entry(key: str) -> list[Any]:
        e = series.get(key)
        if e is None:
            e = series[key] = [0.0, 0.0, {}]
        return e

    for metric in metrics.requests.collect():
        for s in metric.samples:
            if not s.name.endswith("_total"):
                continue
            err = s.value if s.labels["status"][:1] == "5" else 0.0
            for key in ("gateway", "route:" + s.labels["route"]):
                e = entry(key)
                e[0] += s.value
                e[1] += err
    for metric in metrics.requestDuration.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                for key in ("gateway", "route:" + s.labels["route"]):
                    b = entry(key)[2]
                    b[le] = b.get(le, 0.0) + s.value
    for metric in metrics.upstreamRequests.collect():
        for s in metric.samples:
            if not s.name.endswith("_total"):
                continue
            e = entry(f"target:{s.labels['upstream']} {s.labels['target']}")
            e[0] += s.value
            status = s.labels["status"]
            if not (status.isdigit() and int(status) < 500) and status != "cancelled":
                e[1] += s.value
    for metric in metrics.upstreamDuration.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                b = entry(f"target:{s.labels['upstream']} {s.labels['target']}")[2]
                le = float(s.labels["le"])
                b[le] = b.get(le, 0.0) + s.value
    limited: dict[str, float] = {}
    for metric in metrics.rateLimited.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                limited[s.labels["route"]] = limited.get(s.labels["route"], 0.0) + s.value
    cache: dict[str, list[float]] = {}
    for metric in metrics.cacheRequests.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                c = cache.setdefault(s.labels["route"], [0.0, 0.0])
                c[1] += s.value
                if s.labels["result"] in CACHE_HITS:
                    c[0] += s.value
    transitions: dict[tuple[str, str, str, str], float] = {}
    for kind, family in (("breaker", metrics.breakerTransitions), ("health", metrics.healthTransitions)):
        for metric in family.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    transitions[(kind, s.labels["upstream"], s.labels["target"], s.labels["to"])] = s.value
    return {"series": series, "limited": limited, "cache": cache, "transitions": transitions}


class Timeline(Service):
    """A ring of per-second points over the last C{size} seconds, and a ring of state-change marks."""

    name = "timeline"

    def __init__(self, metrics: Metrics, clock: IReactorTime, size: int = 900, step: float = 1.0) -> None:
        self.metrics = metrics
        self.clock = clock
        self.size = size
        self.step = step
        # (time, {series: (rps, error share, p50, p95, p99)}, {route: (429/s, cache hit ratio)})
        self.points: deque[tuple[float, dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]] = deque(maxlen=size)
        self.marks: deque[dict[str, Any]] = deque(maxlen=200)
        self._last: dict[str, Any] | None = None
        self._lastTime = 0.0
        self.loop = LoopingCall(self.tick)
        self.loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._last = _read(self.metrics)
        self._lastTime = self.clock.seconds()
        self.loop.start(self.step, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self.loop.running:
            self.loop.stop()

    def tick(self) -> None:
        """Take one point (run by the loop; logs instead of raising, which would stop it)."""
        try:
            self._tick()
        except Exception:
            log.failure("the status timeline could not take a point")

    def _tick(self) -> None:
        now = self.clock.seconds()
        reading = _read(self.metrics)
        last = self._last if self._last is not None else {"series": {}, "limited": {}, "cache": {},
                                                           "transitions": {}}
        span = max(now - self._lastTime, 1e-6)
        self._last, self._lastTime = reading, now
        series: dict[str, tuple[Any, ...]] = {}
        for key, (count, errors, buckets) in reading["series"].items():
            before = last["series"].get(key, (0.0, 0.0, {}))
            dn = count - before[0]
            bounds = sorted(buckets)
            deltas = [buckets[b] - before[2].get(b, 0.0) for b in bounds]
            series[key] = (
                round(max(dn, 0.0) / span, 3),
                round((errors - before[1]) / dn, 4) if dn > 0 else None,
                *(_ms(_quantile(bounds, deltas, q)) for q in (0.5, 0.95, 0.99)),
            )
        routes: dict[str, tuple[Any, ...]] = {}
        for route in set(reading["limited"]) | set(reading["cache"]):
            limited = reading["limited"].get(route, 0.0) - last["limited"].get(route, 0.0)
            hits, total = reading["cache"].get(route, (0.0, 0.0))
            hits0, total0 = last["cache"].get(route, (0.0, 0.0))
            lookups = total - total0
            routes[route] = (round(limited / span, 3), round((hits - hits0) / lookups, 4) if lookups > 0 else None)
        for key, value in reading["transitions"].items():
            if value > last["transitions"].get(key, 0.0):
                kind, upstream, target, to = key
                self.marks.append({"t": now, "kind": kind, "upstream": upstream, "target": target, "to": to})
        self.points.append((now, series, routes))

    def document(self, since: float | None = None) -> dict[str, Any]:
        """
        The rings as columns: C{t} (times), then per series C{rps}, C{err},
        C{p50}, C{p95}, C{p99} (milliseconds) and per route C{limited} and
        C{cache_hit}, each a list aligned with C{t} (None where there was
        nothing to measure).  With C{since}, only points after that time.
        """
        points = [p for p in self.points if since is None or p[0] > since]
        keys: set[str] = set()
        routeKeys: set[str] = set()
        for _, series, routes in points:
            keys.update(series)
            routeKeys.update(routes)
        out: dict[str, Any] = {}
        for key in sorted(keys):
            cols: dict[str, list[Any]] = {"rps": [], "err": [], "p50": [], "p95": [], "p99": []}
            for _, series, _routes in points:
                v = series.get(key)
                for i, name in enumerate(("rps", "err", "p50", "p95", "p99")):
                    cols[name].append(None if v is None else v[i])
            out[key] = cols
        routesOut: dict[str, Any] = {}
        for route in sorted(routeKeys):
            cols = {"limited": [], "cache_hit": []}
            for _, _series, routes in points:
                v = routes.get(route)
                cols["limited"].append(None if v is None else v[0])
                cols["cache_hit"].append(None if v is None else v[1])
            routesOut[route] = cols
        return {
            "now": self.clock.seconds(), "step": self.step, "size": self.size,
            "t": [p[0] for p in points], "series": out, "routes": routesOut,
            "marks": [m for m in self.marks if since is None or m["t"] > since],
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
