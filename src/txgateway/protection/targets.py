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

A target's limit is made the first time it is asked about, so a target
discovered at run time is limited from its first request; a target that
leaves the rotation (removed, drained, disabled) loses its limit and, back,
starts afresh.  A target that is unhealthy or whose breaker is open adds
nothing to the sum: the upstream admits no more than the targets that may
serve can take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import implementer

from txgateway.concurrency.build import makeLimit
from txgateway.concurrency.interfaces import IConcurrencyLimit, Outcome
from txgateway.concurrency.queue import outcomeFor

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster, Endpoint
    from txgateway.concurrency.specs import AdaptiveSpec, FixedSpec
    from txgateway.observe import Metrics

__all__ = ["TargetLimits", "forgetTargetLimits", "publishTargetLimits"]


@implementer(IConcurrencyLimit)
class TargetLimits:
    """
    Each target's own limit, by URL, and the upstream's admission limit
    under C{per_target}: the sum of its usable targets' limits (at least 1).
    As the upstream's limit it learns nothing itself (L{onSample} is a
    no-op): each target's limit hears that target's leases (L{sample}).

    C{cluster} is the cluster now in charge; a reload that keeps the spec
    keeps this object (and what each target's limit learnt) and points it
    at the new cluster.  A new spec is a new object, whose limits start
    afresh; the cluster holds it as C{targetLimits}, so nothing of an old
    spec is left on the targets.
    """

    def __init__(self, cluster: Cluster, spec: FixedSpec | AdaptiveSpec, clock: IReactorTime) -> None:
        self.cluster = cluster
        self.spec = spec
        self.clock = clock
        self.byURL: dict[str, IConcurrencyLimit] = {}

    def limitOf(self, e: Endpoint) -> IConcurrencyLimit:
        """The target's own limit, made when it is first asked for (a target discovered at run time)."""
        limit = self.byURL.get(e.url)
        if limit is None:
            limit = self.byURL[e.url] = makeLimit(self.spec, self.clock)
        return limit

    def hasRoom(self, e: Endpoint) -> bool:
        """Whether the target is under its own limit (L{Cluster.choose} passes over it otherwise)."""
        return e.inFlight < self.limitOf(e).limit

    def sample(self, e: Endpoint, latency: float, verdict: str | int) -> None:
        """One attempt's verdict on the target (its lease's record): what its adaptive limit learns from."""
        self.limitOf(e).onSample(latency, outcomeFor((verdict,)), e.inFlight)

    def forget(self, keep: set[str]) -> None:
        """Drop the limits of targets no longer in the upstream."""
        for url in [u for u in self.byURL if u not in keep]:
            del self.byURL[url]

    @property
    def limit(self) -> int:
        now = self.clock.seconds()
        total = 0
        every = 0
        for e in self.cluster.endpoints:
            n = int(self.limitOf(e).limit)
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
    (after each admission change); with C{prune} (its targets changed), also
    remove the series of its targets that are gone.
    """
    limits = cluster.targetLimits
    if limits is None:
        return
    gauge = metrics.targetConcurrencyLimit
    name = cluster.name
    for e in cluster.endpoints:
        gauge.labels(name, e.url).set(limits.limitOf(e).limit)
    if prune:
        present = {e.url for e in cluster.endpoints}
        limits.forget(present)
        _removeSeries(metrics, name, present)


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
