# -*- test-case-name: tests.test_limiting -*-
"""
What the users of a store share: whether it is usable for them right now
(L{StoreHealth}), and Lua scripts run by digest (L{RedisScript}).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txgateway.stores.resp import NoScript, StoreUnavailable

__all__ = ["RedisScript", "StoreHealth", "isConnected"]

_log = Logger(namespace="txgateway.stores")


def isConnected(pool: Any) -> bool:
    """
    Does the client hold a live connection?  Callers ask before sending
    anything, and decide locally at once when not.
    """
    if pool is None:
        return False
    state = getattr(pool, "state", None)
    if state is None:
        return True  # not a RedisClient (a test double): let the command tell
    return state == "up"


class RedisScript:
    """
    A Lua script run by its SHA1 (one round trip), loaded again with EVAL
    when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH).
    """

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()

    def run(self, pool: Any, keys: Sequence[str | bytes], args: Sequence[str | bytes | int | float],
            clock: IReactorTime, timeout: float) -> Deferred[Any]:
        """
        Fire with the script's reply, or fail within C{timeout} seconds
        (L{StoreUnavailable} at once when the pool has no connection).
        """
        if not isConnected(pool):
            return fail(StoreUnavailable("no connection to redis"))
        try:
            d: Deferred[Any] = pool.evalsha(self.sha, list(keys), list(args))
        except Exception as e:
            return fail(e)

        def noScript(f: Any) -> Any:
            f.trap(NoScript)
            return pool.eval(self.source, list(keys), list(args))

        d.addErrback(noScript)
        d.addTimeout(timeout, clock)
        return d


class StoreHealth:
    """
    Whether one use of a store (Redis for rate limits, say) is working, so
    that its users fall back quickly and say so once.

    After a failure, the store is tried again at most once per
    C{retryInterval} (and only while the pool has a connection); every other
    call decides locally without waiting, so a Redis that hangs costs one
    request per interval the short timeout, not every request.  The outage
    is logged once when it starts and once when it ends, and every local
    decision taken because of it is counted in C{txgateway_store_fallbacks}.
    """

    def __init__(self, clock: IReactorTime, metrics: Any, store: str, use: str,
                 retryInterval: float = 1.0, log: Logger | None = None, startGrace: float = 1.0) -> None:
        self.clock = clock
        # A lazy pool is not connected yet when the first requests arrive:
        # deciding locally then is expected, not an outage worth a warning.
        self.graceUntil = clock.seconds() + startGrace
        self.everConnected = False
        self.store = store
        self.use = use
        self.retryInterval = retryInterval
        self.log = log if log is not None else _log
        self.healthy = True
        self.nextTry = 0.0
        self.trying = False
        self.fallbacks = metrics.storeFallbacks.labels(store, use) if metrics is not None else None

    def shouldTry(self, pool: Any) -> bool:
        """May this call go to the store?  When True, report with L{succeeded} or L{failed}."""
        if not isConnected(pool):
            if self.healthy and (self.everConnected or self.clock.seconds() >= self.graceUntil):
                self._down("no connection")
            return False
        self.everConnected = True
        if self.healthy:
            return True
        if self.trying or self.clock.seconds() < self.nextTry:
            return False
        self.trying = True
        return True

    def succeeded(self) -> None:
        self.trying = False
        if not self.healthy:
            self.healthy = True
            self.log.info("{store} is back for {use}: shared state in use again", store=self.store, use=self.use)

    def failed(self, reason: object) -> None:
        self.trying = False
        self.nextTry = self.clock.seconds() + self.retryInterval
        if self.healthy:
            self._down(reason)

    def abandoned(self) -> None:
        """The call was cancelled by its caller: no verdict on the store."""
        self.trying = False

    def fellBack(self) -> None:
        """One decision was taken locally because the store was unavailable."""
        if self.fallbacks is not None:
            self.fallbacks.inc()

    def _down(self, reason: object) -> None:
        self.healthy = False
        self.nextTry = self.clock.seconds() + self.retryInterval
        self.log.warn("{store} unavailable for {use} ({reason}): deciding locally until it is back",
                      store=self.store, use=self.use, reason=str(reason) or type(reason).__name__)
