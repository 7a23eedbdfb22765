# -*- test-case-name: tests.test_auth,tests.test_cors -*-
"""
The per-route chain: the filters a request passes before it is forwarded.

Order matters and is fixed here, in one place: IP rules first (cheapest, and
a denied client learns nothing more), then CORS (a browser's preflight
carries no credentials, so it must be answered before auth), then auth
(which sets the identity), then rate limiting (which may key on that
identity).  Caching wraps the forward itself (see L{txgateway.caching.flow}).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txgateway.config import GatewayConfig, IPNetwork
from txgateway.context import LocalResponse, RequestContext, jsonResponse
from txgateway.http.addresses import AddressSet
from txgateway.interfaces import IRequestFilter

if TYPE_CHECKING:
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

__all__ = ["Chain", "Deps", "IPFilter", "buildChain", "filterFactories", "ipFilterFor"]


@dataclass
class Deps:
    """What filter factories may use; built once per config by the service."""

    clock: IReactorTime
    reactor: Any
    metrics: Metrics
    config: GatewayConfig
    rng: _random.Random
    redis: Any = None  # the txgateway.stores.RedisClient when stores.redis is set
    shared: dict[str, Any] = field(default_factory=dict)  # state kept across reloads, by key


@implementer(IRequestFilter)
class IPFilter:
    """C{ip_allow} / C{ip_deny}, on the real client address (after trusted_proxies)."""

    def __init__(self, allow: Sequence[IPNetwork], deny: Sequence[IPNetwork], metrics: Metrics | None = None,
                 routeName: str = "") -> None:
        self.allow = AddressSet(allow)
        self.deny = AddressSet(deny)
        self.metrics = metrics
        self.routeName = routeName

    def filterRequest(self, context: RequestContext) -> LocalResponse | None:
        ip = context.clientIP
        if (self.deny and ip in self.deny) or (self.allow and ip not in self.allow):
            if self.metrics is not None:
                self.metrics.authFailures.labels(self.routeName, "ip").inc()
            return jsonResponse(context, 403, "forbidden: client address not allowed")
        return None


FilterFactory = Callable[["CompiledRoute", Deps], "IRequestFilter | None"]


def filterFactories() -> list[FilterFactory]:
    """The chain's builders, in order.  Each returns None when its route does not use it."""
    return [ipFilterFor, _corsFilter, _authFilter, _rateLimitFilter]


# A feature's module (and what it imports: pyjwt, redis scripts...) is loaded
# only when some route uses the feature, so a gateway does not keep in memory
# the code of features its config does not use.

def _corsFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    if route.config.cors is None:
        return None
    from txgateway.cors import corsFilter

    return corsFilter(route, deps)


def _authFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    if route.config.auth is None:
        return None
    from txgateway.auth import authFilter

    return authFilter(route, deps)


def _rateLimitFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    if route.config.rate_limit is None:
        return None
    from txgateway.limiting import rateLimitFilter

    return rateLimitFilter(route, deps)


def ipFilterFor(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    c = route.config
    if not (c.ip_allow or c.ip_deny):
        return None
    return IPFilter(c.ip_allow, c.ip_deny, deps.metrics, route.name)


class Chain:
    """A route's filters, plus its cache (which wraps the forward)."""

    __slots__ = ("filters", "cache")

    def __init__(self, filters: Sequence[IRequestFilter], cache: Any = None) -> None:
        self.filters = tuple(filters)
        self.cache = cache

    async def run(self, context: RequestContext) -> LocalResponse | None:
        """The first filter's answer, or None when every filter lets the request through."""
        return await self._rest(context, 0)

    def runNow(self, context: RequestContext) -> LocalResponse | Deferred[LocalResponse | None] | None:
        """
        As L{run}, without a coroutine while the filters answer at once: the
        answer itself, or a Deferred of it from the first filter that
        returned one (the rest of the chain runs after it fires).
        """
        filters = self.filters
        for i, f in enumerate(filters):
            result = f.filterRequest(context)
            if isinstance(result, Deferred):
                return ensureDeferred(self._finish(result, context, i + 1))
            if result is not None:
                return result  # type: ignore[no-any-return]
        return None

    async def _finish(self, pending: Deferred[Any], context: RequestContext, start: int) -> LocalResponse | None:
        result = await pending
        if result is not None:
            return result  # type: ignore[no-any-return]
        return await self._rest(context, start)

    async def _rest(self, context: RequestContext, start: int) -> LocalResponse | None:
        for f in self.filters[start:]:
            result = f.filterRequest(context)
            if isinstance(result, Deferred):
                result = await result
            if result is not None:
                return result  # type: ignore[no-any-return]
        return None


def buildChain(route: CompiledRoute, deps: Deps) -> Chain:
    filters = [f for f in (factory(route, deps) for factory in filterFactories()) if f is not None]
    cache = None
    if route.config.cache is not None:
        from txgateway.caching.flow import cacheFor

        cache = cacheFor(route, deps)
    return Chain(filters, cache)
