# -*- test-case-name: tests.test_h2client -*-
"""
HTTP/2 connections to one target, shared by the requests in flight.

A L{TargetPool} opens at most C{pool.max_connections} connections to its
target and puts at most C{pool.max_streams} streams (fewer if the target's
C{SETTINGS_MAX_CONCURRENT_STREAMS} says so) on each: a request takes a
stream on the busiest connection that still has room, so traffic packs into
few connections; when none has room, a new connection is opened while the
cap allows, and otherwise the request waits its turn (its deadline still
runs: a waiting request that is cancelled leaves the queue).  A connection
that said GOAWAY takes no new stream; one idle for C{pool.idle_timeout} is
closed.

No private name of any library is used here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgateway.http.client.h2protocol import H2ClientProtocol

__all__ = ["H2Settings", "TargetPool"]

log = Logger(namespace="txgateway.upstream")


@dataclass(frozen=True)
class H2Settings:
    """An upstream's HTTP/2 pool settings (C{pool.*} of its config)."""

    maxConnections: int = 4
    maxStreams: int = 100
    idleTimeout: float = 90.0
    pingInterval: float = 0.0
    pingTimeout: float = 10.0


class _Factory(Factory):
    noisy = False  # one "Starting factory" line per upstream connection is noise

    def __init__(self, pool: TargetPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> H2ClientProtocol:
        pool = self.pool
        s = pool.settings
        return H2ClientProtocol(pool.clock, s.maxStreams, pool.changed, s.pingInterval, s.pingTimeout, pool.alpn)


class TargetPool:
    """The HTTP/2 connections to one target."""

    def __init__(self, clock: IReactorTime, endpoint: IStreamClientEndpoint, settings: H2Settings,
                 alpn: bool, name: str) -> None:
        self.clock = clock
        self.endpoint = endpoint
        self.settings = settings
        self.alpn = alpn
        self.name = name
        self.connections: list[H2ClientProtocol] = []
        self.connecting = 0
        self.waiters: deque[Deferred[H2ClientProtocol]] = deque()
        self._sweeper: Any = None
        self._closing: list[Deferred[None]] = []
        self._lost: dict[H2ClientProtocol, Deferred[None]] = {}
        self.closed = False

    def acquire(self) -> Deferred[H2ClientProtocol]:
        """A connection with room for one more stream, now or when one has room."""
        connection = self._free()
        if connection is not None:
            return succeed(connection)
        d: Deferred[H2ClientProtocol] = Deferred(self._leave)
        self.waiters.append(d)
        self._grow()
        return d

    def _leave(self, d: Deferred[H2ClientProtocol]) -> None:
        if d in self.waiters:
            self.waiters.remove(d)

    def _free(self) -> H2ClientProtocol | None:
        best = None
        room = 0
        for c in self.connections:
            n = c.capacity()
            if n > 0 and (best is None or n < room):
                best, room = c, n  # the busiest with room: streams pack into few connections
        return best

    def _grow(self) -> None:
        if self.closed:
            return
        waiting = len(self.waiters)
        if not waiting or self.connecting * self.settings.maxStreams >= waiting:
            return
        if len(self.connections) + self.connecting >= self.settings.maxConnections:
            return
        self.connecting += 1
        d = self.endpoint.connect(_Factory(self))
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, connection: H2ClientProtocol) -> None:
        self.connecting -= 1
        if self.closed:
            connection.close()
            return
        self.connections.append(connection)
        self._dispatch()

    def _connectFailed(self, reason: Failure) -> None:
        self.connecting -= 1
        if self.connecting == 0 and self._free() is None:
            # Nothing is coming: the waiting requests fail as a connect error, and may try elsewhere.
            waiters, self.waiters = self.waiters, deque()
            for d in waiters:
                d.errback(reason)
            return
        self._dispatch()

    def changed(self, connection: H2ClientProtocol) -> None:
        """A connection's room changed (a stream ended, settings came, GOAWAY, closed)."""
        if connection.closed:
            if connection in self.connections:
                self.connections.remove(connection)
            lost = self._lost.pop(connection, None)
            if lost is not None:
                lost.callback(None)
        self._dispatch()
        if not connection.streams and not connection.closed and self._sweeper is None and not self.closed:
            self._sweeper = self.clock.callLater(self.settings.idleTimeout, self._sweep)

    def _dispatch(self) -> None:
        while self.waiters:
            connection = self._free()
            if connection is None:
                break
            self.waiters.popleft().callback(connection)
        self._grow()

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.clock.seconds()
        timeout = self.settings.idleTimeout
        due = None
        for c in list(self.connections):
            if c.streams or c.closed:
                continue
            if now - c.lastUsed >= timeout:
                c.close()
            elif due is None or c.lastUsed + timeout < due:
                due = c.lastUsed + timeout
        if due is not None and not self.closed:
            self._sweeper = self.clock.callLater(due - now, self._sweep)

    def close(self) -> Deferred[None]:
        """Close every connection (busy ones once their streams end); fires when all are closed."""
        self.closed = True
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        waits = []
        for c in list(self.connections):
            if c.closed:
                continue
            d: Deferred[None] = Deferred()
            self._lost[c] = d
            waits.append(d)
            c.close()
        if not waits:
            return succeed(None)
        return DeferredList(waits).addCallback(lambda _: None)
