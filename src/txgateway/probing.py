# -*- test-case-name: tests.test_health -*-
"""
Active health checks: each target probed on a timer, its verdict written on the Endpoint.

See L{txgateway.health} for how the active verdict (C{activeHealthy}) and
passive ejections meet.  Probes go through a plain Agent over the gateway's
own pool (L{txgateway.http.client.agent.probeAgent}), through treq.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgateway.deadlines import withDeadline
from txgateway.grpchealth import CHECK_PATH, grpcProbe
from txgateway.health import publish, readmit
from txgateway.interfaces import IHealthCheck

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster, Endpoint
    from txgateway.config import ActiveHealth
    from txgateway.observe import Metrics

__all__ = ["ActiveHealthChecker", "checkerFor"]

log = Logger(namespace="txgateway.health")

_PROBE_HEADERS = {b"User-Agent": [b"txgateway-health-check"]}


class _ProbeState:
    """Per-target bookkeeping of the active checker (the verdict itself lives on the Endpoint)."""

    __slots__ = ("loop", "pending", "successes", "failures", "sawEjection", "lastError")

    def __init__(self) -> None:
        self.loop: LoopingCall | None = None
        self.pending: Deferred[Any] | None = None
        self.successes = 0
        self.failures = 0
        self.sawEjection = False
        self.lastError = ""

    def stop(self) -> None:
        loop, self.loop = self.loop, None
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        if loop is not None and loop.running:
            loop.stop()


@implementer(IHealthCheck)
class ActiveHealthChecker(Service):
    """
    Probes every target of one upstream on its own L{LoopingCall}.

    Probes go through their own connection pool (one kept-alive connection
    per target), never the request pool: a saturated upstream must not
    starve its own health checks, and probes must not take request slots.

    C{client} is anything with treq's C{HTTPClient.request} signature; when
    it is not given, L{startService} builds a treq client over its own
    pool on C{reactor}.  Tests pass a L{treq.testing.StubTreq} or a fake.
    """

    def __init__(self, cluster: Cluster, clock: IReactorTime, metrics: Metrics, *,
                 reactor: Any = None, client: Any = None) -> None:
        active = cluster.config.health.active
        if active is None:
            raise ValueError(f"upstream {cluster.name!r} has no health.active")
        if client is None and reactor is None:
            raise ValueError("give a reactor (to build the probe client) or a client")
        self.name = f"health:{cluster.name}"
        self.config: ActiveHealth = active
        self.clock = clock
        self.metrics = metrics
        self.reactor = reactor
        self._client = client
        self._pool: Any = None
        # A gRPC health check (txgateway.grpchealth) asks the standard service's path instead.
        self._path = active.path.encode("ascii") if active.grpc_service is None else CHECK_PATH
        self._targets: dict[Endpoint, _ProbeState] = {}
        self._cluster = cluster
        # With server.workers only one worker probes; it tells the others
        # each verdict through this (txgateway.fleet.sharing).
        self.onVerdict: Callable[[Cluster, Endpoint], None] | None = None

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @cluster.setter
    def cluster(self, cluster: Cluster) -> None:
        """
        Swap in the reloaded Cluster.  Endpoints that stay keep their loop
        and their streaks; new ones start probing, removed ones stop.
        """
        if self.running:
            _unwatch(self._cluster, self._sync)
            cluster.onTargetsChanged.append(self._sync)
        self._cluster = cluster
        if self.running:
            self._sync()

    # -- IService

    def startService(self) -> None:
        super().startService()
        if self._client is None:
            self._client = self._makeClient()
        # Discovery and the admin API change the targets between reloads (txgateway.membership).
        self._cluster.onTargetsChanged.append(self._sync)
        self._sync()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        _unwatch(self._cluster, self._sync)
        for state in self._targets.values():
            state.stop()
        self._targets.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            self._client = None
            d: Deferred[None] = pool.closeCachedConnections()
            return d
        return succeed(None)

    def _makeClient(self) -> Any:
        if self.config.grpc_service is not None:
            self._pool = grpcProbe(self.reactor, self._cluster.config, getattr(self._cluster, "tlsPolicy", None))
            return self._pool
        from txgateway.http.client.agent import probeAgent

        agent, self._pool = probeAgent(self.reactor, self.config.timeout, getattr(self._cluster, "tlsPolicy", None))
        # treq is loaded by the first active check, not by every gateway.
        from treq.client import HTTPClient

        return HTTPClient(agent)

    def _sync(self) -> None:
        membership = self._cluster.membership
        # A drained target is still probed (it comes back healthy or not); a disabled one is not.
        endpoints = self._cluster.endpoints if membership is None else membership.probed()
        for e in list(self._targets):
            if e not in endpoints:
                self._targets.pop(e).stop()
        for e in endpoints:
            if e in self._targets:
                continue
            state = self._targets[e] = _ProbeState()
            loop = LoopingCall(self._probe, e)
            loop.clock = self.clock
            state.loop = loop
            loop.start(self.config.interval, now=True).addErrback(_loopDied, e.url)

    # -- IHealthCheck

    def isHealthy(self, endpoint: Endpoint) -> bool:
        return bool(endpoint.activeHealthy)

    def streaks(self, endpoint: Endpoint) -> tuple[int, int]:
        """(consecutive successes, consecutive failures) so far: for tests and the admin API."""
        state = self._targets.get(endpoint)
        return (state.successes, state.failures) if state is not None else (0, 0)

    # -- probing

    def _probe(self, endpoint: Endpoint) -> Deferred[None]:
        """
        One probe.  The returned Deferred never fails (a failure would stop
        the loop) and always ends within C{timeout}, so a probe that hangs
        delays the next one by at most that.
        """
        state = self._targets.get(endpoint)
        if state is None:
            return succeed(None)
        url = endpoint.urlBytes + self._path
        try:
            d: Deferred[Any] = self._client.request("GET", url, headers=_PROBE_HEADERS,
                                                    allow_redirects=False, unbuffered=True)
        except Exception:
            d = fail()
        d.addCallback(_discardBody)
        d = withDeadline(d, self.config.timeout, self.clock)
        state.pending = d

        def done(code: int) -> None:
            endpoint.probeStatus = code
            if 200 <= code < 300:
                self._result(endpoint, state, True, "")
            else:
                self._result(endpoint, state, False, f"status {code}")

        def failed(f: Failure) -> None:
            if f.check(CancelledError) and state.loop is None:
                return  # stopped while probing: no verdict
            endpoint.probeStatus = None
            self._result(endpoint, state, False, _describe(f, self.config.timeout))

        def bug(f: Failure) -> None:
            log.failure("health probe bookkeeping failed for {target}", f, target=endpoint.url)

        def clear(result: Any) -> Any:
            if state.pending is d:
                state.pending = None
            return result

        d.addBoth(clear)
        d.addCallbacks(done, failed)
        d.addErrback(bug)
        return d

    def _result(self, endpoint: Endpoint, state: _ProbeState, ok: bool, detail: str) -> None:
        if state.loop is None or self._targets.get(endpoint) is not state:
            return  # the target left (or the checker stopped) while the probe ran
        now = self.clock.seconds()
        ejected = endpoint.ejectedUntil > now
        if ejected and not state.sawEjection:
            # A passive ejection happened since the last probe: re-admission
            # needs a fresh run of good probes, not the streak from before.
            state.sawEjection = True
            state.successes = 0
        elif not ejected:
            state.sawEjection = False
        active = self.config
        cluster = self._cluster
        if ok:
            state.successes += 1
            state.failures = 0
            if not endpoint.activeHealthy and state.successes >= active.healthy_after:
                endpoint.activeHealthy = True
                log.info("target {target} of {upstream} is healthy again after {n} good probe(s) of {path}",
                         target=endpoint.url, upstream=cluster.name, n=state.successes, path=active.path)
                publish(self.metrics, cluster, endpoint, "healthy", now)
                self._tell(endpoint)
            if ejected and state.sawEjection and state.successes >= active.healthy_after:
                state.sawEjection = False
                readmit(cluster, endpoint, self.metrics, now,
                        f"active check passed {state.successes} time(s) since the ejection")
                self._tell(endpoint)
        else:
            state.failures += 1
            state.successes = 0
            state.lastError = detail
            if endpoint.activeHealthy and state.failures >= active.unhealthy_after:
                endpoint.activeHealthy = False
                log.warn("target {target} of {upstream} is unhealthy: {n} failed probe(s) of {path}, last: {detail}",
                         target=endpoint.url, upstream=cluster.name, n=state.failures, path=active.path,
                         detail=detail)
                publish(self.metrics, cluster, endpoint, "unhealthy", now)
                self._tell(endpoint)
            else:
                log.debug("health probe of {target} failed: {detail}", target=endpoint.url, detail=detail)

    def _tell(self, endpoint: Endpoint) -> None:
        if self.onVerdict is not None:
            self.onVerdict(self._cluster, endpoint)


def _unwatch(cluster: Cluster, hook: Any) -> None:
    if hook in cluster.onTargetsChanged:
        cluster.onTargetsChanged.remove(hook)


def _loopDied(f: Failure, url: str) -> None:
    log.failure("health probe loop for {target} died", f, target=url)


def _discardBody(response: Any) -> Deferred[int]:
    """Read the probe's body to the end (so the connection can be reused), keeping none of it."""
    from treq import collect

    d: Deferred[Any] = collect(response, _ignore)
    return d.addCallback(lambda _: int(response.code))


def _ignore(data: bytes) -> None:
    pass


def _describe(f: Failure, timeout: float) -> str:
    if f.check(DeferTimeout, CancelledError):
        return f"no answer within {timeout:g}s"
    value = f.value
    return f"{type(value).__name__}: {value}" if str(value) else type(value).__name__


def checkerFor(cluster: Cluster, reactor: Any, clock: IReactorTime, metrics: Metrics,
               client: Any = None) -> IService | None:
    """
    A service probing the upstream's targets, or None when C{health.active}
    is not configured.  It exposes a writable C{cluster} attribute: on a
    reload that keeps the upstream's health config, the service swaps in the
    new Cluster (same Endpoint objects) instead of restarting the probes.

    With no active check configured, a verdict left by an earlier one is
    dropped: nothing would ever set it back.
    """
    if cluster.config.health.active is None:
        now = clock.seconds()
        for e in cluster.endpoints:
            if not e.activeHealthy:
                e.activeHealthy = True
                log.info("target {target} of {upstream} counts as healthy: no active health check any more",
                         target=e.url, upstream=cluster.name)
                publish(metrics, cluster, e, "healthy", now)
        return None
    return ActiveHealthChecker(cluster, clock, metrics, reactor=reactor, client=client)
