# -*- test-case-name: tests.test_channel,tests.test_hardening -*-
"""
The listening Site: a resource tree swapped atomically on reload, and the
client connections counted, in total and per client address.

A client over C{server.max_connections_per_ip} is answered 503 and closed
before a channel is built for it; the drain waits on
L{GatewaySite.whenAllClosed}.  A listener that may speak HTTP/2 (C{ssl:}
with C{server.http2}, C{tcp:} with C{server.h2c}) puts a
L{NegotiatingProtocol <txgateway.http.negotiate.NegotiatingProtocol>} in
front of each channel; ALPN offers C{h2} through L{acceptableProtocols}
(twisted's C{IProtocolNegotiationFactory}).  No private Twisted name is
used here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http, server

from txgateway.http.addresses import AddressSet
from txgateway.http.channel import GatewayChannel
from txgateway.http.heads import RefusalHook, rawResponse
from txgateway.http.negotiate import NegotiatingProtocol, offeredProtocols
from txgateway.http.request import GatewayRequest

if TYPE_CHECKING:
    from txgateway.config import ServerConfig
    from txgateway.http.sending import WriteBatcher
    from txgateway.observe import Metrics

__all__ = ["GatewaySite"]

log = Logger(namespace="txgateway")


class _TooManyConnections(Protocol):
    """Says why, then hangs up: this client already holds its share of sockets."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(rawResponse(503, b"Service Unavailable", "too many connections from this address"))
        self.transport.loseConnection()


class GatewaySite(server.Site):
    """
    A Site that swaps its resource tree atomically on reload and counts
    connections, in total and per client address.
    """

    requestFactory = GatewayRequest
    protocol = GatewayChannel  # type: ignore[assignment]
    displayTracebacks = False

    def __init__(self, resource: Any, limits: ServerConfig, metrics: Metrics, reactor: Any = None,
                 writes: WriteBatcher | None = None, onRefusal: RefusalHook | None = None) -> None:
        super().__init__(resource, timeout=limits.timeouts.idle, reactor=reactor)
        self.limits = limits
        # Gives a refused request (400, 408, 413, 414, 431) its request id
        # and access-log line: it never reaches the resource tree that does.
        self.onRefusal = onRefusal
        self.writes = writes
        self.metrics = metrics
        self.channels: set[Any] = set()  # GatewayChannel and GatewayH2Connection
        # Only the main listener's description says whether it is TLS.
        self.isTLS = limits.listen.startswith("ssl:")
        self._negotiate = limits.http2 if self.isTLS else limits.h2c
        self.perAddress: dict[str, int] = {}
        self._trusted = AddressSet(limits.trusted_proxies)
        self._dateSecond = -1
        self._date = b""
        self._capped: set[str] = set()
        self._allClosed: list[Deferred[None]] = []

    def httpDate(self) -> bytes:
        """The C{Date} of a response sent now (RFC 9110 §6.6.1: whole seconds)."""
        now = int(self.reactor.seconds())
        if now != self._dateSecond:
            self._dateSecond = now
            self._date = http.datetimeToString(now)
        return self._date

    def buildProtocol(self, addr: Any) -> Any:
        cap = self.limits.max_connections_per_ip
        host = getattr(addr, "host", None)
        if cap and isinstance(host, str) and self.perAddress.get(host, 0) >= cap and host not in self._trusted:
            if host not in self._capped:
                # Once per episode, not once per refused socket.
                self._capped.add(host)
                log.warn("{peer} holds {n} connections (server.max_connections_per_ip); refusing more",
                         peer=host, n=cap)
            self.metrics.observeRefusal(503)
            return _TooManyConnections()
        channel = super().buildProtocol(addr)
        if self._negotiate and channel is not None:
            return NegotiatingProtocol(channel, self, self.isTLS)
        return channel

    def acceptableProtocols(self) -> list[bytes]:
        """What ALPN offers on a TLS listener: C{h2} first when C{server.http2} is on."""
        return offeredProtocols(self.limits.http2)

    def connectionOpened(self, channel: Any) -> None:
        self.channels.add(channel)
        self.metrics.activeConnections.inc()
        peer = getattr(channel.transport.getPeer(), "host", None) if channel.transport is not None else None
        if isinstance(peer, str):
            channel._peerHost = peer
            self.perAddress[peer] = self.perAddress.get(peer, 0) + 1

    def connectionClosed(self, channel: Any) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self.metrics.activeConnections.dec()
            peer = channel._peerHost
            if peer is not None:
                n = self.perAddress.get(peer, 0) - 1
                if n > 0:
                    self.perAddress[peer] = n
                else:
                    self.perAddress.pop(peer, None)
                if n < self.limits.max_connections_per_ip:
                    self._capped.discard(peer)
        if not self.channels and self._allClosed:
            waiters, self._allClosed = self._allClosed, []
            for d in waiters:
                d.callback(None)

    def whenAllClosed(self) -> Deferred[None]:
        """
        Fires once every client connection is closed.  The drain waits for
        this, not just for requests to finish: a response still in the
        socket buffer when the reactor stops would be cut off.
        """
        d: Deferred[None] = Deferred()
        if not self.channels:
            d.callback(None)
        else:
            self._allClosed.append(d)
        return d

    def log(self, request: Any) -> None:
        # The gateway writes its own access log (observe.AccessLog).
        pass
