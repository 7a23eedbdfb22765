"""
Connections to shared stores (Redis), used by shared rate limits and caches.

One reconnecting, lazy connection pool per process: it never blocks the
reactor, and while Redis is down the users of this pool fall back to their
local state (see limiting and caching), so Redis being gone never fails a
request.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed

from .config import StoresConfig


def makeRedis(config: StoresConfig, reactor: Any) -> Any:
    """A txredisapi lazy connection pool for C{stores.redis}, or None."""
    if config.redis is None:
        return None
    import txredisapi

    parts = urlsplit(config.redis)
    db = int(parts.path.strip("/") or 0) if parts.path.strip("/").isdigit() else 0
    return txredisapi.lazyConnectionPool(
        host=parts.hostname or "127.0.0.1", port=parts.port or 6379, dbid=db, poolsize=4,
        reconnect=True, password=parts.password, connectTimeout=config.redis_timeout * 4,
        replyTimeout=config.redis_timeout, convertNumbers=False,
    )


def closeRedis(pool: Any) -> Deferred[Any]:
    try:
        return pool.disconnect()  # type: ignore[no-any-return]
    except Exception:
        return succeed(None)
