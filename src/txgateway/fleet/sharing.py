# -*- test-case-name: tests.test_fleet_sharing -*-
"""
A worker's health and breakers, shared with the other workers.

Evidence, not verdicts, travels: each outcome a worker records on a
target (success or failure) is passed to every other worker, which counts
it in its own passive window and breaker streak as if it had seen it.
So every worker reaches an ejection or an open breaker after the same
number of failed requests as a single gateway would, whichever worker
sent them.  Verdicts travel only where counting cannot agree:

  - an open breaker is announced (C{brk}), so a worker whose streak was
    broken by a success another saw first opens too;
  - the half-open probe is the prober's alone (only one in flight per
    target across workers); its verdict, closed or open again, is announced;
  - the active check runs in the prober only, which announces each verdict
    (C{health}); the others take it as their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from txgateway.breaking import CLOSED, HALF_OPEN, OPEN
from txgateway.health import PassiveHealthCheck, publish, readmit
from txgateway.interfaces import IBreaker

if TYPE_CHECKING:
    from txgateway.cluster import Cluster, Endpoint
    from txgateway.fleet.member import FleetMember

__all__ = ["SharedBreaker", "applyBreaker", "applyHealth", "applyOutcomes", "shareRuntime"]


@implementer(IBreaker)
class SharedBreaker:
    """One target's breaker in one worker, kept in step with the others'."""

    __slots__ = ("inner", "member", "upstream", "url", "applying", "observer")

    def __init__(self, inner: Any, member: FleetMember, upstream: str, url: str) -> None:
        self.inner = inner
        self.member = member
        self.upstream = upstream
        self.url = url
        self.applying = False
        self.observer = inner.onTransition
        inner.onTransition = self._moved

    @property
    def state(self) -> str:
        return self.inner.state  # type: ignore[no-any-return]

    def allow(self) -> bool:
        if self.inner.state == HALF_OPEN and not self.member.isProber:
            return False  # the prober holds the one half-open probe of this target
        return self.inner.allow()  # type: ignore[no-any-return]

    def recordSuccess(self) -> None:
        self.member.outcome(self.upstream, self.url, True)
        self.inner.recordSuccess()

    def recordFailure(self) -> None:
        self.member.outcome(self.upstream, self.url, False)
        self.inner.recordFailure()

    def release(self) -> None:
        self.inner.release()

    def retryAfter(self) -> float:
        return self.inner.retryAfter()  # type: ignore[no-any-return]

    def adopt(self, state: str) -> None:
        self.applying = True
        try:
            self.inner.adopt(state)
        finally:
            self.applying = False

    def counted(self, ok: bool) -> None:
        """An outcome another worker saw: count it, announcing nothing."""
        self.applying = True
        try:
            if ok:
                self.inner.recordSuccess()
            else:
                self.inner.recordFailure()
        finally:
            self.applying = False

    def _moved(self, old: str, new: str) -> None:
        if self.observer is not None:
            self.observer(old, new)
        if self.applying:
            return
        if new == OPEN or (new == CLOSED and old == HALF_OPEN):
            self.member.send({"t": "brk", "u": self.upstream, "url": self.url, "state": new})


class _Rewrap:
    """Kept in a cluster's C{onTargetsChanged}: targets added later (discovery, admin) are shared too."""

    def __init__(self, cluster: Cluster, member: FleetMember) -> None:
        self.cluster = cluster
        self.member = member

    def __call__(self) -> None:
        _shareEndpoints(self.cluster, self.member)


def shareRuntime(runtime: Any, member: FleetMember) -> None:
    """Hook every cluster of a (new) runtime to the fleet; idempotent."""
    for cluster in runtime.clusters.values():
        passive = cluster.passive
        if isinstance(passive, PassiveHealthCheck) and passive.share is None:
            passive.share = _passiveSharer(cluster, member)
        _shareEndpoints(cluster, member)
        if not any(isinstance(h, _Rewrap) for h in cluster.onTargetsChanged):
            cluster.onTargetsChanged.append(_Rewrap(cluster, member))


def _shareEndpoints(cluster: Cluster, member: FleetMember) -> None:
    for e in cluster.endpoints:
        if e.breaker is not None and not isinstance(e.breaker, SharedBreaker) and hasattr(e.breaker, "adopt"):
            e.breaker = SharedBreaker(e.breaker, member, cluster.name, e.url)


def _passiveSharer(cluster: Cluster, member: FleetMember) -> Any:
    name = cluster.name

    def share(endpoint: Endpoint, ok: bool) -> None:
        if not isinstance(endpoint.breaker, SharedBreaker):  # else the breaker already told the others
            member.outcome(name, endpoint.url, ok)

    return share


def _find(runtime: Any, upstream: str, url: str) -> tuple[Cluster | None, Endpoint | None]:
    cluster = runtime.clusters.get(upstream)
    if cluster is None:
        return None, None
    return cluster, cluster.endpointByURL(url)


def applyOutcomes(runtime: Any, upstream: str, url: str, ok: int, failed: int) -> None:
    """Outcomes another worker recorded on one target: successes first, then failures."""
    cluster, endpoint = _find(runtime, upstream, url)
    if cluster is None or endpoint is None:
        return  # a target this worker does not have (yet): nothing to count it on
    breaker = endpoint.breaker
    passive = cluster.passive
    for outcome, n in ((True, ok), (False, failed)):
        for _ in range(n):
            if isinstance(breaker, SharedBreaker):
                breaker.counted(outcome)
            if isinstance(passive, PassiveHealthCheck):
                passive.tally(endpoint, outcome)


def applyBreaker(runtime: Any, upstream: str, url: str, state: str) -> None:
    _, endpoint = _find(runtime, upstream, url)
    if endpoint is not None and isinstance(endpoint.breaker, SharedBreaker):
        endpoint.breaker.adopt(state)


def applyHealth(runtime: Any, metrics: Any, now: float, upstream: str, url: str, healthy: bool,
                ejected: bool) -> None:
    """The prober's verdict on one target, taken as this worker's own."""
    cluster, endpoint = _find(runtime, upstream, url)
    if cluster is None or endpoint is None:
        return
    if endpoint.activeHealthy != healthy:
        endpoint.activeHealthy = healthy
        publish(metrics, cluster, endpoint, "healthy" if healthy else "unhealthy", now)
    if not ejected and endpoint.ejectedUntil:
        readmit(cluster, endpoint, metrics, now, "the prober's active check passed since the ejection")


def verdictOf(cluster: Cluster, endpoint: Endpoint, now: float) -> dict[str, Any]:
    return {"t": "health", "u": cluster.name, "url": endpoint.url, "healthy": bool(endpoint.activeHealthy),
            "ejected": endpoint.ejectedUntil > now}
