# -*- test-case-name: tests.test_pool -*-
"""
Connections to targets: one endpoint per target, and the idle-connection pool.

Twisted private names used here (held to stock Twisted by tests/test_pool.py):
  - C{twisted.web.client._HTTP11ClientFactory} (subclassed; its
    C{_quiescentCallback}) and C{_RetryingHTTP11ClientProtocol};
  - C{HTTPConnectionPool} internals: C{_connections}, C{_putConnection},
    C{_newConnection}, C{_factory}, C{_reactor};
  - C{twisted.web._newclient.HTTP11ClientProtocol} (the type of pooled
    connections; their C{state}).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory, _RetryingHTTP11ClientProtocol
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txgateway.http.client.protocol import StrictClientProtocol

if TYPE_CHECKING:
    from txgateway.http.sending import WriteBatcher

__all__ = ["ConnectionPool", "TargetEndpoints"]


@implementer(IAgentEndpointFactory)
class TargetEndpoints:
    """
    One client endpoint per target, made once.

    The stock Agent builds a C{HostnameEndpoint} (with IDNA encoding) for
    every request even when a pooled connection is reused; caching by
    scheme, host and port removes that from the hot path, and IP literals
    skip name resolution altogether.  An C{https://} target's endpoint asks
    the upstream's TLS policy (C{tls}, a L{txgateway.tls.client.ClientTLSPolicy};
    the defaults, made when first needed, without one) for each new
    connection, so rotated certificates reach new connections.
    """

    def __init__(self, reactor: Any, connectTimeout: float, tls: Any = None) -> None:
        self.reactor = reactor
        self.connectTimeout = connectTimeout
        self._tls = tls
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        ep = self._cache.get(key)
        if ep is None:
            ep = self._cache[key] = self._make(*key)
        return ep

    def tlsPolicy(self) -> Any:
        """The upstream's TLS policy; the defaults (system CAs, verified) when none was given."""
        if self._tls is None:
            # Imported only here: pyOpenSSL costs every process ~15 MB otherwise.
            from txgateway.tls.client import ClientTLSPolicy

            self._tls = ClientTLSPolicy("", None, self.reactor)
        return self._tls

    def _make(self, scheme: bytes, host: bytes, port: int) -> IStreamClientEndpoint:
        hostText = host.decode("ascii").strip("[]")
        ep: IStreamClientEndpoint
        try:
            addr = ipaddress.ip_address(hostText)
        except ValueError:
            ep = HostnameEndpoint(self.reactor, hostText, port, timeout=self.connectTimeout)
        else:
            cls = TCP4ClientEndpoint if addr.version == 4 else TCP6ClientEndpoint
            ep = cls(self.reactor, hostText, port, timeout=self.connectTimeout)
        if scheme == b"https":
            ep = _TLSEndpoint(self.tlsPolicy(), hostText, ep)
        return ep


@implementer(IStreamClientEndpoint)
class _TLSEndpoint:
    """TLS over C{inner}, with what the upstream's policy says at the moment each connection is made."""

    def __init__(self, policy: Any, host: str, inner: IStreamClientEndpoint) -> None:
        self.policy = policy
        self.host = host
        self.inner = inner

    def connect(self, factory: Any) -> Deferred[Any]:
        from twisted.internet.endpoints import wrapClientTLS

        return wrapClientTLS(self.policy.creatorFor(self.host), self.inner).connect(factory)

    def __repr__(self) -> str:
        return f"<TLS to {self.host} over {self.inner!r}>"


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # one "Starting factory" log line per upstream connection is noise
    writes: WriteBatcher | None = None

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return StrictClientProtocol(self._quiescentCallback, self.writes)


