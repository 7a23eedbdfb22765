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
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgateway.interfaces import IHealthCheck, IPassiveHealth

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster, Endpoint
    from txgateway.config import ActiveHealth, PassiveHealth
    from txgateway.observe import Metrics

log = Logger(namespace="txgateway.health")

# Passive windows are kept as this many time buckets: memory per target is
# fixed whatever the traffic, and the window slides in steps of window/10.
WINDOW_BUCKETS = 10

_PROBE_HEADERS = {b"User-Agent": [b"txgateway-health-check"]}


def _publish(metrics: Metrics, cluster: Cluster, endpoint: Endpoint, to: str, now: float) -> None:
    """One state change of one target, in the metrics."""
    metrics.targetHealthy.labels(cluster.name, endpoint.url).set(1 if endpoint.healthy(now) else 0)
    metrics.healthTransitions.labels(cluster.name, endpoint.url, to).inc()


# -- active


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
        self._path = active.path.encode("ascii")
        self._targets: dict[Endpoint, _ProbeState] = {}
        self._cluster = cluster

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @cluster.setter
    def cluster(self, cluster: Cluster) -> None:
        """
        Swap in the reloaded Cluster.  Endpoints that stay keep their loop
        and their streaks; new ones start probing, removed ones stop.
        """
        self._cluster = cluster
        if self.running:
            self._sync()

    # -- IService

    def startService(self) -> None:
        super().startService()
        if self._client is None:
            self._client = self._makeClient()
        self._sync()

    def stopService(self) -> Deferred[None]:
        super().stopService()
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
        # Imported here: proxy.py imports this module's siblings, not this one.
        from twisted.web.client import Agent

        from txgateway.http.proxy import _EndpointFactory, _Pool

        pool = _Pool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        self._pool = pool
        agent = Agent.usingEndpointFactory(self.reactor, _EndpointFactory(self.reactor, self.config.timeout),
                                           pool=pool)
        # treq is loaded by the first active check, not by every gateway.
        from treq.client import HTTPClient

        return HTTPClient(agent)

    def _sync(self) -> None:
        endpoints = self._cluster.endpoints
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
        d.addTimeout(self.config.timeout, self.clock)
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
                _publish(self.metrics, cluster, endpoint, "healthy", now)
            if ejected and state.sawEjection and state.successes >= active.healthy_after:
                state.sawEjection = False
                readmit(cluster, endpoint, self.metrics, now,
                        f"active check passed {state.successes} time(s) since the ejection")
        else:
            state.failures += 1
            state.successes = 0
            state.lastError = detail
            if endpoint.activeHealthy and state.failures >= active.unhealthy_after:
                endpoint.activeHealthy = False
                log.warn("target {target} of {upstream} is unhealthy: {n} failed probe(s) of {path}, last: {detail}",
                         target=endpoint.url, upstream=cluster.name, n=state.failures, path=active.path,
                         detail=detail)
                _publish(self.metrics, cluster, endpoint, "unhealthy", now)
            else:
                log.debug("health probe of {target} failed: {detail}", target=endpoint.url, detail=detail)


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


# -- passive


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

    def isHealthy(self, endpoint: Endpoint) -> bool:
        now = self.clock.seconds()
        until = endpoint.ejectedUntil
        if until and now >= until:
            readmit(self.cluster, endpoint, self.metrics, now, "ejection period over", self)
        return now >= endpoint.ejectedUntil

    def record(self, endpoint: Endpoint, ok: bool) -> None:
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
        _publish(self.metrics, self.cluster, endpoint, "ejected", now)


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
    _publish(metrics, cluster, endpoint, "readmitted", now)


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
                _publish(metrics, cluster, e, "healthy", now)
        return None
    return ActiveHealthChecker(cluster, clock, metrics, reactor=reactor, client=client)
