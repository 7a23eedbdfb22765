# -*- test-case-name: tests.test_membership -*-
"""
Wiring discovery into the gateway service: sources to clusters, across reloads.

L{GatewayService} calls L{Discovery.attach} with every runtime it builds
(at start and on each reload): the L{DiscoveryService} keeps the sources
whose spec is unchanged, and each new cluster gets a L{Membership} that
follows its upstream's sources from what they already know, so a reload
never starts from an empty set.  Runtime overrides of the old clusters are
dropped and named, for the reload's log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime

from txgateway.building import breakerObserver as logBreakerTransitions
from txgateway.config.schema_discovery import SourceSpec
from txgateway.discovery.base import Observer
from txgateway.discovery.service import DiscoveryService
from txgateway.membership import BreakerObserver, Membership, describeOverrides

if TYPE_CHECKING:
    from twisted.application.service import IServiceCollection

    from txgateway.gateway import Runtime
    from txgateway.observe import Metrics

__all__ = ["READY_WITHIN", "Discovery", "droppedText"]

#: The longest start-up waits for the sources' first answers (two DNS query timeouts).
READY_WITHIN = 8.0


class Discovery:
    """The gateway's discovery: its sources (a child service) and the memberships of the running clusters."""

    def __init__(self, parent: IServiceCollection, reactor: Any, clock: IReactorTime, metrics: Metrics,
                 breakerObserver: BreakerObserver | None = None) -> None:
        self.clock = clock
        self.metrics = metrics
        # A discovered target's breaker logs and counts its transitions as a static target's does.
        self.breakerObserver = breakerObserver if breakerObserver is not None else logBreakerTransitions
        self.service = DiscoveryService(reactor, clock, self._observerFor)
        self.service.setServiceParent(parent)

    def _observerFor(self, upstream: str, spec: SourceSpec) -> Observer:
        counter: Callable[[str], Any] = lambda outcome: self.metrics.discoveryRefreshes.labels(  # noqa: E731
            upstream, spec.label, outcome)

        def observe(outcome: str) -> None:
            counter(outcome).inc()

        return observe

    def whenReady(self, bound: float = READY_WITHIN) -> Deferred[None]:
        """
        Fires once every source has finished its first refresh (good or
        bad), or after C{bound} seconds: what C{/ready} waits for at
        start-up, so a load balancer does not send traffic to a gateway
        whose upstreams have found no target yet, while a DNS outage cannot
        keep it from ever becoming ready.
        """
        waits: list[Deferred[None]] = [s.whenReady() for s in self.service.sources.values()]  # type: ignore[misc]
        if not waits:
            return succeed(None)
        done: Deferred[None] = Deferred()

        def fire(_: object = None) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        timer = self.clock.callLater(bound, fire)
        gatherResults(waits).addCallback(fire)
        return done

    def attach(self, runtime: Runtime, previous: Runtime | None) -> list[str]:
        """
        Give C{runtime}'s clusters their sources and memberships; returns
        the runtime changes of C{previous} that this drops (empty at start).
        """
        config = runtime.config
        sources = self.service.sync(config.discovery, {name: u.sources for name, u in config.upstreams.items()})
        dropped = describeOverrides(dict(previous.clusters)) if previous is not None else []
        for name, cluster in runtime.clusters.items():
            old = previous.clusters.get(name) if previous is not None else None
            oldMembership = old.membership if old is not None else None
            if oldMembership is not None:
                oldMembership.detach()
            membership = Membership(cluster, self.clock, self.metrics, self.breakerObserver, oldMembership)
            specs = config.upstreams[name].sources
            membership.attach([sources[(name, i, spec)] for i, spec in enumerate(specs)])
            if oldMembership is not None:
                oldMembership.retireAllBut(membership.members)
        if previous is not None:
            for name, old in previous.clusters.items():
                if name not in runtime.clusters and old.membership is not None:
                    old.membership.detach()
        return dropped


def droppedText(dropped: list[str]) -> str:
    """The reload log line's tail: which runtime changes (admin API) it dropped, if any."""
    if not dropped:
        return ""
    return f"; {len(dropped)} runtime target change(s) (admin API) dropped: {', '.join(dropped)}"
