# -*- test-case-name: tests.test_health -*-
"""
Health checking: active probes and passive outlier detection.

Both checks write their verdict onto the L{Endpoint} (C{activeHealthy},
C{ejectedUntil}) and L{Cluster.choose} reads only that, so the request
path never asks a checker anything.  Endpoints outlive reloads, and with
them the verdicts: a reload that keeps a target keeps its health.

How the two checks meet:

  - The active check owns C{activeHealthy}: C{unhealthy_after}
    consecutive failed probes clear it, C{healthy_after} consecutive good
    ones set it again.  One bad probe never flips a target.
  - The passive check owns C{ejectedUntil}.  Without an active check an
    ejection is timed (C{eject_for}) and ends lazily, by the clock.  With
    an active check the ejection has no end time of its own: it lasts
    until the active check has seen C{healthy_after} consecutive good
    probes I{after} the ejection, so a target that is failing real traffic
    comes back only once it has been seen to answer again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger
from zope.interface import implementer

from txgateway.interfaces import IPassiveHealth

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster, Endpoint
    from txgateway.config import PassiveHealth
    from txgateway.observe import Metrics

__all__ = ["PassiveHealthCheck", "WINDOW_BUCKETS", "passiveFor", "publish", "readmit"]

log = Logger(namespace="txgateway.health")

# Passive windows are kept as this many time buckets: memory per target is
# fixed whatever the traffic, and the window slides in steps of window/10.
WINDOW_BUCKETS = 10


def publish(metrics: Metrics, cluster: Cluster, endpoint: Endpoint, to: str, now: float) -> None:
    """One state change of one target, in the metrics."""
    metrics.targetHealthy.labels(cluster.name, endpoint.url).set(1 if endpoint.healthy(now) else 0)
    metrics.healthTransitions.labels(cluster.name, endpoint.url, to).inc()


class _Window:
    """Outcomes of one target in C{WINDOW_BUCKETS} time buckets: fixed memory, no timers."""

    __slots__ = ("epochs", "totals", "errors")

    def __init__(self) -> None:
        self.epochs = [-1] * WINDOW_BUCKETS
        self.totals = [0] * WINDOW_BUCKETS
        self.errors = [0] * WINDOW_BUCKETS

    def reset(self) -> None:
        for k in range(WINDOW_BUCKETS):
            self.epochs[k] = -1
            self.totals[k] = 0
            self.errors[k] = 0


@implementer(IPassiveHealth)
class PassiveHealthCheck:
    """
    Outlier detection on real traffic: eject a target whose error rate over
    the last C{window} is above C{max_error_rate} once it has served at
    least C{min_requests} in that window.

    The window slides in tenths (buckets of C{window / 10}); the verdict is
    computed only when an error is recorded, since a success can only lower
    the rate.  Windows restart on a reload; ejections (on the Endpoint) do
    not.
    """

    def __init__(self, cluster: Cluster, clock: IReactorTime, metrics: Metrics, config: PassiveHealth,
                 confirmedByActive: bool) -> None:
        self.cluster = cluster
        self.clock = clock
        self.metrics = metrics
        self.config = config
        # With an active check, an ejection lasts until that check vouches
        # for the target again (see the module docstring).
        self.confirmedByActive = confirmedByActive
        self._width = config.window / WINDOW_BUCKETS
        self._windows: dict[Endpoint, _Window] = {}
        # With server.workers, tells the other workers (txgateway.fleet.sharing),
        # which count this outcome through tally(): one worker's evidence counts for all.
        self.share: Callable[[Endpoint, bool], None] | None = None

    def isHealthy(self, endpoint: Endpoint) -> bool:
        now = self.clock.seconds()
        until = endpoint.ejectedUntil
        if until and now >= until:
            readmit(self.cluster, endpoint, self.metrics, now, "ejection period over", self)
        return now >= endpoint.ejectedUntil

    def record(self, endpoint: Endpoint, ok: bool) -> None:
        if self.share is not None:
            self.share(endpoint, ok)
        self.tally(endpoint, ok)

    def tally(self, endpoint: Endpoint, ok: bool) -> None:
        """Count one outcome, of a request sent here or (with workers) by another worker."""
        now = self.clock.seconds()
        until = endpoint.ejectedUntil
        if until:
            if now < until:
                return  # already out; answers to requests sent before the ejection add nothing
            readmit(self.cluster, endpoint, self.metrics, now, "ejection period over", self)
        window = self._windows.get(endpoint)
        if window is None:
            window = self._windows[endpoint] = _Window()
        idx = int(now // self._width)
        slot = idx % WINDOW_BUCKETS
        if window.epochs[slot] != idx:
            window.epochs[slot] = idx
            window.totals[slot] = 0
            window.errors[slot] = 0
        window.totals[slot] += 1
        if ok:
            return
        window.errors[slot] += 1
        total, errors = self.counts(endpoint, now)
        config = self.config
        if total >= config.min_requests and errors > config.max_error_rate * total:
            self._eject(endpoint, now, total, errors)

    def counts(self, endpoint: Endpoint, now: float | None = None) -> tuple[int, int]:
        """(requests, errors) of C{endpoint} in the current window."""
        window = self._windows.get(endpoint)
        if window is None:
            return 0, 0
        if now is None:
            now = self.clock.seconds()
        oldest = int(now // self._width) - WINDOW_BUCKETS + 1
        total = errors = 0
        epochs, totals, errs = window.epochs, window.totals, window.errors
        for k in range(WINDOW_BUCKETS):
            if epochs[k] >= oldest:
                total += totals[k]
                errors += errs[k]
        return total, errors

    def forget(self, endpoint: Endpoint) -> None:
        """Start C{endpoint}'s window afresh (after an ejection or a re-admission)."""
        window = self._windows.get(endpoint)
        if window is not None:
            window.reset()

    def _eject(self, endpoint: Endpoint, now: float, total: int, errors: int) -> None:
        config = self.config
        if self.confirmedByActive:
            endpoint.ejectedUntil = math.inf
            until = "the active health check passes again"
        else:
            endpoint.ejectedUntil = now + config.eject_for
            until = f"{config.eject_for:g}s have passed"
        self.forget(endpoint)
        log.warn("ejecting target {target} of {upstream}: {errors} of {total} requests failed in the last "
                 "{window:g}s (more than {rate:.0%}); it is back when {until}",
                 target=endpoint.url, upstream=self.cluster.name, errors=errors, total=total,
                 window=config.window, rate=config.max_error_rate, until=until)
        publish(self.metrics, self.cluster, endpoint, "ejected", now)