class ConnectionPool(HTTPConnectionPool):
    """
    Twisted's connection pool, with idle connections expired by one timer.

    C{HTTPConnectionPool} schedules a timer each time a connection goes back
    to the pool and cancels it when the connection is taken again: a timer
    made and cancelled for every proxied request.  Here a pooled connection
    only notes when it went idle; one timer per pool closes the connections
    idle for C{cachedConnectionTimeout} (C{pool.idle_timeout}) and sets
    itself for the next one due.
    """

    _factory = _QuietFactory
    writes: WriteBatcher | None = None

    #: Send a bodiless idempotent request again on a new connection when a
    #: reused one turns out closed (L{reuse}).
    replayStale = True

    def __init__(self, reactor: Any, persistent: bool = True) -> None:
        super().__init__(reactor, persistent)
        self._idleSince: dict[Any, float] = {}
        self._sweeper: IDelayedCall | None = None

    def takeIdle(self, key: Any) -> HTTP11ClientProtocol | None:
        """An idle connection to C{key} that is still open, taken out of the pool; None if there is none."""
        connections = self._connections.get(key)
        while connections:
            connection = connections.pop(0)
            self._idleSince.pop(connection, None)
            if connection.state == "QUIESCENT":
                return connection  # type: ignore[no-any-return]
        return None

    def getConnection(self, key: Any, endpoint: IStreamClientEndpoint) -> Deferred[HTTP11ClientProtocol]:
        connection = self.takeIdle(key)
        if connection is None:
            return self._newConnection(key, endpoint)
        return succeed(self.reuse(connection, key, endpoint))

    def reuse(self, connection: HTTP11ClientProtocol, key: Any, endpoint: IStreamClientEndpoint) -> Any:
        """
        An idle connection made ready to carry one more request.

        A target may close a keep-alive connection while it sits idle here,
        and the close can cross our next request on the wire.  Such a request
        dies before any byte of answer through no fault of the target, so
        (like nginx, Go's net/http and Twisted's own pool) a GET, HEAD,
        OPTIONS, DELETE or TRACE without a body is sent once more on a new
        connection; anything else, or a request the client cancelled, fails
        as it did.  This is not a retry in the sense of C{retries}: the
        target never saw the request, so nothing counts against it.
        """
        if not (self.replayStale or self.retryAutomatically):
            return connection

        def again() -> Deferred[HTTP11ClientProtocol]:
            return self._newConnection(key, endpoint)

        return _RetryingHTTP11ClientProtocol(connection, again)

    def _putConnection(self, key: Any, connection: HTTP11ClientProtocol) -> None:
        if connection.state != "QUIESCENT":
            super()._putConnection(key, connection)  # logs the bug, keeps nothing
            return
        connections = self._connections.setdefault(key, [])
        if len(connections) == self.maxPersistentPerHost:
            dropped = connections.pop(0)
            self._idleSince.pop(dropped, None)
            dropped.transport.loseConnection()  # type: ignore[union-attr]
        connections.append(connection)
        self._idleSince[connection] = self._reactor.seconds()
        if self._sweeper is None:
            self._sweeper = self._reactor.callLater(self.cachedConnectionTimeout, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._reactor.seconds()
        timeout = self.cachedConnectionTimeout
        due: float | None = None
        for connections in self._connections.values():
            for connection in list(connections):
                since = self._idleSince.get(connection)
                if since is None:
                    continue
                if now - since >= timeout:
                    connections.remove(connection)
                    del self._idleSince[connection]
                    connection.transport.loseConnection()
                elif due is None or since + timeout < due:
                    due = since + timeout
        if due is not None:
            self._sweeper = self._reactor.callLater(due - now, self._sweep)

    def closeCachedConnections(self) -> Deferred[None]:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        self._idleSince.clear()
        return super().closeCachedConnections()  # type: ignore[no-any-return]

    def _newConnection(self, key: Any, endpoint: IStreamClientEndpoint) -> Deferred[HTTP11ClientProtocol]:
        def quiescent(protocol: HTTP11ClientProtocol) -> None:
            self._putConnection(key, protocol)

        factory = _QuietFactory(quiescent, repr(endpoint))
        factory.writes = self.writes
        return endpoint.connect(factory)  # type: ignore[return-value]
