# -*- test-case-name: tests.test_membership -*-
"""
Which targets an upstream has right now: static, discovered, and changed at run time (issue 22).

A L{Cluster} chooses among C{cluster.endpoints}; this module keeps that
tuple current as discovery sources deliver new answers and as the admin API
drains, disables, enables or re-weights a target.  The tuple is swapped in
one assignment, so a request never sees half a change.

  - Targets that stay keep their L{Endpoint} object, hence their health,
    breaker, in-flight count and balancer state (smooth-WRR weights, ring
    points derived from the URL: consistent hashing moves only the keys of
    the targets that changed).
  - A new target, added while the upstream already had some, is gated by
    the active health check when there is one (it takes traffic after
    C{healthy_after} good probes) and ramps up over C{slow_start}.
  - A target that leaves, or is drained or disabled, is taken out of
    C{cluster.endpoints} at once: no new request or retry picks it, the
    requests holding its lease finish, and when the last one ends its idle
    pooled connections are closed.
  - Runtime changes are kept as overrides by URL, re-applied when discovery
    re-delivers the target, and dropped by the next config reload (which
    says so: see L{describeOverrides}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txgateway import breaking
from txgateway.cluster import Endpoint
from txgateway.config import Target
from txgateway.discovery.interfaces import DiscoveredTarget, ITargetSource, Targets
from txgateway.discovery.slowstart import slowStartFraction

if TYPE_CHECKING:
    from txgateway.cluster import Cluster
    from txgateway.observe import Metrics

__all__ = ["ACTIVE", "DISABLED", "DRAINING", "Membership", "describeOverrides"]

log = Logger(namespace="txgateway.discovery")

ACTIVE, DRAINING, DISABLED, RETIRING = "active", "draining", "disabled", "retiring"
STATES = (ACTIVE, DRAINING, DISABLED, RETIRING)

#: While a target ramps, every weight is multiplied by this, so a target of
#: weight 1 can still start at a tenth of its share (weights stay whole numbers).
RAMP_SCALE = 10
RAMP_TICK = 1.0

BreakerObserver = Callable[[Any, str, Endpoint], Callable[[str, str], None]]


class Membership:
    """
    The target set of one cluster: static targets, each source's latest
    answer in item order, then the runtime overrides.  Made by
    L{txgateway.discovering} for every cluster of a runtime.
    """

    def __init__(self, cluster: Cluster, clock: IReactorTime, metrics: Metrics | None,
                 breakerObserver: BreakerObserver | None = None, previous: Membership | None = None,
                 pool: Any = None) -> None:
        self.cluster = cluster
        # The connection pool whose idle connections to a retired target are closed (the cluster's by default).
        self.pool = pool if pool is not None else getattr(cluster, "pool", None)
        self.clock = clock
        self.metrics = metrics
        self.breakerObserver = breakerObserver
        self.static: tuple[Endpoint, ...] = cluster.endpoints
        for e in self.static:
            e.source, e.state, e.onIdle = "static", ACTIVE, None
            e.configuredWeight = e.weight
        self.sources: list[ITargetSource] = []
        self.answers: list[Targets] = []
        self._unsubscribe: list[Callable[[], None]] = []
        #: every current target by URL, whatever its state (the active ones are cluster.endpoints)
        self.members: dict[str, Endpoint] = {e.url: e for e in self.static}
        #: targets gone from the set with requests still in flight
        self.retiring: dict[str, Endpoint] = {}
        #: url -> (state, weight or None): the admin API's changes, until the next reload
        self.overrides: dict[str, tuple[str, int | None]] = {}
        self._known: dict[str, Endpoint] = dict(previous.members) if previous is not None else {}
        if previous is not None and previous.cluster.config.circuit_breaker != cluster.config.circuit_breaker:
            for e in self._known.values():
                e.breaker = self._breaker(e)  # as the service does for static targets on such a reload
        # Made at start-up (not by a reload): each source's first answer is part of the start, not ramped.
        self._startup = previous is None
        self._rampTimer: IDelayedCall | None = None
        cluster.membership = self

    # -- discovery

    def attach(self, sources: Sequence[ITargetSource]) -> None:
        """Follow C{sources} (in item order), starting from what each already knows."""
        self.sources = list(sources)
        self.answers = [s.targets for s in sources]
        for i, s in enumerate(sources):
            self._unsubscribe.append(s.subscribe(self._listener(i)))
        self._apply(initial=True)

    def detach(self) -> None:
        """This cluster's runtime was replaced: stop following the sources (they may live on)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._rampTimer is not None and self._rampTimer.active():
            self._rampTimer.cancel()
        self._rampTimer = None

    def _listener(self, index: int) -> Callable[[Targets], None]:
        def changed(targets: Targets) -> None:
            self.updateSource(index, targets)

        return changed

    def updateSource(self, index: int, targets: Targets) -> None:
        """Source C{index} has a new answer: recompute the set now."""
        first = not self.answers[index] and self._startup
        self.answers[index] = targets
        self._apply(initial=first)

    def _apply(self, initial: bool) -> None:
        now = self.clock.seconds()
        config = self.cluster.config
        wanted: dict[str, Endpoint] = {e.url: e for e in self.static}
        hadTargets = bool(self.cluster.endpoints)
        for answer in self.answers:
            for t in answer:
                if t.url in wanted:
                    continue  # the first occurrence wins (a static target, or an earlier source)
                e = self.members.get(t.url) or self.retiring.pop(t.url, None) or self._known.pop(t.url, None)
                if e is None:
                    e = self._new(t, now, gate=hadTargets and not initial)
                else:
                    e.source = t.source
                    e.configuredWeight = t.weight
                    if e.state == RETIRING:
                        e.state = ACTIVE
                wanted[t.url] = e
        for url, e in self.members.items():
            if url not in wanted:
                self._retire(e)
        for url, e in wanted.items():
            state, weight = self.overrides.get(url, (ACTIVE, None))
            e.state = state
            if weight is not None:
                e.configuredWeight = weight
            e.onIdle = self._idle if state != ACTIVE else None
        self.members = wanted
        self._publish(now)
        if config.slow_start > 0 and any(now < e.addedAt + config.slow_start for e in wanted.values()):
            self._scheduleRamp()

    def _new(self, t: DiscoveredTarget, now: float, gate: bool) -> Endpoint:
        config = self.cluster.config
        e = Endpoint(Target(t.url, t.scheme, t.host, t.port, t.weight), config.name)
        e.source = t.source
        if gate:
            e.addedAt = now
            if config.health.active is not None:
                # Probed at once (the checker hears onTargetsChanged); traffic after healthy_after passes.
                e.activeHealthy = False
        e.breaker = self._breaker(e)
        return e

    def _breaker(self, e: Endpoint) -> Any:
        config = self.cluster.config
        observer = self.breakerObserver(self.metrics, config.name, e) if self.breakerObserver and self.metrics else None
        return breaking.makeBreaker(config.circuit_breaker, self.clock, observer)

    def retireAllBut(self, kept: dict[str, Endpoint]) -> None:
        """This membership's cluster was replaced by a reload: retire the targets the new one dropped."""
        for url, e in list(self.members.items()):
            if url not in kept:
                del self.members[url]
                self._retire(e)

    def _retire(self, e: Endpoint) -> None:
        e.state = RETIRING
        if e.inFlight:
            e.onIdle = self._idle
            self.retiring[e.url] = e
        else:
            self._forget(e)

    def _idle(self, e: Endpoint) -> None:
        """The last in-flight request of a target out of rotation ended: close its idle connections."""
        if e.state == ACTIVE:
            return
        if e.state == RETIRING:
            self.retiring.pop(e.url, None)
            self._forget(e)
            self._publishCounts()
        else:
            self.clock.callLater(0, _closeIdle, self.pool, e)

    def _forget(self, e: Endpoint) -> None:
        e.onIdle = None
        # Once the response that ended has handed its connection back to the pool.
        self.clock.callLater(0, _closeIdle, self.pool, e)
        if self.metrics is not None:
            for gauge in (self.metrics.targetHealthy, self.metrics.circuitState):
                try:
                    gauge.remove(self.cluster.name, e.url)
                except KeyError:
                    pass

    # -- publishing the set

    def _publish(self, now: float) -> None:
        cluster = self.cluster
        active = [e for e in self.members.values() if e.state == ACTIVE]
        self._weigh(active, now)
        cluster.endpoints = tuple(active)
        cluster.balancer.setTargets(cluster.endpoints)
        for hook in list(cluster.onTargetsChanged):
            try:
                hook()
            except Exception:
                log.failure("updating {upstream} after a target change failed", upstream=cluster.name)
        self._publishCounts()

    def _publishCounts(self) -> None:
        if self.metrics is None:
            return
        counts = dict.fromkeys(STATES, 0)
        for e in self.members.values():
            counts[e.state] += 1
        counts[RETIRING] = len(self.retiring)
        for state, n in counts.items():
            self.metrics.upstreamTargets.labels(self.cluster.name, state).set(n)

    def _weigh(self, active: list[Endpoint], now: float) -> bool:
        """
        Set each weight from its configured one and the slow-start ramp;
        whether any still ramps.  Consistent hashing keeps its ring (weights
        unchanged): a ramping target's C{share} admits that part of its keys.
        """
        slowStart = self.cluster.config.slow_start
        ramping = slowStart > 0 and any(now < e.addedAt + slowStart for e in active)
        hashing = self.cluster.config.balancer == "consistent_hash"
        scale = RAMP_SCALE if ramping and not hashing else 1
        for e in active:
            fraction = slowStartFraction(now - e.addedAt, slowStart) if ramping else 1.0
            if hashing:
                e.weight, e.share = e.configuredWeight, fraction
            else:
                e.weight, e.share = max(1, round(e.configuredWeight * scale * fraction)), 1.0
        return ramping

    def _scheduleRamp(self) -> None:
        if self._rampTimer is None or not self._rampTimer.active():
            self._rampTimer = self.clock.callLater(RAMP_TICK, self._ramp)

    def _ramp(self) -> None:
        self._rampTimer = None
        active = list(self.cluster.endpoints)
        ramping = self._weigh(active, self.clock.seconds())
        self.cluster.balancer.setTargets(self.cluster.endpoints)
        if ramping:
            self._scheduleRamp()

    def probed(self) -> list[Endpoint]:
        """The targets the active health check probes: in rotation or draining (not disabled or retiring)."""
        return [e for e in self.members.values() if e.state in (ACTIVE, DRAINING)]

    # -- runtime control (the admin API)

    def find(self, hostPort: str) -> list[Endpoint]:
        """The targets named C{host:port} (IPv6 in brackets), current ones first."""
        key = hostPort.lower()
        return [e for e in (*self.members.values(), *self.retiring.values())
                if e.netloc.decode("ascii").lower() == key]

    def setState(self, e: Endpoint, state: str) -> None:
        """Drain (no new requests, in-flight finish), disable (the same, and it stays out), or enable."""
        if e.url not in self.members:
            raise KeyError(e.url)
        weight = self.overrides.get(e.url, (ACTIVE, None))[1]
        self.overrides[e.url] = (state, weight)
        log.info("target {target} of {upstream} set {state} through the admin API (until the next reload)",
                 target=e.url, upstream=self.cluster.name, state=state)
        if state == ACTIVE and self.cluster.config.slow_start > 0:
            e.addedAt = self.clock.seconds()  # back in rotation: ramped again
        self._apply(initial=False)
        if state != ACTIVE and e.inFlight == 0:
            self.clock.callLater(0, _closeIdle, self.pool, e)

    def setWeight(self, e: Endpoint, weight: int) -> None:
        if e.url not in self.members:
            raise KeyError(e.url)
        state = self.overrides.get(e.url, (e.state, None))[0]
        self.overrides[e.url] = (state, weight)
        log.info("target {target} of {upstream}: weight {weight} through the admin API (until the next reload)",
                 target=e.url, upstream=self.cluster.name, weight=weight)
        self._apply(initial=False)

    def report(self) -> list[dict[str, Any]]:
        """Every target, for C{GET /api/upstreams} and the status page."""
        out = []
        for e in (*self.members.values(), *self.retiring.values()):
            out.append(describe(e, self.cluster.config.slow_start, e.url in self.overrides))
        return out

    def sourcesReport(self) -> list[dict[str, Any]]:
        out = []
        for s in self.sources:
            c = s.counters
            out.append({"description": s.description, "kind": s.kind, "targets": len(s.targets),
                        "refreshes": c.refreshes, "failures": c.failures, "last_error": c.lastError,
                        "last_success_at": c.lastSuccessAt})
        return out


