"""
Per-target circuit breakers.

Foundation stub: no breaker until the resilience issue lands.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from .config import BreakerConfig
from .interfaces import IBreaker


def makeBreaker(config: BreakerConfig | None, clock: IReactorTime,
                onTransition: Callable[[str, str], None] | None = None) -> IBreaker | None:
    """A breaker for one target, or None when the upstream has none configured."""
    return None
