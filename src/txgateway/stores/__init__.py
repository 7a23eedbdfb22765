# -*- test-case-name: tests.test_redis_client -*-
"""
Connections to shared stores (Redis), used by shared rate limits and caches.

One reconnecting connection per process (L{RedisClient}, on our own RESP2
protocol, L{txgateway.stores.resp}): it never blocks the reactor, every
command has a timeout, and while Redis is down its users fall back to their
local state (see limiting and caching), so Redis being gone never fails or
holds a request.  C{stores.redis} may name one Redis or a primary behind
Redis Sentinel (L{txgateway.config.redisurl}).

The parts: C{txgateway.config.redisurl} (what C{stores.redis} names), C{resp} (the wire
protocol), C{client} (connecting, backoff, state, Sentinel), C{health}
(per-use fallback bookkeeping and Lua scripts).
"""

from __future__ import annotations

import random as _random
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed

from txgateway.config.redisurl import RedisAddress, parseRedisURL
from txgateway.stores.client import NotPrimary, RedisClient
from txgateway.stores.health import RedisScript, StoreHealth, isConnected
from txgateway.stores.resp import NoScript, RedisError, StoreUnavailable

if TYPE_CHECKING:
    # Not at run time: the config layer validates stores.redis with
    # txgateway.config.redisurl, so this package must not import it back.
    from txgateway.config import StoresConfig

__all__ = [
    "NoScript", "NotPrimary", "RedisAddress", "RedisClient", "RedisError", "RedisScript", "StoreHealth",
    "StoreUnavailable", "closeRedis", "connectTimeout", "describe", "isConnected", "makeRedis", "parseRedisURL",
]


def connectTimeout(config: StoresConfig) -> float:
    """How long a (re)connect, its handshake, or a reply on a live connection may take: at least a second."""
    return max(1.0, config.redis_timeout * 4)


def makeRedis(config: StoresConfig, reactor: Any, rng: _random.Random | None = None) -> RedisClient | None:
    """The started client for C{stores.redis}, or None when it is not set."""
    if config.redis is None:
        return None
    client = RedisClient(parseRedisURL(config.redis), reactor, reactor, timeout=config.redis_timeout,
                         connectTimeout=connectTimeout(config), rng=rng)
    client.start()
    return client


def closeRedis(pool: Any) -> Deferred[Any]:
    """Close the client; fires (never fails) once its connection is gone."""
    try:
        d: Deferred[Any] = pool.stop()
    except Exception:
        return succeed(None)
    return d.addErrback(lambda _: None)


def describe(pool: Any) -> dict[str, Any]:
    """C{{"redis": {state, since, address...}}} for /health and the admin API; {} without a store."""
    if pool is None or not hasattr(pool, "describe"):
        return {}
    return {"redis": pool.describe()}
