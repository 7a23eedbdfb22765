"""
Rate limiting per client key: token bucket and sliding window, local or in Redis.

Foundation stub: the chain's hook exists; the rate-limiting issue fills it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .interfaces import IRequestFilter
    from .middleware import Deps
    from .routing import CompiledRoute


def rateLimitFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's rate limiter as a chain filter, or None when it has no C{rate_limit:}."""
    return None
