# -*- test-case-name: tests.test_limiting -*-
"""
The rate limit as a chain filter: RateLimit-* headers on every response of
the route, 429 with Retry-After when over; and which limiter a route gets
(local, or shared in Redis), kept across reloads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from zope.interface import implementer

from txgateway import stores
from txgateway.context import jsonResponse
from txgateway.interfaces import IRateLimiter, IRequestFilter
from txgateway.limiting.keys import keyFunction
from txgateway.limiting.local import Decision, localLimiter
from txgateway.limiting.shared import RedisRateLimiter
from txgateway.stores import StoreHealth

if TYPE_CHECKING:
    from txgateway.config import RateLimitConfig
    from txgateway.context import LocalResponse, RequestContext
    from txgateway.middleware import Deps
    from txgateway.routing import CompiledRoute

__all__ = ["RateLimitFilter", "rateLimitFilter"]

log = Logger(namespace="txgateway.limiting")


@implementer(IRequestFilter)
class RateLimitFilter:
    """Adds the RateLimit-* headers to every response of the route, answers 429 when over."""

    __slots__ = ("limiter", "keyOf", "rateLimited")

    def __init__(self, limiter: IRateLimiter, keyOf: Callable[[RequestContext], str], rateLimited: Any) -> None:
        self.limiter = limiter
        self.keyOf = keyOf
        self.rateLimited = rateLimited

    def filterRequest(self, context: RequestContext) -> Deferred[LocalResponse | None] | LocalResponse | None:
        decision = self.limiter.check(self.keyOf(context))
        if isinstance(decision, Deferred):
            return decision.addCallback(self._apply, context).addErrback(self._broken, context)
        return self._apply(decision, context)

    def _apply(self, decision: Decision, context: RequestContext) -> LocalResponse | None:
        context.responseHeaders += decision.headers()
        if decision.allowed:
            return None
        self.rateLimited.inc()
        retry = decision.retryAfterSeconds
        return jsonResponse(context, 429, "too many requests", [(b"Retry-After", b"%d" % retry)],
                            retry_after=retry)

    def _broken(self, failure: Any, context: RequestContext) -> Any:
        if failure.check(CancelledError):
            return failure  # the request was cancelled (client gone): not a limiter problem
        # Limiters never fail by contract; if one does anyway, a limiter bug
        # must not take the route down with it.
        log.failure("rate limiter failed; request let through", failure)
        return None


_SHARED_PREFIX = "rate_limit:"
_HEALTH_KEY = "stores.redis.rate_limit"


def rateLimitFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's rate limiter as a chain filter, or None when it has no C{rate_limit:}."""
    config = route.config.rate_limit
    if config is None:
        return None
    limiter = _limiterFor(route.name, config, deps)
    return RateLimitFilter(limiter, keyFunction(config.key, route.name), deps.metrics.rateLimited.labels(route.name))


def _limiterFor(name: str, config: RateLimitConfig, deps: Deps) -> IRateLimiter:
    """
    The route's limiter, kept in C{deps.shared} so that a reload leaves the
    counters of an unchanged C{rate_limit:} alone (a reload must not hand
    every client a fresh burst); a changed one starts over.
    """
    live = {r.name for r in deps.config.routes if r.rate_limit is not None}
    for slot in [k for k in deps.shared if k.startswith(_SHARED_PREFIX)]:
        if slot[len(_SHARED_PREFIX):] not in live:
            del deps.shared[slot]  # the route, or its limit, is gone: free its keys
    pool = deps.redis if config.shared else None
    timeout = deps.config.stores.redis_timeout
    slot = _SHARED_PREFIX + name
    kept = deps.shared.get(slot)
    if kept is not None and kept[0] == config and kept[1] == timeout and kept[2] is pool:
        return kept[3]  # type: ignore[no-any-return]
    local = localLimiter(config, deps.clock)
    limiter: IRateLimiter = local
    if config.shared:
        if pool is None:
            log.warn("route {route}: shared rate limit without a Redis connection (stores.redis added by a "
                     "reload? restart to connect): limiting locally", route=name)
        else:
            health = deps.shared.get(_HEALTH_KEY)
            if health is None:
                # The pool's first connection is given as long as a connect may take.
                health = deps.shared[_HEALTH_KEY] = StoreHealth(deps.clock, deps.metrics, "redis", "rate_limit",
                                                                startGrace=stores.connectTimeout(deps.config.stores))
            prefix = f"txgw:rl:{config.algorithm}:{name}:"
            limiter = RedisRateLimiter(pool, config, prefix, local, deps.clock, timeout, health)
    fleet = deps.shared.get("fleet")  # with server.workers: counted once for all workers (txgateway.fleet)
    if fleet is not None and not config.shared:
        limiter = fleet.limiter(name, config, local)
    deps.shared[slot] = (config, timeout, pool, limiter)
    return limiter
