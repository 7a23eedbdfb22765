# -*- test-case-name: tests.test_protection_targets -*-
"""
Per-target concurrency limits (C{upstreams.NAME.concurrency.per_target: true}).

An upstream of several replicas is not one backend: a replica on a slower
GPU, or one busy with another tenant, serves fewer requests at once than its
neighbours.  With C{per_target}, each target (each L{Endpoint}) gets its own
limit of the upstream's kind (a fixed C{limit} each, or an adaptive limit
that learns from that target's own latency, fed by its leases' verdicts in
L{txgateway.cluster.Lease.record}), and:

  - L{Cluster.choose} passes over a target at its own limit while another
    has room, so a slow replica gets fewer requests instead of a share of
    them all;
  - the queue stays per upstream (one FIFO, one priority order, one
    C{Retry-After}): its limit, L{TargetLimits}, is the sum of the usable
    targets' limits, so a request waits only when every target is full;
  - C{txgateway_target_concurrency_limit{upstream,target}} shows each
    target's limit; its series go when the target goes (discovery, the
    admin API, a reload).

Limits are made lazily, the first time the sum is read after a target
joined, so a target discovered at run time is limited from its first
request.  A target out of rotation (unhealthy, its breaker open) adds
nothing to the sum: the upstream admits no more than the targets that may
serve can take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import implementer

from txgateway.concurrency.build import makeLimit
from txgateway.concurrency.interfaces import IConcurrencyLimit, Outcome

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster
    from txgateway.concurrency.specs import AdaptiveSpec, FixedSpec
    from txgateway.observe import Metrics

__all__ = ["TargetLimits", "forgetTargetLimits", "publishTargetLimits"]


@implementer(IConcurrencyLimit)
class TargetLimits:
    """
    The upstream's admission limit under C{per_target}: the sum of its
    usable targets' own limits (at least 1).  It learns nothing itself
    (L{onSample} is a no-op): each target's limit hears its own leases.

    C{cluster} is the cluster now in charge; a reload that keeps the spec
    keeps this object and points it at the new cluster.
    """

    def __init__(self, cluster: Cluster, spec: FixedSpec | AdaptiveSpec, clock: IReactorTime) -> None:
        self.cluster = cluster
        self.spec = spec
        self.clock = clock
        for e in cluster.endpoints:
            e.limiter = None  # made afresh, of this spec, when next summed

    @property
    def limit(self) -> int:
        now = self.clock.seconds()
        total = 0
        every = 0
        for e in self.cluster.endpoints:
            limiter = e.limiter
            if limiter is None:
                limiter = e.limiter = makeLimit(self.spec, self.clock)
            n = int(limiter.limit)
            every += n
            if e.healthy(now) and (e.breaker is None or e.breaker.state != "open"):
                total += n
        # None usable: admit as if all were, and let choose answer (503 no target, or fail_open).
        return max(1, total or every)

    def onSample(self, latency: float, outcome: Outcome, inFlight: int) -> None:
        pass

    def __repr__(self) -> str:
        return f"<TargetLimits of {self.cluster.name}: {self.limit}>"


def publishTargetLimits(metrics: Metrics, cluster: Cluster, prune: bool = False) -> None:
    """
    Set C{txgateway_target_concurrency_limit} for each target of C{cluster}
    that has a limit (after each admission change); with C{prune} (its
    targets changed), also remove the series of its targets that are gone.
    """
    gauge = metrics.targetConcurrencyLimit
    name = cluster.name
    for e in cluster.endpoints:
        if e.limiter is not None:
            gauge.labels(name, e.url).set(e.limiter.limit)
    if prune:
        _removeSeries(metrics, name, {e.url for e in cluster.endpoints})


def forgetTargetLimits(metrics: Metrics, upstream: str) -> None:
    """The upstream, or its per-target limits, were removed: so are their series."""
    _removeSeries(metrics, upstream, set())


def _removeSeries(metrics: Metrics, upstream: str, keep: set[str]) -> None:
    gauge = metrics.targetConcurrencyLimit
    for _, labels, _ in metrics.samples(gauge):
        if labels.get("upstream") == upstream and labels.get("target") not in keep:
            try:
                gauge.remove(upstream, labels["target"])
            except KeyError:
                pass
