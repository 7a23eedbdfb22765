# -*- test-case-name: tests.test_redis_client -*-
"""
RESP2, the Redis wire protocol, on one connection: commands are pipelined
and each gets a Deferred that fires with its reply in order.

Why our own and not txredisapi: the gateway needs very little of Redis
(EVALSHA/EVAL, GET/SET/DEL, PING, AUTH, SELECT, ROLE, SENTINEL), but needs
exact control of what happens when Redis stalls; txredisapi's pool
waits without bound while it has no connection and stops reconnecting
when a SELECT on a new connection times out (issue 18).

A connection that stops answering is cut: when the oldest command still
waiting for its reply has waited C{liveness} seconds, the transport is
aborted, every waiting Deferred fails with L{ConnectionLost} and the
client reconnects.  One timer does this for the whole pipeline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = ["ConnectionCut", "NoScript", "RedisError", "RedisProtocol", "StoreUnavailable", "encodeCommand", "parseReply"]

Arg = bytes | str | int | float


class StoreUnavailable(Exception):
    """The store has no live connection right now; the caller decides locally."""


class ConnectionCut(ConnectionLost):
    """We cut the connection (no reply in time, a protocol error); C{str()} says why."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "connection cut"


class RedisError(Exception):
    """An error reply (C{-ERR ...}); C{args[0]} is Redis' text."""

    @property
    def kind(self) -> str:
        """The error's first word (ERR, NOSCRIPT, READONLY, WRONGTYPE...)."""
        return str(self.args[0]).split(" ", 1)[0] if self.args else ""


class NoScript(RedisError):
    """NOSCRIPT: EVALSHA named a script this Redis does not have (restarted or flushed)."""


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        raise TypeError("a bool is not a Redis argument")
    return repr(value).encode("ascii") if isinstance(value, float) else b"%d" % value


def encodeCommand(args: tuple[Arg, ...] | list[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _arg(a)
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


class _Incomplete:
    """More bytes are needed."""


INCOMPLETE = _Incomplete()


def parseReply(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """
    One reply from C{buf} at C{pos}: (value, next position), or
    (L{INCOMPLETE}, C{pos}) when it has not all arrived.

    Simple strings and bulk strings are bytes, integers int, nil None,
    arrays lists, errors L{RedisError} instances (values, not raised: an
    array may hold one).  Raises L{ValueError} on bytes that are not RESP2.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return INCOMPLETE, pos
    kind = buf[pos]
    nxt = end + 2
    if kind == 0x24:  # $ bulk string
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return INCOMPLETE, pos
        return bytes(buf[nxt:nxt + n]), nxt + n + 2
    if kind == 0x3A:  # : integer
        return int(buf[pos + 1:end]), nxt
    if kind == 0x2B:  # + simple string
        return bytes(buf[pos + 1:end]), nxt
    if kind == 0x2D:  # - error
        text = bytes(buf[pos + 1:end]).decode("utf-8", "replace")
        return (NoScript(text) if text.startswith("NOSCRIPT") else RedisError(text)), nxt
    if kind == 0x2A:  # * array
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, nxt
        items = []
        at = nxt
        for _ in range(n):
            item, after = parseReply(buf, at)
            if item is INCOMPLETE:
                return INCOMPLETE, pos
            items.append(item)
            at = after
        return items, at
    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos:pos + 20])!r}")


class RedisProtocol(Protocol):
    """
    One connection.  L{execute} writes a command and returns its Deferred;
    replies are matched to commands in order (Redis answers in order).

    C{onLost} (set by the owner) is called once with the reason when the
    connection ends.  A Deferred cancelled by its caller (a timeout) keeps
    its place in the pipeline; its reply, when it comes, is dropped.
    """

    def __init__(self, clock: IReactorTime, liveness: float) -> None:
        self.clock = clock
        self.liveness = liveness
        self.pending: deque[tuple[Deferred[Any], float]] = deque()
        self.buffer = bytearray()
        self.connected = False
        self.lastReply = clock.seconds()
        self.onLost: Callable[[Failure], None] | None = None
        self._watchdog: IDelayedCall | None = None
        self.abortReason: str | None = None

    def connectionMade(self) -> None:
        self.connected = True
        self.lastReply = self.clock.seconds()

    def execute(self, *args: Arg) -> Deferred[Any]:
        """Send one command; fires with its reply, fails with L{RedisError} on an error reply."""
        if not self.connected or self.transport is None:
            return fail(StoreUnavailable("not connected"))
        d: Deferred[Any] = Deferred()
        now = self.clock.seconds()
        self.pending.append((d, now))
        self.transport.write(encodeCommand(args))
        if self._watchdog is None:
            self._watchdog = self.clock.callLater(self.liveness, self._check)
        return d

    def dataReceived(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                reply, after = parseReply(buf, pos)
                if reply is INCOMPLETE:
                    break
                pos = after
                self._reply(reply)
        except ValueError as e:
            self._abort(f"protocol error: {e}")
            return
        if pos:
            del buf[:pos]

    def _reply(self, reply: Any) -> None:
        self.lastReply = self.clock.seconds()
        if not self.pending:
            self._abort("a reply nobody asked for")
            return
        d, _ = self.pending.popleft()
        if d.called:
            return  # timed out or cancelled already: the reply is late, drop it
        if isinstance(reply, RedisError):
            d.errback(reply)
        else:
            d.callback(reply)

    def _check(self) -> None:
        """The watchdog: cut a connection whose oldest waiting command is older than C{liveness}."""
        self._watchdog = None
        if not self.pending or not self.connected:
            return
        oldest = self.pending[0][1]
        now = self.clock.seconds()
        if now - oldest >= self.liveness:
            self._abort(f"no reply within {self.liveness:g}s")
            return
        self._watchdog = self.clock.callLater(oldest + self.liveness - now, self._check)

    def _abort(self, why: str) -> None:
        self.abortReason = why
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        why = self.abortReason
        failure = Failure(ConnectionCut(why)) if why else reason
        pending, self.pending = self.pending, deque()
        for d, _ in pending:
            if not d.called:
                d.errback(failure)
        onLost, self.onLost = self.onLost, None
        if onLost is not None:
            onLost(failure)
