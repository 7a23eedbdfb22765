# -*- test-case-name: tests.test_forwarder,tests.test_balancing -*-
"""
An upstream at run time: its targets' state, the one place a target is
chosen, and the one place an attempt's outcome is recorded.

Health, breakers, concurrency caps and the balancer all meet in
L{Cluster.choose}, so that forwarding never reasons about any of them and a
new policy has exactly one place to plug in.  C{choose} hands out a
L{Lease}: the attempt's hold on its target (one in-flight slot, and a
half-open breaker's probe slot if it took one).  The lease records the
outcome exactly once (breaker, passive health, per-target metrics) and gives
the slot back exactly once; nothing else touches those counters.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from txgateway.config import Target, UpstreamConfig

if TYPE_CHECKING:
    from twisted.web.iweb import IResponse

    from txgateway.context import RequestContext
    from txgateway.interfaces import IBalancer, IBreaker, IPassiveHealth, IRetryPolicy, IUpstreamClient
    from txgateway.observe import Metrics

__all__ = ["Cluster", "Endpoint", "Lease", "NoTarget"]


class Endpoint:
    """
    One target of one upstream, with the state that outlives requests.

    The same Endpoint object is kept across reloads for as long as its URL
    stays in the upstream, so health, breaker and in-flight counts carry
    over.
    """

    __slots__ = ("url", "urlBytes", "scheme", "host", "port", "weight", "inFlight", "activeHealthy",
                 "ejectedUntil", "breaker", "upstream", "labels", "netloc", "probeStatus",
                 "source", "state", "configuredWeight", "addedAt", "onIdle", "share")

    def __init__(self, target: Target, upstream: str) -> None:
        self.url = target.url
        self.urlBytes = target.url.encode("ascii")
        self.scheme = target.scheme
        self.host = target.host
        self.port = target.port
        self.netloc = self.urlBytes.split(b"://", 1)[1]
        self.weight = target.weight
        self.upstream = upstream
        self.inFlight = 0
        # Optimistic start: a target is used until a check says otherwise, so
        # a gateway that has just started serves at once.
        self.activeHealthy = True
        self.ejectedUntil = 0.0
        self.probeStatus: int | None = None  # the latest active health probe's answer, for /health
        self.breaker: IBreaker | None = None
        self.labels: object = None  # cached metric children, see observe.Metrics
        # Discovery and runtime control (txgateway.membership): where the target
        # came from, active / draining / disabled, its weight before slow start or
        # the admin API changed it, and a callback for its last in-flight release.
        self.source = "static"
        self.state = "active"
        self.configuredWeight = target.weight
        self.addedAt = 0.0
        self.onIdle: Callable[[Endpoint], None] | None = None
        self.share = 1.0  # while ramping under consistent_hash: the share of its keys it takes

    def healthy(self, now: float) -> bool:
        return self.activeHealthy and now >= self.ejectedUntil

    def __repr__(self) -> str:
        return f"<Endpoint {self.url} in_flight={self.inFlight}>"


class Lease:
    """
    One attempt's hold on one target, from L{Cluster.choose} to its outcome.

    Made when the target is chosen (its in-flight count goes up), it ends
    in two steps, each taken once whatever calls it again: L{record} gives
    the verdict (breaker, passive health, the per-target request counter and
    duration), L{release} gives the in-flight slot back.  L{cancel} is the
    verdict of an attempt the client abandoned: none, and a half-open
    breaker's probe slot is freed.  A response whose status is fine is
    judged only when its body has ended (L{finish}): a target that resets
    partway through bodies is failing, and its breaker and passive health
    must hear so.

    The lease is also what the attempt loop hands back with the response
    (L{response}), so the forward sequence ends it with L{finish}.
    """

    __slots__ = ("cluster", "endpoint", "sent", "seconds", "response", "verdict", "released")

    def __init__(self, cluster: Cluster, endpoint: Endpoint, now: float) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.sent = now
        self.seconds = -1.0  # time to the response head, once it arrived
        self.response: IResponse | None = None
        self.verdict: str | int | None = None
        self.released = False
        endpoint.inFlight += 1

    def responded(self, response: IResponse, now: float) -> None:
        """The response head is in; its verdict waits for the body (see L{finish})."""
        self.response = response
        self.seconds = now - self.sent

    def record(self, outcome: str | int, ok: bool) -> None:
        """The attempt's verdict: C{outcome} is a status code or a failure name ('timeout', 'body_reset'...)."""
        if self.verdict is not None:
            return
        self.verdict = outcome
        endpoint = self.endpoint
        cluster = self.cluster
        breaker = endpoint.breaker
        if breaker is not None:
            if ok:
                breaker.recordSuccess()
            else:
                breaker.recordFailure()
        if cluster.passive is not None:
            cluster.passive.record(endpoint, ok)
        limits = cluster.targetLimits
        if limits is not None:  # per-target concurrency limits learn from their target's verdicts
            seconds = self.seconds
            limits.sample(endpoint, seconds if seconds >= 0 else cluster.clock.seconds() - self.sent, outcome)
        metrics = cluster.metrics
        if metrics is None:
            return
        labels = endpoint.labels
        if labels is None:
            labels = endpoint.labels = ({}, metrics.upstreamDuration.labels(cluster.name, endpoint.url))
        counters: dict[str | int, Any] = labels[0]  # type: ignore[index]
        child = counters.get(outcome)
        if child is None:
            child = counters[outcome] = metrics.upstreamRequests.labels(cluster.name, endpoint.url, str(outcome))
        child.inc()
        seconds = self.seconds
        labels[1].observe(seconds if seconds >= 0 else cluster.clock.seconds() - self.sent)  # type: ignore[index]

    def cancel(self) -> None:
        """The client went away: no verdict on the target; a probe slot taken for this attempt is freed."""
        if self.verdict is not None:
            return
        self.verdict = "cancelled"
        breaker = self.endpoint.breaker
        if breaker is not None:
            breaker.release()

    def release(self) -> None:
        """The attempt is over: its in-flight slot is free."""
        if not self.released:
            self.released = True
            endpoint = self.endpoint
            endpoint.inFlight -= 1
            if endpoint.onIdle is not None and endpoint.inFlight == 0:
                endpoint.onIdle(endpoint)  # a drained or retiring target's last request ended

    def finish(self, complete: bool, clientGone: bool = False) -> None:
        """
        The response's body has been relayed (C{complete}), or broke off:
        by the client leaving (no verdict on the target) or by the target
        (C{body_reset}, a failure).  Then the slot is released.
        """
        if complete:
            response = self.response
            self.record(response.code if response is not None else 0, True)
        elif clientGone:
            self.cancel()
        else:
            self.record("body_reset", False)
        self.release()


