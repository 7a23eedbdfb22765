# -*- test-case-name: tests.test_channel -*-
"""
What a client connection keeps for its whole life, below the request heads
the channel (L{txgateway.http.channel}) parses: the write timeout, the idle
timeout kept with one timer across requests, and the connection's own
addresses and TLS-ness, asked for on every request and fixed per connection.

L{GatewayConnection} is the base class of L{GatewayChannel
<txgateway.http.channel.GatewayChannel>}; it exists so each module holds one
concern.  No private Twisted name is used here (C{timeOut} and C{callLater}
are C{TimeoutMixin}'s public attributes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web import http

from txgateway.http.sending import pendingBytes

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["GatewayConnection"]

log = Logger(namespace="txgateway")


class GatewayConnection(http.HTTPChannel):
    """An HTTP channel with the gateway's connection-lifetime timers and cached addresses."""

    site: Any
    _peerHost: str | None = None
    _localAddress: Any = None
    _peerAddress: Any = None
    _idleCall: IDelayedCall | None = None
    _idleFrom = 0.0
    _secure: bool | None = None
    _writeCall: IDelayedCall | None = None
    _writePending: int | None = None

    def _stopConnectionTimers(self) -> None:
        """The connection is gone: neither timer may fire for it."""
        self._stopWriteTimer()
        idle, self._idleCall = self._idleCall, None
        if idle is not None and idle.active():
            idle.cancel()

    # -- the write timeout (server.timeouts.write)

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: the client is not taking what we
        send.  Twisted pauses the response's producer (the upstream), which
        then waits as long as the client does; a client that never reads
        again would hold both connections for ever.  From now on the
        response owes progress within C{timeouts.write}.
        """
        super().pauseProducing()
        seconds = self.site.limits.timeouts.write
        if self._writeCall is None and seconds and seconds > 0 and self.transport is not None:
            self._writePending = pendingBytes(self.transport)
            self._writeCall = self.site.reactor.callLater(seconds, self._writeStalled, seconds)

    def resumeProducing(self) -> None:
        self._stopWriteTimer()
        super().resumeProducing()

    def _stopWriteTimer(self) -> None:
        call, self._writeCall = self._writeCall, None
        if call is not None and call.active():
            call.cancel()

    def _writeStalled(self, seconds: float) -> None:
        self._writeCall = None
        transport = self.transport
        if transport is None:
            return
        pending = pendingBytes(transport)
        before, self._writePending = self._writePending, pending
        if pending is not None and before is not None and pending < before:
            # Slow, but reading: the socket took some since the last look.
            self._writeCall = self.site.reactor.callLater(seconds, self._writeStalled, seconds)
            return
        log.warn("client {peer} read nothing of its response for {seconds:g}s (server.timeouts.write); "
                 "closing its connection and the upstream's", peer=self._peerHost or "?", seconds=seconds)
        self.site.metrics.writeTimeouts.inc()
        # The request sees the connection lost, as when a client leaves: the
        # forward is cancelled and its upstream connection closed.
        transport.abortConnection()  # type: ignore[attr-defined]

    # -- the idle timeout (server.timeouts.idle), kept lazily

    def setTimeout(self, period: float | None) -> float | None:  # type: ignore[override]
        """
        TimeoutMixin's idle timeout, with one timer kept across requests.

        twisted.web turns the idle timeout off while a request is handled and
        on again once it is answered: a timer cancelled and another made for
        every request.  Here turning it off only records that; the timer
        stays, and when it fires it looks at when the connection was last
        active (and whether the timeout is on) before closing anything,
        setting itself again for what is left.
        """
        previous = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        if period is not None:
            self._idleFrom = now = self.site.reactor.seconds()
            call = self._idleCall
            if call is None:
                self._idleCall = self.callLater(period, self._idleCheck)
            elif call.getTime() > now + period:
                call.reset(period)
        return previous

    def resetTimeout(self) -> None:
        if self.timeOut is not None and self._idleCall is not None:
            self._idleFrom = self.site.reactor.seconds()

    def _idleCheck(self) -> None:
        self._idleCall = None
        period = self.timeOut
        if period is None:
            return  # a request is being handled; setTimeout sets a timer again when it is done
        now = self.site.reactor.seconds()
        due = self._idleFrom + period
        if now >= due:
            self.timeoutConnection()
        else:
            self._idleCall = self.callLater(due - now, self._idleCheck)

    def getHost(self) -> Any:
        # Every Request asks for it; the TCP transport answers with a
        # getsockname(2) each time.  A connection's own address never changes.
        host = self._localAddress
        if host is None:
            host = self._localAddress = super().getHost()
        return host

    def getPeer(self) -> Any:
        # Every Request asks for it; the TCP transport builds a new address
        # object each time.  A connection's peer never changes.
        peer = self._peerAddress
        if peer is None:
            peer = super().getPeer()
            if self.transport is not None:
                self._peerAddress = peer
        return peer

    def isSecure(self) -> bool:
        # Asked twice a request (twisted.web, X-Forwarded-Proto), each time a
        # zope interface adaptation of the transport; a connection is TLS or
        # not for its whole life.
        secure = self._secure
        if secure is None:
            secure = bool(super().isSecure())
            if self.transport is not None:
                self._secure = secure
        return secure
