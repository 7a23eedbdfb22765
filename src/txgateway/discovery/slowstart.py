# -*- test-case-name: tests.test_discovery_config -*-
"""
Slow start: a new target's share of traffic ramps up instead of jumping.

A pod that has just become ready often has cold caches, an unwarmed JIT or
an empty connection pool; giving it its full share at once can tip it
over.  With C{upstreams.NAME.slow_start: 30s} a target added at run time
(by discovery, the admin API, or a reload that adds it) starts at
C{minimum} of its weight and rises linearly to its full weight over 30
seconds, as in Envoy's and nginx Plus's slow start.

A pure function of elapsed time, so the balancer computes it lazily from
C{clock.seconds()} (no timer per target) and tests need no clock at all.
Targets present at start-up are not ramped: the whole upstream is new
then, and slowing all of it slows nothing.
"""

from __future__ import annotations

__all__ = ["MINIMUM", "rampEnds", "rampedWeight", "slowStartFraction"]

#: The share a brand-new target gets: small, but never zero (a zero weight
#: would starve it of the requests that warm it up).
MINIMUM = 0.1


def slowStartFraction(elapsed: float, slowStart: float, minimum: float = MINIMUM) -> float:
    """
    The fraction (C{minimum} .. 1.0) of its weight a target gets
    C{elapsed} seconds after it was added, with a ramp of C{slowStart}
    seconds (0: no ramp).  A negative C{elapsed} (a clock that went back)
    counts as just added.
    """
    if slowStart <= 0 or elapsed >= slowStart:
        return 1.0
    if elapsed <= 0:
        return minimum
    return minimum + (1.0 - minimum) * (elapsed / slowStart)


def rampedWeight(weight: int, elapsed: float, slowStart: float, scale: int = 100,
                 minimum: float = MINIMUM) -> int:
    """
    An integer weight for balancers that need one (weighted round robin,
    the hash ring): C{weight * scale} at full strength, at least 1.  Every
    target of the upstream must then be scaled by the same C{scale}, so
    shares stay in proportion.
    """
    return max(1, round(weight * scale * slowStartFraction(elapsed, slowStart, minimum)))


def rampEnds(addedAt: float, slowStart: float) -> float:
    """When the ramp of a target added at C{addedAt} is over (C{addedAt} itself when there is none)."""
    return addedAt + max(slowStart, 0.0)
