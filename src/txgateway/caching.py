"""
The RFC 9111 shared response cache.

Foundation stub: the hook exists; the caching issue fills it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .middleware import Deps
    from .routing import CompiledRoute


def cacheFor(route: CompiledRoute, deps: Deps) -> Any:
    """
    The route's cache, or None.  A cache has
    C{handle(context, forward) -> Deferred} where C{forward} is
    L{txgateway.gateway.Runtime.forward}; see gateway.RouteResource.
    """
    return None
