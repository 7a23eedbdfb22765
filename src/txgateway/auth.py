"""
Access control at the edge: API keys, JWT, basic auth, CORS.

Foundation stub: the chain's hooks exist; the access-control issue fills them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .interfaces import IRequestFilter
    from .middleware import Deps
    from .routing import CompiledRoute


def corsFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's CORS handling (preflights answered here), or None."""
    return None


def authFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's authentication, or None when the route has no C{auth:}."""
    return None
