"""
Connections to shared stores (Redis), used by shared rate limits and caches.

One reconnecting, lazy connection pool per process: it never blocks the
reactor, and while Redis is down the users of this pool fall back to their
local state (see limiting and caching), so Redis being gone never fails a
request.

What txredisapi (1.6) does while it has no connection matters here: a
command on a lazy pool does not fail, it waits in the pool's queue until a
connection comes back, however long that takes.  Its C{replyTimeout} only
starts once the command has been written.  So every user of the pool must
(1) not send at all when L{isConnected} says the pool is empty, and (2) put
its own C{addTimeout} on each command; L{RedisScript.run} does both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from zope.interface import implementer

from txgateway.config import StoresConfig

# Reconnect backoff of the pool: txredisapi's defaults (1s growing to 10s)
# leave a recovered Redis unused for up to 10s; reconnecting a local TCP
# socket every couple of seconds costs nothing.
RECONNECT_INITIAL_DELAY = 0.25
RECONNECT_MAX_DELAY = 2.0
POOL_SIZE = 4

_log = Logger(namespace="txgateway.stores")


class StoreUnavailable(Exception):
    """The store has no live connection right now; the caller decides locally."""


def makeRedis(config: StoresConfig, reactor: Any) -> Any:
    """
    A txredisapi lazy connection pool for C{stores.redis}, or None.

    The pool is assembled here rather than with C{lazyConnectionPool} so
    that we choose the endpoint: an IP address connects directly instead of
    going through the reactor's threaded resolver on every reconnect, a
    name goes through C{HostnameEndpoint}, and C{rediss://} is verified TLS.
    """
    if config.redis is None:
        return None
    import txredisapi

    parts = urlsplit(config.redis)
    waitConnect = connectTimeout(config)
    endpoint: Any
    if parts.scheme == "unix":
        endpoint = UNIXClientEndpoint(reactor, parts.path, timeout=waitConnect)
        handler: Any = txredisapi.UnixConnectionHandler
    else:
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 6379
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=waitConnect)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=waitConnect)
        else:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=waitConnect)
        if parts.scheme == "rediss":
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        handler = txredisapi.ConnectionHandler
    factory = txredisapi.RedisFactory(
        parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}", _dbid(parts.path if parts.scheme != "unix" else parts.query), POOL_SIZE, isLazy=True,
        handler=handler, password=unquote(parts.password) if parts.password else None,
        replyTimeout=config.redis_timeout, convertNumbers=False,
        username=unquote(parts.username) if parts.username else None)
    factory.reconnect = True
    factory.initialDelay = RECONNECT_INITIAL_DELAY
    factory.maxDelay = RECONNECT_MAX_DELAY
    factory.startConnecting(endpoint)
    _quiet(factory)
    return factory.handler


def connectTimeout(config: StoresConfig) -> float:
    """How long a (re)connect may take: a few replies' worth, at least a second."""
    return max(1.0, config.redis_timeout * 4)


def _dbid(text: str) -> int:
    """C{/3} in a redis URL's path, or C{db=3} in a unix URL's query."""
    text = text.strip("/")
    if text.startswith("db="):
        text = text[3:]
    return int(text) if text.isdigit() else 0


def _quiet(factory: Any) -> None:
    """
    Quiet reconnects.

    Each pool slot is a C{ClientService} that logs "Scheduling retry N to
    connect ..." at info level on every attempt: with a pool of 4 and Redis
    down that is a line every half second, which would bury the one line
    that matters (the fallback, logged by L{StoreHealth}).  Those lines are
    demoted to debug.  This reaches into txredisapi and Twisted internals, so
    it is best effort: if their layout changes we only get the noise back.
    """
    quiet = Logger(namespace="txgateway.stores.redis.reconnect", observer=_DemoteToDebug(globalLogPublisher))
    for slot in getattr(factory, "slots", ()):
        try:
            core = vars(slot.service._machine)["__automat_core__"]
            core.log = quiet
        except (AttributeError, KeyError, TypeError):
            return


@implementer(ILogObserver)
class _DemoteToDebug:
    """Passes events on at debug level (they still reach a debug-level log)."""

    def __init__(self, target: ILogObserver) -> None:
        self.target = target

    def __call__(self, event: dict[str, Any]) -> None:
        event["log_level"] = LogLevel.debug
        self.target(event)


def isConnected(pool: Any) -> bool:
    """
    Does the pool hold at least one live connection?

    A command sent to an empty lazy pool waits for a reconnect instead of
    failing, so callers ask first and decide locally at once when not.
    """
    if pool is None:
        return False
    factory = getattr(pool, "_factory", None)
    if factory is None:
        return True  # not a txredisapi pool (a test double): let the command tell
    return bool(getattr(factory, "size", 0))


def closeRedis(pool: Any) -> Deferred[Any]:
    """Close the pool; fires (never fails) once its connections are gone."""
    try:
        d: Deferred[Any] = pool.disconnect()
    except Exception:
        return succeed(None)
    return d.addErrback(lambda _: None)


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
        import txredisapi

        try:
            d: Deferred[Any] = pool.evalsha(self.sha, list(keys), list(args))
        except Exception as e:
            return fail(e)

        def noScript(f: Any) -> Any:
            f.trap(txredisapi.ScriptDoesNotExist)
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
