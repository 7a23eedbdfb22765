# -*- test-case-name: tests.test_protection -*-
"""
Wiring the protections into a runtime: controllers per upstream, wrappers per route.

L{attachAdmission} gives each cluster whose upstream has C{concurrency} its
admission controller, keeping the running one across a reload
(L{rebuildAdmission}: the same controller for an unchanged spec, else a new
one that takes over the old one's permits and waiters, with an adaptive
limit kept when only the queue changed), so a reload neither empties the
queue nor lets two limits' worth of requests through.
L{retireAdmission} stops the controllers a reload dropped (their waiters
get 503 C{stopped}) once the new runtime is in; L{stopAdmission} stops
every one at shutdown, so waiters are answered at once instead of at the
drain deadline.

L{protect} builds a route's chain beneath its cache, outermost first:
coalescing, batching, admission, then the attempt loop.  Each wrapper
exists only on routes that use it, so a route without these keys pays
nothing.

Workers: with C{server.workers: N} every worker process has its own
controllers.  A limit is per worker (a fixed C{limit} of 8 with 4 workers
lets up to 32 in; divide it yourself, the docs say so); an adaptive limit
learns per worker from the same backend latency, and together the workers
settle where latency does, as per-instance limits do in Netflix's
concurrency-limits.  The gauges are summed over workers (C{livesum}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from txgateway.concurrency.build import rebuildAdmission
from txgateway.concurrency.specs import DEFAULT_KEY_HEADERS, CoalesceSpec
from txgateway.deadlines import totalTimeout
from txgateway.protection.admission import AdmissionForwarder
from txgateway.protection.batching import BatchingForwarder
from txgateway.protection.coalescing import CoalescingForwarder
from txgateway.protection.targets import TargetLimits, forgetTargetLimits, publishTargetLimits

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster
    from txgateway.concurrency.queue import AdmissionController
    from txgateway.interfaces import IForwarder
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

__all__ = ["attachAdmission", "protect", "retireAdmission", "stopAdmission"]


def attachAdmission(clusters: Mapping[str, Cluster], previous: Mapping[str, Cluster], clock: IReactorTime,
                    metrics: Metrics) -> None:
    """
    Give each cluster with a C{concurrency} spec its controller, carried
    over from C{previous}; with C{per_target}, each of its targets its own
    limit (see L{txgateway.protection.targets}).
    """
    for name, cluster in clusters.items():
        spec = cluster.config.concurrency
        old = previous.get(name)
        oldSpec = old.config.concurrency if old is not None else None
        if (spec is None or not spec.per_target) and oldSpec is not None and oldSpec.per_target:
            forgetTargetLimits(metrics, name)  # a limit per target no more
        if spec is None:
            continue
        running = None
        if old is not None and old.admission is not None and old.config.concurrency is not None:
            running = (old.config.concurrency, old.admission)
        cluster.admission = rebuildAdmission(running, spec, clock, _onWait(metrics, name), _onShed(metrics, name),
                                             partial(TargetLimits, cluster, spec.limit, clock)
                                             if spec.per_target else None)
        limiter = cluster.admission.limiter
        if isinstance(limiter, TargetLimits):
            limiter.cluster = cluster  # kept across the reload: the new cluster's targets are the ones summed
            cluster.targetLimits = limiter
            cluster.onTargetsChanged.append(partial(publishTargetLimits, metrics, cluster, True))
        _gauges(metrics, cluster)()


def retireAdmission(previous: Mapping[str, Cluster], current: Mapping[str, Cluster]) -> None:
    """Stop the controllers of C{previous} that C{current} no longer uses (an upstream or its limit removed)."""
    inUse = {id(c.admission) for c in current.values() if c.admission is not None}
    for name, c in previous.items():
        spec = c.config.concurrency
        if name not in current and spec is not None and spec.per_target and c.metrics is not None:
            forgetTargetLimits(c.metrics, name)
    for c in previous.values():
        if c.admission is not None and id(c.admission) not in inUse and c.admission.current is c.admission:
            c.admission.stop()


def stopAdmission(clusters: Mapping[str, Cluster]) -> None:
    """Shutdown: every waiter is answered 503 with Retry-After now."""
    for c in clusters.values():
        if c.admission is not None:
            c.admission.stop()


def protect(upstream: IForwarder, route: CompiledRoute, clock: IReactorTime, metrics: Metrics) -> IForwarder:
    """C{upstream} (the route's attempt loop) behind the route's admission, batching and coalescing."""
    cluster = route.cluster
    config = route.config
    rc = config.concurrency
    spec = cluster.config.concurrency
    controller: AdmissionController | None = cluster.admission
    if controller is not None and spec is not None:
        upstream = AdmissionForwarder(upstream, controller, spec.priority, cluster.name, _gauges(metrics, cluster))
    if rc.batch is not None:
        name = route.name
        upstream = BatchingForwarder(
            upstream, rc.batch, clock, totalTimeout(cluster.config) + rc.batch.max_wait,
            spec.priority if spec is not None else None,
            observe=_batchObserver(metrics, name),
            onFailure=lambda kind: metrics.batchFailures.labels(name, kind).inc())
    coalesce = rc.coalesce
    if coalesce is None and config.cache is not None:
        coalesce = CoalesceSpec(DEFAULT_KEY_HEADERS)  # GET/HEAD always coalesce where the cache is on
    if coalesce is not None:
        joined = metrics.coalesced.labels(route.name)
        upstream = CoalescingForwarder(upstream, coalesce, rc.idempotent_post, cluster.name, joined.inc)
    return upstream


def _batchObserver(metrics: Metrics, route: str) -> Callable[[int, float], None]:
    size = metrics.batchSize.labels(route)
    wait = metrics.batchWait.labels(route)

    def observe(items: int, waited: float) -> None:
        size.observe(items)
        wait.observe(waited)

    return observe


def _onWait(metrics: Metrics, upstream: str) -> Callable[[str, float], None]:
    children: dict[str, Any] = {}

    def onWait(cls: str, seconds: float) -> None:
        child = children.get(cls)
        if child is None:
            child = children[cls] = metrics.queueWait.labels(upstream, cls)
        child.observe(seconds)

    return onWait


def _onShed(metrics: Metrics, upstream: str) -> Callable[[str, str], None]:
    def onShed(cls: str, reason: str) -> None:
        metrics.shed.labels(upstream, reason).inc()

    return onShed


def _gauges(metrics: Metrics, cluster: Cluster) -> Callable[[], None]:
    """Sets the upstream's limit, in-flight and queue gauges from its controller (after each change)."""
    name = cluster.name
    limit = metrics.concurrencyLimit.labels(name)
    inFlight = metrics.concurrencyInFlight.labels(name)
    queues: dict[str, Any] = {}
    perTarget = cluster.config.concurrency is not None and cluster.config.concurrency.per_target

    def changed() -> None:
        controller = cluster.admission.current  # a reload may have handed its queue to a new one
        limit.set(controller.limit)
        if perTarget:
            publishTargetLimits(metrics, cluster)
        inFlight.set(controller.inFlight)
        for cls, n in controller.queuedByClass().items():
            child = queues.get(cls)
            if child is None:
                child = queues[cls] = metrics.queueLength.labels(name, cls)
            child.set(n)

    return changed
