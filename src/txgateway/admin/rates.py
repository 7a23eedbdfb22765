# -*- test-case-name: tests.test_admin -*-
"""
Rates and latency percentiles from the gateway's own Prometheus registry.

The request path keeps one set of counters (the ones C{/metrics}
exports); the status page derives rates and percentiles from two
snapshots of them a window apart, taken lazily when someone asks, so no
timer runs for it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IReactorTime

from txgateway.observe import LATENCY_BUCKETS, Metrics
from txgateway.observe.metrics import histogramQuantile

_BOUNDS = (*LATENCY_BUCKETS, float("inf"))


class LatencyHistogram:
    """Count, sum and cumulative bucket counts of one histogram series (or a sum of several)."""

    __slots__ = ("count", "total", "buckets")

    def __init__(self) -> None:
        self.count = 0.0
        self.total = 0.0
        self.buckets = [0.0] * len(_BOUNDS)

    def minus(self, other: LatencyHistogram | None) -> LatencyHistogram:
        out = LatencyHistogram()
        if other is None:
            other = LatencyHistogram()
        out.count = self.count - other.count
        out.total = self.total - other.total
        out.buckets = [a - b for a, b in zip(self.buckets, other.buckets, strict=True)]
        return out

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding rank C{q}, as PromQL's histogram_quantile does."""
        return histogramQuantile(_BOUNDS, self.buckets, self.count, q)

    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None


def histograms(family: Any, keyLabels: tuple[str, ...]) -> dict[tuple[str, ...], LatencyHistogram]:
    out: dict[tuple[str, ...], LatencyHistogram] = {}
    index = {b: i for i, b in enumerate(_BOUNDS)}
    for name, labels, value in Metrics.samples(family):
        key = tuple(labels.get(k, "") for k in keyLabels)
        h = out.get(key)
        if h is None:
            h = out[key] = LatencyHistogram()
        if name.endswith("_count"):
            h.count += value
        elif name.endswith("_sum"):
            h.total += value
        elif name.endswith("_bucket"):
            i = index.get(float(labels["le"]))
            if i is not None:
                h.buckets[i] += value
    return out


def counters(family: Any, keyLabels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Sums of a counter family's series grouped by C{keyLabels}."""
    out: dict[tuple[str, ...], float] = {}
    for name, labels, value in Metrics.samples(family):
        if not name.endswith("_total"):
            continue
        key = tuple(labels.get(k, "") for k in keyLabels)
        out[key] = out.get(key, 0.0) + value
    return out


class Snapshot:
    """The registry's numbers the status page uses, at one moment."""

    def __init__(self, metrics: Metrics | None) -> None:
        if metrics is None:  # the zero baseline
            self.routeLatency: dict[tuple[str, ...], LatencyHistogram] = {}
            self.routeStatus: dict[tuple[str, ...], float] = {}
            self.targetLatency: dict[tuple[str, ...], LatencyHistogram] = {}
            self.targetStatus: dict[tuple[str, ...], float] = {}
            return
        self.routeLatency = histograms(metrics.requestDuration, ("route",))
        self.routeStatus = counters(metrics.requests, ("route", "status"))
        self.targetLatency = histograms(metrics.upstreamDuration, ("upstream", "target"))
        self.targetStatus = counters(metrics.upstreamRequests, ("upstream", "target", "status"))


class RateWindow:
    """
    Rates over roughly the last C{window} seconds, from snapshots kept as they are asked for.

    A snapshot is kept at most once a second; the oldest one still inside
    the window is the baseline.  Until a baseline exists (the first look),
    the baseline is zero at start-up, so the first answer is the average
    since the gateway started.
    """

    def __init__(self, clock: IReactorTime, window: float = 60.0) -> None:
        self.clock = clock
        self.window = window
        self.samples: deque[tuple[float, Snapshot]] = deque([(clock.seconds(), Snapshot(None))])

    def sample(self, metrics: Metrics) -> tuple[float, Snapshot, Snapshot]:
        """(seconds covered, baseline, now)."""
        now = self.clock.seconds()
        current = Snapshot(metrics)
        samples = self.samples
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        base_t, base = samples[0]
        if now - samples[-1][0] >= 1.0:
            samples.append((now, current))
        # At least a second: a rate over a few milliseconds says nothing.
        return max(now - base_t, 1.0), base, current


__all__ = ["LatencyHistogram", "RateWindow", "Snapshot", "counters", "histograms"]
