"""
An upstream at run time: its targets' state and the one place a target is chosen.

Health, breakers, concurrency caps and the balancer all meet in
L{Cluster.choose}, so that the proxy never reasons about any of them and a
new policy has exactly one place to plug in.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from txgateway.config import Target, UpstreamConfig

if TYPE_CHECKING:
    from txgateway.context import RequestContext
    from txgateway.interfaces import IBalancer, IBreaker, IPassiveHealth, IRetryPolicy


class Endpoint:
    """
    One target of one upstream, with the state that outlives requests.

    The same Endpoint object is kept across reloads for as long as its URL
    stays in the upstream, so health, breaker and in-flight counts carry
    over.
    """

    __slots__ = ("url", "urlBytes", "scheme", "host", "port", "weight", "inFlight", "activeHealthy",
                 "ejectedUntil", "breaker", "upstream", "labels", "netloc", "probeStatus")

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

    def healthy(self, now: float) -> bool:
        return self.activeHealthy and now >= self.ejectedUntil

    def __repr__(self) -> str:
        return f"<Endpoint {self.url} in_flight={self.inFlight}>"


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
                 passive: IPassiveHealth | None = None, rng: _random.Random | None = None) -> None:
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
        self.agent: object = None  # set by the proxy: the pooled Agent for this upstream
        balancer.setTargets(self.endpoints)

    def choose(self, context: RequestContext, tried: Sequence[Endpoint] = ()) -> Endpoint:
        """
        The target for the next attempt of C{context}.

        Health first, then the concurrency cap, then breakers; among what is
        left, untried targets are preferred so a retry lands elsewhere when
        it can (but a target already tried is better than none).  A
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
            for e in endpoints:
                if not (e.activeHealthy and now >= e.ejectedUntil and e.inFlight < cap
                        and (e.breaker is None or e.breaker.state == "closed")):
                    break
            else:
                if endpoints:
                    choice = self.balancer.pick(endpoints, context) if len(endpoints) > 1 else endpoints[0]
                    if choice is not None and (choice.breaker is None or choice.breaker.allow()):
                        return choice
        healthy = [e for e in endpoints if e.healthy(now)]
        if not healthy:
            if not self.failOpen:
                raise NoTarget("no healthy target (fail_closed)", self.healthyAgainIn(now))
            healthy = list(endpoints)
        candidates = [e for e in healthy if e.inFlight < self.maxPerTarget]
        if not candidates:
            raise NoTarget("every target is at pool.max_per_target")
        allowed = [e for e in candidates if e.breaker is None or e.breaker.state != "open"]
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
                    return choice
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
