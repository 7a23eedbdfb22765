# -*- test-case-name: tests.test_canary_flow -*-
"""
Weighted splits and mirrors wired into a runtime (issue 23).

L{attachCanaries} gives each compiled route its run-time canary parts
(L{txgateway.canary.build.RouteCanary}: a splitter for C{upstreams}, a
mirror for C{mirror}) and, for a split, the cluster of every upstream it
may choose; a reload carries run-time weights and mirror counts over.
L{routeForwarder} is the route's way upstream that the resource tree uses:
the attempt loop on its cluster (most routes, unchanged), or on the
upstream its L{SplitForwarder} chose, wrapped by the route's
L{MirroringForwarder} when it mirrors.

The upstream is chosen once per request, before the first lease: retries
stay within the chosen upstream (its other targets), so the error rate of
each version is its own and a sticky client never changes version in the
middle of a request.  An upstream with no usable target answers 503 as any
upstream does: falling back to the other version would hide exactly the
failure a canary exists to show.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from txgateway.canary.build import buildRouteCanary
from txgateway.canary.split import Splitter, splitFromSpec
from txgateway.forwarding import ClusterForwarder
from txgateway.interfaces import IForwarder
from txgateway.mirroring import MirroringForwarder, mirrorSender

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.canary.interfaces import MirrorSend
    from txgateway.cluster import Cluster
    from txgateway.context import RequestContext
    from txgateway.forwarding import Forwarder
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

__all__ = ["SplitForwarder", "attachCanaries", "publishSplit", "routeForwarder", "stopMirrors"]

log = Logger(namespace="txgateway")


@implementer(IForwarder)
class SplitForwarder:
    """Chooses the request's upstream with the route's splitter, then forwards on that upstream's cluster."""

    __slots__ = ("splitter", "forwarders")

    def __init__(self, splitter: Splitter, forwarders: Mapping[str, Any]) -> None:
        self.splitter = splitter
        self.forwarders = forwarders

    def fetch(self, context: RequestContext, method: bytes | None = None,
              extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Any:
        choice = self.splitter.choose(context)
        context.upstreamChoice = choice.reason
        return self.forwarders[choice.upstream].fetch(context, method, extraHeaders)


def routeForwarder(route: CompiledRoute, forwarder: Forwarder) -> Any:
    """The route's L{IForwarder} before any cache: plain, split, mirrored, or split and mirrored."""
    canary = route.canary
    if canary is None or (canary.splitter is None and canary.mirror is None):
        return ClusterForwarder(forwarder, route.cluster)
    upstream: Any
    if canary.splitter is not None:
        upstream = SplitForwarder(canary.splitter,
                                  {n: ClusterForwarder(forwarder, c) for n, c in route.clusters.items()})
    else:
        upstream = ClusterForwarder(forwarder, route.cluster)
    if canary.mirror is not None:
        upstream = MirroringForwarder(upstream, canary.mirror, forwarder.messages)
    return upstream


def attachCanaries(routes: Iterable[CompiledRoute], clusters: Mapping[str, Cluster], clock: IReactorTime,
                   rng: _random.Random, metrics: Metrics, previous: Iterable[CompiledRoute] = ()) -> None:
    """
    Build the splitter and mirror of every route that has C{upstreams} or
    C{mirror}, taking over from the same route of the previous runtime.
    """
    old = {r.name: r for r in previous}

    def observe(route: str, outcome: str) -> None:
        metrics.mirrorRequests.labels(route, outcome).inc()
        if outcome == "mismatched":
            metrics.mirrorMismatches.labels(route).inc()

    for r in routes:
        spec = r.config.canary
        if not spec.active:
            continue
        limit = spec.mirror.max_body if spec.mirror is not None else 0
        canary = buildRouteCanary(r.name, spec, clock, rng, _senders(clusters, limit), observe=observe)
        r.canary = canary
        r.clusters = {u.name: clusters[u.name] for u in spec.upstreams}
        before = old.get(r.name)
        beforeCanary = before.canary if before is not None else None
        if canary.splitter is not None:
            if beforeCanary is not None and beforeCanary.splitter is not None:
                assert before is not None
                if canary.splitter.continueFrom(beforeCanary.splitter, splitFromSpec(before.config.canary)):
                    split = canary.splitter.split
                    log.info("kept the run-time split of {route} over the reload: {weights}", route=r.name,
                             weights=", ".join(f"{n}={w}" for n, w in zip(split.names, split.weights, strict=True)))
            publishSplit(metrics, canary.splitter)
        if canary.mirror is not None and beforeCanary is not None and beforeCanary.mirror is not None:
            # The old mirror is stopped once the new runtime serves (stopMirrors, from the reload):
            # copies it still had queued or in flight are abandoned, not counted.
            canary.mirror.continueFrom(beforeCanary.mirror)


def _senders(clusters: Mapping[str, Cluster], limit: int) -> Callable[[str], MirrorSend]:
    return lambda name: mirrorSender(clusters[name], limit)


def publishSplit(metrics: Metrics, splitter: Splitter) -> None:
    """C{txgateway_split_weight{route, upstream}}: set when built and whenever the admin API changes it."""
    split = splitter.split
    for name, weight in zip(split.names, split.weights, strict=True):
        metrics.splitWeight.labels(splitter.route, name).set(weight)


def stopMirrors(routes: Iterable[CompiledRoute]) -> None:
    """
    Cancel the copies in flight and forget the queued ones: at shutdown (no
    timer outlives the gateway), and for the previous runtime's routes once
    a reload's new runtime serves.
    """
    for r in routes:
        if r.canary is not None and r.canary.mirror is not None:
            r.canary.mirror.stop()