def readmit(cluster: Cluster, endpoint: Endpoint, metrics: Metrics, now: float, why: str,
            passive: PassiveHealthCheck | None = None) -> None:
    """
    End C{endpoint}'s passive ejection, logging and counting it once.

    Shared by the timed re-admission (lazy, when the passive check next
    looks at the target) and the active checker's confirmation.
    """
    if not endpoint.ejectedUntil:
        return
    endpoint.ejectedUntil = 0.0
    if passive is None and isinstance(cluster.passive, PassiveHealthCheck):
        passive = cluster.passive
    if passive is not None:
        passive.forget(endpoint)
    log.info("target {target} of {upstream} re-admitted: {why}", target=endpoint.url, upstream=cluster.name, why=why)
    publish(metrics, cluster, endpoint, "readmitted", now)


def passiveFor(cluster: Cluster, clock: IReactorTime, metrics: Metrics) -> IPassiveHealth | None:
    """
    The upstream's passive checker (fed by real traffic), or None when not
    configured.

    Also settles ejections inherited across a reload: with no passive check
    any more they end now; an open-ended one (made while an active check
    existed) becomes timed when the active check is gone.
    """
    health = cluster.config.health
    now = clock.seconds()
    if health.passive is None:
        for e in cluster.endpoints:
            if e.ejectedUntil:
                readmit(cluster, e, metrics, now, "passive health check no longer configured")
        return None
    confirmed = health.active is not None
    checker = PassiveHealthCheck(cluster, clock, metrics, health.passive, confirmed)
    if not confirmed:
        for e in cluster.endpoints:
            if e.ejectedUntil == math.inf:
                e.ejectedUntil = now + health.passive.eject_for
    return checker