class NoTarget(Exception):
    """No target may take this request now; C{reason} and C{retryAfter} shape the 503."""

    def __init__(self, reason: str, retryAfter: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryAfter = retryAfter


class Cluster:
    """The run-time side of one C{upstreams:} entry."""

    def __init__(self, config: UpstreamConfig, clock: IReactorTime, balancer: IBalancer,
                 endpoints: Sequence[Endpoint], retryPolicy: IRetryPolicy | None = None,
                 passive: IPassiveHealth | None = None, rng: _random.Random | None = None,
                 metrics: Metrics | None = None, client: IUpstreamClient | None = None) -> None:
        self.config = config
        self.name = config.name
        self.clock = clock
        self.balancer = balancer
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self.retryPolicy = retryPolicy
        self.passive = passive
        self.random = rng or _random.Random()
        self.maxPerTarget = config.pool.max_per_target
        self.failOpen = config.health.when_all_unhealthy == "fail_open"
        self.metrics = metrics
        # The upstream's admission controller (issue 24: concurrency limit and
        # queue), set by txgateway.protection.build when it has one.
        self.admission: Any = None
        # With concurrency.per_target, each target's own limit
        # (txgateway.protection.targets.TargetLimits: hasRoom(e), sample(e, ...)).
        self.targetLimits: Any = None
        # The IUpstreamClient every attempt goes through (an HTTP/1.1
        # UpstreamAgent over the upstream's pool, made by the service).
        self.agent: IUpstreamClient | None = client
        balancer.setTargets(self.endpoints)
        # Set by txgateway.membership when the upstream has discovery or runtime
        # control; called (e.g. by the active health checker) when endpoints change.
        self.membership: Any = None
        self.onTargetsChanged: list[Callable[[], None]] = []

    def choose(self, context: RequestContext, tried: Sequence[Endpoint] = ()) -> Lease:
        """
        The target for the next attempt of C{context}, leased (see L{Lease}).

        Health first, then the concurrency cap, then breakers, then
        per-target concurrency limits (a target at its limit is passed over
        while another has room); among what is left, untried targets are
        preferred so a retry lands elsewhere when it can (but a target
        already tried is better than none).  A
        half-open breaker admits only its probe quota: C{allow()} is asked
        of the balancer's choice alone, since a yes takes a probe slot.
        Raises L{NoTarget} when nothing may be used: every breaker open (with
        the wait until the first one half-opens), every target saturated, or
        none healthy under fail_closed.
        """
        now = self.clock.seconds()
        endpoints = self.endpoints
        if not tried:
            # The usual case, checked without building the lists below: every
            # target healthy, under its cap and with a closed (or no) breaker,
            # so the balancer chooses among all of them.
            cap = self.maxPerTarget
            limits = self.targetLimits
            for e in endpoints:
                if not (e.activeHealthy and now >= e.ejectedUntil and e.inFlight < cap
                        and (e.breaker is None or e.breaker.state == "closed")
                        and (limits is None or limits.hasRoom(e))):
                    break
            else:
                if endpoints:
                    choice = self.balancer.pick(endpoints, context) if len(endpoints) > 1 else endpoints[0]
                    if choice is not None and (choice.breaker is None or choice.breaker.allow()):
                        return Lease(self, choice, now)
        if not endpoints:
            raise NoTarget("no target: none discovered yet, or all drained or disabled", 1.0)
        healthy = [e for e in endpoints if e.healthy(now)]
        if not healthy:
            if not self.failOpen:
                raise NoTarget("no healthy target (fail_closed)", self.healthyAgainIn(now))
            healthy = list(endpoints)
        candidates = [e for e in healthy if e.inFlight < self.maxPerTarget]
        if not candidates:
            raise NoTarget("every target is at pool.max_per_target")
        allowed = [e for e in candidates if e.breaker is None or e.breaker.state != "open"]
        limits = self.targetLimits
        if limits is not None:
            # Per-target limits: a target at its own limit is passed over while
            # another has room.  When none has, the request (admitted by the
            # upstream's queue, whose limit is their sum) goes to the balancer's choice.
            allowed = [e for e in allowed if limits.hasRoom(e)] or allowed
        passes: tuple[list[Endpoint], ...] = (allowed,)
        if tried:
            untried = [e for e in allowed if e not in tried]
            if untried and len(untried) < len(allowed):
                passes = (untried, [e for e in allowed if e in tried])
        for group in passes:
            while group:
                choice = self.balancer.pick(group, context) if len(group) > 1 else group[0]
                if choice is None:
                    raise NoTarget("the balancer made no choice")
                if choice.breaker is None or choice.breaker.allow():
                    return Lease(self, choice, now)
                # Half-open with every probe slot taken: not this one, try the rest.
                group.remove(choice)
        waits = [w for w in (e.breaker.retryAfter() for e in candidates if e.breaker is not None) if w > 0]
        raise NoTarget("every target's circuit breaker is open or probing", min(waits) if waits else 1.0)

    def healthyAgainIn(self, now: float) -> float:
        """
        The soonest a target may be healthy again (the fail_closed 503's
        Retry-After): an ejection ending, or the active checks passing
        C{healthy_after} times; at least a second.
        """
        waits = [e.ejectedUntil - now for e in self.endpoints if e.activeHealthy and e.ejectedUntil > now]
        active = self.config.health.active
        if active is not None:
            waits.append(active.interval * active.healthy_after)
        return max(1.0, min(waits)) if waits else 1.0

    def endpointByURL(self, url: str) -> Endpoint | None:
        for e in self.endpoints:
            if e.url == url:
                return e
        return None

    def usable(self) -> bool:
        """Whether /health may call this upstream up: a target that is healthy and not broken."""
        now = self.clock.seconds()
        return any(e.healthy(now) and (e.breaker is None or e.breaker.state != "open") for e in self.endpoints)
