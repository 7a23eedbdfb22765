# -*- test-case-name: tests.test_redis_client -*-
"""
The gateway's one Redis connection: connects, logs in, watches the
connection, reconnects with backoff, and says what state it is in.

States (L{RedisClient.state}):

  - C{connecting}: started, never connected yet;
  - C{up}: connected, logged in (AUTH), database selected (SELECT), and
    answering (PING, or ROLE is C{master} behind Sentinel);
  - C{down}: the connection was lost or an attempt failed; attempts go on.

Whatever the fault (Redis killed, stalled by SIGSTOP, the network gone, a
process that accepts connections and never answers), the connection ends
up cut (refused, a connect timeout, a handshake timeout, or the pipeline's
liveness watchdog of L{RedisProtocol}) and the next attempt is scheduled
after a backoff: C{initialDelay} doubling up to C{maxDelay}, each delay
jittered to 50-100 % of its value so that many gateways do not reconnect
in step.  A connection that stays quiet is PINGed every C{heartbeat}
seconds so that a stall is noticed even without traffic.

While the state is not C{up}, commands fail at once with
L{StoreUnavailable}: callers decide locally (rate limits, the cache) and
never wait for Redis.  Every command has a timeout (C{timeout}, from
C{stores.redis_timeout}).  The outage is logged once when it starts and
once when it ends; the attempts in between are logged at debug level.

Behind Redis Sentinel the primary's address is asked of the sentinels
(C{SENTINEL get-master-addr-by-name}) before every attempt, and ROLE must
say C{master} after connecting: a failover makes the old connection drop
(or answer READONLY, which cuts it) and the next attempt finds the new
primary.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, FirstError, ensureDeferred, fail, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgateway.config.redisurl import RedisAddress
from txgateway.stores.resp import Arg, ConnectionCut, RedisError, RedisProtocol, StoreUnavailable

__all__ = ["RedisClient", "NotPrimary"]

INITIAL_DELAY = 0.25
MAX_DELAY = 2.0
HEARTBEAT = 2.0

_log = Logger(namespace="txgateway.stores")

EndpointFactory = Callable[[str, int], IStreamClientEndpoint]


class NotPrimary(Exception):
    """Connected, but ROLE says this Redis is not the primary (a failover is under way)."""


class RedisClient:
    """
    One reconnecting connection to Redis (or to the primary behind Sentinel).

    C{reactor} makes connections, C{clock} keeps time, C{rng} jitters the
    backoff; C{endpointFor} (host, port -> endpoint) is built from the
    address unless given (tests give in-memory ones).
    """

    def __init__(self, address: RedisAddress, reactor: Any, clock: IReactorTime, *, timeout: float,
                 connectTimeout: float, rng: _random.Random | None = None,
                 endpointFor: EndpointFactory | None = None, log: Logger | None = None,
                 initialDelay: float = INITIAL_DELAY, maxDelay: float = MAX_DELAY,
                 heartbeat: float = HEARTBEAT) -> None:
        self.address = address
        self.reactor = reactor
        self.clock = clock
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.random = rng if rng is not None else _random.Random()
        self.endpointFor = endpointFor if endpointFor is not None else self._endpoint
        self.log = log if log is not None else _log
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.heartbeat = heartbeat
        self.state = "connecting"
        self.since = clock.seconds()
        self.lastError: str | None = None
        self.current = address.display  # the primary's address once known
        self.protocol: RedisProtocol | None = None
        self.attempts = 0  # failed attempts since the last success: the backoff's exponent
        self.sentinels = list(address.sentinels)
        self._running = False
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._beat: IDelayedCall | None = None
        self._closed: Deferred[None] | None = None

    # -- life cycle

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires (never fails) once it is closed."""
        self._running = False
        for call in (self._retry, self._beat):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._beat = None
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None
        protocol, self.protocol = self.protocol, None
        if protocol is None or not protocol.connected or protocol.transport is None:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        protocol.onLost = lambda _: closed.callback(None)
        protocol.transport.loseConnection()
        return closed

    @property
    def connected(self) -> bool:
        return self.state == "up"

    def describe(self) -> dict[str, Any]:
        """The state for /health, the admin API and the status page."""
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        report: dict[str, Any] = {"state": self.state, "since": since, "address": self.current}
        if self.address.sentinels:
            report["sentinel"] = {"primary_name": self.address.primaryName,
                                  "sentinels": [f"{h}:{p}" for h, p in self.sentinels]}
        if self.state != "up" and self.lastError:
            report["error"] = self.lastError
        return report

    # -- commands

    def execute(self, *args: Arg, timeout: float | None = None) -> Deferred[Any]:
        """
        Run one command: its reply, or a failure within C{timeout} (default
        C{stores.redis_timeout}); L{StoreUnavailable} at once when not C{up}.
        """
        protocol = self.protocol
        if protocol is None or self.state != "up":
            return fail(StoreUnavailable(f"redis {self.state}"))
        d = protocol.execute(*args)
        d.addTimeout(self.timeout if timeout is None else timeout, self.clock)
        if self.address.sentinels:
            d.addErrback(self._readOnly, protocol)
        return d

    def _readOnly(self, failure: Failure, protocol: RedisProtocol) -> Failure:
        """A primary demoted by a failover answers writes with READONLY: go and find the new one."""
        if isinstance(failure.value, RedisError) and failure.value.kind == "READONLY" and protocol is self.protocol:
            protocol.abortReason = "the primary became a replica (READONLY)"
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
        return failure

    def evalsha(self, sha: str, keys: list[Any], args: list[Any]) -> Deferred[Any]:
        return self.execute(b"EVALSHA", sha, len(keys), *keys, *args)

    def eval(self, source: bytes, keys: list[Any], args: list[Any]) -> Deferred[Any]:
        return self.execute(b"EVAL", source, len(keys), *keys, *args)

    def get(self, key: bytes) -> Deferred[Any]:
        return self.execute(b"GET", key)

    def set(self, key: bytes, value: bytes, expire: int | None = None) -> Deferred[Any]:
        if expire is None:
            return self.execute(b"SET", key, value)
        return self.execute(b"SET", key, value, b"EX", expire)

    def delete(self, key: bytes) -> Deferred[Any]:
        return self.execute(b"DEL", key)

    # -- connecting

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        self._attempt = ensureDeferred(self._connectOnce())
        self._attempt.addCallbacks(self._connected, self._failed)

    async def _connectOnce(self) -> RedisProtocol:
        if self.address.sentinels:
            host, port = await self._askSentinels()
            self.current = f"{host}:{port}"
        else:
            host, port = self.address.host, self.address.port
        protocol = await self._open(host, port)
        try:
            await self._handshake(protocol)
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
            raise
        return protocol

    async def _open(self, host: str, port: int) -> RedisProtocol:
        protocol = RedisProtocol(self.clock, self.connectTimeout)
        d: Deferred[Any] = self.endpointFor(host, port).connect(_Quiet(protocol))
        d.addTimeout(self.connectTimeout, self.clock)
        await d
        return protocol

    async def _handshake(self, protocol: RedisProtocol) -> None:
        a = self.address
        steps: list[Deferred[Any]] = []
        if a.password is not None:
            steps.append(protocol.execute(b"AUTH", a.username, a.password) if a.username
                         else protocol.execute(b"AUTH", a.password))
        if a.db:
            steps.append(protocol.execute(b"SELECT", a.db))
        check = protocol.execute(b"ROLE") if a.sentinels else protocol.execute(b"PING")
        steps.append(check)
        # Pipelined: one round trip, bounded as a whole.
        done = gatherResults(steps, consumeErrors=True)
        done.addTimeout(self.connectTimeout, self.clock)
        try:
            await done
        except FirstError as e:
            if e.subFailure.check(CancelledError):  # the timeout cancelled the steps
                raise DeferredTimeout("the handshake timed out") from None
            e.subFailure.raiseException()
        if a.sentinels:
            role = check.result if isinstance(check.result, list) else None
            if not role or role[0] != b"master":
                raise NotPrimary(f"{self.current} is not the primary (ROLE {role[0] if role else role!r})")

    async def _askSentinels(self) -> tuple[str, int]:
        """The primary's address from the first sentinel that knows it (which then goes first)."""
        problems = []
        for i, (host, port) in enumerate(list(self.sentinels)):
            try:
                protocol = await self._open(host, port)
            except Exception as e:
                problems.append(f"{host}:{port}: {_why(e)}")
                continue
            try:
                ask = protocol.execute(b"SENTINEL", b"get-master-addr-by-name", self.address.primaryName or "")
                ask.addTimeout(self.connectTimeout, self.clock)
                reply = await ask
            except Exception as e:
                problems.append(f"{host}:{port}: {_why(e)}")
                continue
            finally:
                if protocol.transport is not None:
                    protocol.transport.loseConnection()
            if isinstance(reply, list) and len(reply) == 2:
                if i:
                    self.sentinels.insert(0, self.sentinels.pop(i))
                return reply[0].decode("utf-8", "replace"), int(reply[1])
            problems.append(f"{host}:{port}: does not know {self.address.primaryName!r}")
        raise StoreUnavailable("no sentinel named the primary (" + "; ".join(problems) + ")")

    def _connected(self, protocol: RedisProtocol) -> None:
        self._attempt = None
        if not self._running:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            return
        self.protocol = protocol
        self.attempts = 0
        protocol.onLost = self._lost
        self._setState("up", None)
        self._scheduleBeat()

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self._running:
            return
        self.attempts += 1
        self._setState("down", _why(failure.value))
        self._scheduleRetry()

    def _lost(self, reason: Failure) -> None:
        self.protocol = None
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        if not self._running:
            return
        self._setState("down", f"connection lost: {_why(reason.value)}")
        self._scheduleRetry()

    def nextDelay(self) -> float:
        """The backoff before the next attempt: doubling from C{initialDelay}, capped, jittered 50-100 %."""
        exponent = min(max(self.attempts - 1, 0), 16)
        return min(self.maxDelay, self.initialDelay * 2 ** exponent) * self.random.uniform(0.5, 1.0)

    def _scheduleRetry(self) -> None:
        delay = self.nextDelay()
        self.log.debug("redis {address}: next attempt in {delay:.2f}s", address=self.current, delay=delay)
        self._retry = self.clock.callLater(delay, self._connect)

    def _scheduleBeat(self) -> None:
        self._beat = self.clock.callLater(self.heartbeat, self._heartbeat)

    def _heartbeat(self) -> None:
        """PING a quiet connection, so that a stall is noticed without traffic (the watchdog cuts it)."""
        self._beat = None
        protocol = self.protocol
        if protocol is None or not self._running:
            return
        if not protocol.pending and self.clock.seconds() - protocol.lastReply >= self.heartbeat:
            protocol.execute(b"PING").addErrback(lambda _: None)
        self._scheduleBeat()

    def _setState(self, state: str, error: str | None) -> None:
        previous = self.state
        self.lastError = error
        if state == previous:
            self.log.debug("redis {address} still {state}: {error}", address=self.current, state=state, error=error)
            return
        now = self.clock.seconds()
        if state == "down":
            self.log.warn("redis {address} unavailable ({error}): reconnecting with backoff, deciding locally "
                          "meanwhile", address=self.current, error=error)
        elif previous == "down":
            self.log.info("redis {address} is back after {outage:.1f}s: shared state in use again",
                          address=self.current, outage=now - self.since)
        else:
            self.log.info("connected to redis {address}", address=self.current)
        self.state = state
        self.since = now

    # -- endpoints

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        """An IP connects directly (no resolver thread per reconnect), a name through HostnameEndpoint."""
        reactor, wait = self.reactor, self.connectTimeout
        endpoint: IStreamClientEndpoint
        if self.address.unixPath is not None:
            return UNIXClientEndpoint(reactor, self.address.unixPath, timeout=wait)
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=wait)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=wait)
        else:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=wait)
        if self.address.tls:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint


class _Quiet(Factory):
    """connectProtocol's factory, without "Starting factory ..." log lines on every reconnect."""

    noisy = False

    def __init__(self, protocol: RedisProtocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        return self.protocol_


def _why(error: BaseException | None) -> str:
    if isinstance(error, DeferredTimeout):
        return "timed out"
    if isinstance(error, ConnectionDone):
        return "closed by the server"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = str(error)
    if isinstance(error, ConnectionCut):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
