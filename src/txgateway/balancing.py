"""
Load balancers: which of an upstream's eligible targets takes a request.

Foundation stub: round robin for every strategy until the balancing issue lands.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from zope.interface import implementer

from .interfaces import IBalancer

if TYPE_CHECKING:
    from .cluster import Endpoint
    from .config import UpstreamConfig
    from .context import RequestContext


@implementer(IBalancer)
class RoundRobin:
    """Strict rotation over the eligible targets."""

    def __init__(self) -> None:
        self._next = 0

    def setTargets(self, targets: Sequence[Endpoint]) -> None:
        pass

    def pick(self, eligible: Sequence[Endpoint], context: RequestContext) -> Endpoint | None:
        i = self._next % len(eligible)
        self._next = i + 1
        return eligible[i]


def makeBalancer(config: UpstreamConfig, rng: _random.Random) -> IBalancer:
    """The balancer named by C{config.balancer}."""
    return RoundRobin()