def describe(e: Endpoint, slowStart: float, overridden: bool) -> dict[str, Any]:
    return {
        "url": e.url,
        "host_port": e.netloc.decode("ascii"),
        "source": e.source,
        "state": e.state,
        "weight": e.configuredWeight,
        "effective_weight": e.weight,
        "in_flight": e.inFlight,
        "ramp_until": e.addedAt + slowStart if slowStart > 0 and e.addedAt else None,
        "runtime_override": overridden,
    }


def endpointsOf(cluster: Cluster) -> Sequence[Endpoint]:
    """Every target of C{cluster} to show, in rotation or not."""
    m = cluster.membership
    if m is None:
        return cluster.endpoints
    return (*m.members.values(), *m.retiring.values())


def describeOverrides(clusters: dict[str, Cluster]) -> list[str]:
    """The runtime changes a reload drops, as C{api 10.0.0.5:8000 draining} phrases."""
    out = []
    for name, cluster in clusters.items():
        m = cluster.membership
        if m is None:
            continue
        for url, (state, weight) in m.overrides.items():
            e = m.members.get(url)
            where = e.netloc.decode("ascii") if e is not None else url
            out.append(f"{name} {where} {state}" + (f" weight {weight}" if weight is not None else ""))
    return out


def _closeIdle(pool: Any, e: Endpoint) -> None:
    """Close the pooled idle connections to C{e} (the pool's public C{takeIdle}; one still in use closes later)."""
    takeIdle = getattr(pool, "takeIdle", None)
    if takeIdle is None or e.inFlight:
        return
    for host in {e.host, f"[{e.host}]"}:
        key = (e.scheme.encode("ascii"), host.encode("ascii"), e.port)
        while (connection := takeIdle(key)) is not None:
            connection.transport.loseConnection()
