# -*- test-case-name: tests.test_canary_mirror -*-
"""
From a route's canary spec to its run-time parts, and the small pieces the
forward path needs to feed a mirror.

L{buildRouteCanary} is what the runtime builder calls once per route (and
per reload); L{BodyKeeper} is what the mirroring upstream-client wrapper
uses to keep the first C{max_body} bytes of the primary's answer while it
streams to the client, for the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from random import Random

from twisted.internet.interfaces import IReactorTime

from txgateway.canary.interfaces import Answer, MirrorSend, RequestView
from txgateway.canary.mirror import Mirror
from txgateway.canary.specs import CanaryRouteSpec
from txgateway.canary.split import Splitter

__all__ = ["BodyKeeper", "RouteCanary", "buildRouteCanary"]


@dataclass(frozen=True)
class RouteCanary:
    """A route's splitter (None: one upstream) and mirror (None: no shadow traffic)."""

    splitter: Splitter | None = None
    mirror: Mirror | None = None


def buildRouteCanary(route: str, spec: CanaryRouteSpec, clock: IReactorTime, rng: Random,
                     mirrorSend: Callable[[str], MirrorSend] | None = None,
                     trust: Callable[[RequestView], bool] | None = None,
                     observe: Callable[[str, str], None] | None = None) -> RouteCanary:
    """
    The run-time parts of one route.  C{mirrorSend(upstreamName)} gives the
    send function for the mirror upstream (its own cluster and client);
    C{observe(route, outcome)} feeds the mirror metrics.
    """
    splitter = Splitter.fromSpec(route, spec, rng, trust) if spec.upstreams else None
    mirror = None
    if spec.mirror is not None:
        if mirrorSend is None:
            raise ValueError(f"route {route!r} mirrors to {spec.mirror.upstream!r}, but no mirrorSend was given")
        hook = (lambda outcome: observe(route, outcome)) if observe is not None else None
        mirror = Mirror(route, spec.mirror, mirrorSend(spec.mirror.upstream), clock, rng, hook)
    return RouteCanary(splitter, mirror)


class BodyKeeper:
    """The first C{limit} bytes of a streamed body, and whether there was more."""

    __slots__ = ("limit", "chunks", "size", "truncated")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def write(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self.limit - self.size
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def answer(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> Answer:
        return Answer(status, tuple(headers), b"".join(self.chunks), self.truncated)
