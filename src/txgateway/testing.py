# -*- test-case-name: tests.test_testing -*-
"""
Test a gateway in memory: a config as YAML, origins as twisted.web resources,
time as a L{Clock}; assert what a client sees.

In the manner of C{treq.testing}, for code that configures txgateway (and
for txgateway's own tests)::

    from twisted.web.resource import Resource
    from txgateway.testing import GatewayFixture

    fixture = GatewayFixture.fromYAML('''
    upstreams:
      app: {targets: [http://app:8000]}
    routes:
      - {name: api, match: {path_prefix: /api}, upstream: app}
    ''', origins={"http://app:8000": myResource})
    response = fixture.request(b"GET", b"http://gw.example/api/users")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"x-request-id")

Everything between the client and the origins is the real thing: the
gateway's listening channel and resource tree, its filters, the forwarder
with its retries and breakers, the upstream HTTP/1.1 client and connection
pool.  Only the sockets are in memory (C{twisted.test.iosim} pumps the
bytes), and time moves only when the test moves it: L{GatewayFixture.clock}
is the gateway's reactor and clock, so C{fixture.clock.advance(30)} is how
a test reaches a timeout, a breaker's reopening or a cache entry's expiry.

A target with no origin in C{origins} refuses connections, as a dead
backend does.  A request the gateway has not answered once the bytes stop
moving (an origin that waits on the clock, a queued request) is returned
by L{GatewayFixture.requestDeferred} as a Deferred that has not fired:
advance the clock, call L{GatewayFixture.flush}, and check it again.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.client import URI, Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from txgateway.config import parseConfig
from txgateway.http.client.agent import UpstreamAgent
from txgateway.observe import Metrics
from txgateway.service import GatewayService

__all__ = ["GatewayFixture", "FixtureResponse"]

# Turns of "move the bytes, run what is due now" before a request is taken as waiting on the clock.
_MAX_TURNS = 10_000


class FixtureResponse:
    """What the client saw: status, headers (a L{Headers}) and the whole body."""

    def __init__(self, code: int, phrase: bytes, headers: Headers, body: bytes) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.body = body

    def header(self, name: bytes | str) -> bytes | None:
        """The last value of header C{name}, or None."""
        values = self.headers.getRawHeaders(name.encode() if isinstance(name, str) else name)
        return values[-1] if values else None

    def __repr__(self) -> str:
        return f"<FixtureResponse {self.code} {self.body[:200]!r}>"


class _Wire:
    """In-memory connections and the pumps that move their bytes."""

    def __init__(self) -> None:
        self.pumps: list[iosim.IOPump] = []
        self.nextPort = 40000

    def connect(self, serverFactory: IProtocolFactory, clientFactory: IProtocolFactory,
                serverAddress: IPv4Address) -> Deferred[IProtocol]:
        self.nextPort += 1
        clientAddress = IPv4Address("TCP", "127.0.0.1", self.nextPort)
        server = serverFactory.buildProtocol(clientAddress)
        client = clientFactory.buildProtocol(serverAddress)
        if server is None or client is None:
            return fail(ConnectionRefusedError("the factory built no protocol"))
        serverTransport = iosim.FakeTransport(server, True, serverAddress, clientAddress)
        clientTransport = iosim.FakeTransport(client, False, clientAddress, serverAddress)
        self.pumps.append(iosim.connect(server, serverTransport, client, clientTransport, greet=False))
        return succeed(client)

    def pump(self) -> bool:
        """Move the bytes waiting on every connection; whether any moved."""
        moved = False
        for p in list(self.pumps):
            moved = p.pump(advanceClock=False) or moved
            if p.clientIO.disconnected and p.serverIO.disconnected:
                self.pumps.remove(p)
        return moved


@implementer(IStreamClientEndpoint)
class _Endpoint:
    def __init__(self, wire: _Wire, site: Site | None, address: IPv4Address) -> None:
        self.wire = wire
        self.site = site
        self.address = address

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.site is None:
            return fail(ConnectionRefusedError(f"no origin at {self.address.host}:{self.address.port}"))
        return self.wire.connect(self.site, protocolFactory, self.address)


@implementer(IAgentEndpointFactory)
class _Origins:
    """Every upstream connection of the gateway ends at one of these in-memory sites (by scheme, host, port)."""

    def __init__(self, wire: _Wire, origins: Mapping[str, IResource], clock: MemoryReactorClock) -> None:
        self.wire = wire
        self.sites: dict[tuple[bytes, bytes, int], Site] = {}
        for url, resource in origins.items():
            uri = _origin(url)
            site = Site(resource, reactor=clock)  # its idle timers run on the fixture's clock, not the global reactor
            site.log = lambda request: None  # type: ignore[method-assign]
            self.sites[uri] = site

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        return _Endpoint(self.wire, self.sites.get(key), IPv4Address("TCP", "127.0.0.1", uri.port))


def _origin(url: str) -> tuple[bytes, bytes, int]:
    parsed = URI.fromBytes(url.rstrip("/").encode() + b"/")
    return parsed.scheme, parsed.host, parsed.port


def useInMemoryOrigins(service: GatewayService, origins: IAgentEndpointFactory) -> None:
    """
    Point every upstream of C{service} at C{origins}.

    The one place that knows how the gateway's upstream client is built, to
    be re-pointed when it changes (#17's upstream-client interface): today
    each cluster keeps its own Agent (with its pool and fast paths, which
    the tests should exercise) and only the Agent's endpoint factory, where
    connections are made, is swapped.  Call it again after a reload that
    rebuilt pools.
    """
    for cluster in service.gateway.runtime.clusters.values():
        client = cluster.agent
        assert isinstance(client, UpstreamAgent), f"not the HTTP/1.1 client: {client!r}"
        client.connectVia(origins)


class GatewayFixture:
    """
    One gateway, in memory.  Build it with L{fromYAML}; send requests with
    L{request} (or L{requestDeferred}); move time with C{clock.advance}.

    @ivar clock: the gateway's reactor and clock.
    @ivar service: the L{GatewayService} (its metrics, gateway state, reload).
    """

    def __init__(self, service: GatewayService, clock: MemoryReactorClock, wire: _Wire) -> None:
        self.service = service
        self.clock = clock
        self._wire = wire
        self._gatewayAddress = IPv4Address("TCP", "127.0.0.1", 8080)
        # The client keeps its connections alive between requests, as browsers and SDKs do.
        self._client = Agent.usingEndpointFactory(clock, _GatewayEndpoints(self),
                                                  pool=HTTPConnectionPool(clock, persistent=True))

    @classmethod
    def fromYAML(cls, yaml: str, origins: Mapping[str, IResource] | None = None,
                 clock: MemoryReactorClock | None = None, rng: random.Random | None = None,
                 shared: dict[str, Any] | None = None) -> GatewayFixture:
        """
        A gateway configured by C{yaml} (the text of a gw.yaml) whose
        upstream targets are the twisted.web resources in C{origins}, keyed
        by target URL (C{"http://app:8000"}).  C{shared}: the service's
        state kept across reloads, given from the start (a fleet worker's).
        """
        clock = clock if clock is not None else MemoryReactorClock()
        service = GatewayService(parseConfig(yaml), clock, clock=clock, metrics=Metrics(processMetrics=False),
                                 rng=rng or random.Random(0), shared=shared)
        wire = _Wire()
        useInMemoryOrigins(service, _Origins(wire, origins or {}, clock))
        service.gateway.state.ready = True
        return cls(service, clock, wire)

    def requestDeferred(self, method: bytes, url: bytes,
                        headers: Headers | Mapping[bytes, Iterable[bytes]] | None = None,
                        body: bytes | None = None) -> Deferred[FixtureResponse]:
        """Send one request (over a new connection); a Deferred of what the client sees, after L{flush}."""
        if headers is not None and not isinstance(headers, Headers):
            headers = Headers({k: list(v) for k, v in headers.items()})
        producer = FileBodyProducer(io.BytesIO(body), cooperator=_Immediate()) if body is not None else None
        d = self._client.request(method, url, headers, producer)

        def read(response: IResponse) -> Deferred[FixtureResponse]:
            return _readBody(response).addCallback(
                lambda data: FixtureResponse(response.code, response.phrase, response.headers, data))

        d.addCallback(read)
        self.flush()
        return d

    def request(self, method: bytes, url: bytes, headers: Headers | Mapping[bytes, Iterable[bytes]] | None = None,
                body: bytes | None = None) -> FixtureResponse:
        """Send one request and return what the client sees; fails if the gateway has not answered yet."""
        result: list[Any] = []
        self.requestDeferred(method, url, headers, body).addBoth(result.append)
        if not result:
            raise AssertionError(f"{method!r} {url!r}: no answer without time passing; use requestDeferred, "
                                 "advance the clock and flush")
        if isinstance(result[0], Failure):
            result[0].raiseException()
        response: FixtureResponse = result[0]
        return response

    def flush(self) -> None:
        """Move bytes and run what is due now until nothing moves."""
        for _ in range(_MAX_TURNS):
            moved = self._wire.pump()
            due = any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls())
            self.clock.advance(0)
            if not moved and not due:
                return
        raise AssertionError("the gateway kept busy without time passing")


@implementer(IAgentEndpointFactory)
class _GatewayEndpoints:
    """The client side: every connection ends at the gateway's own Site."""

    def __init__(self, fixture: GatewayFixture) -> None:
        self.fixture = fixture

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return _Endpoint(self.fixture._wire, self.fixture.service.site, self.fixture._gatewayAddress)


class _BodyReader(Protocol):
    """The whole body; a connection that breaks before its end fails the Deferred."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _readBody(response: IResponse) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_BodyReader(done))
    return done


class _Immediate:
    """A cooperator that runs a body producer's work at once, so a request body needs no reactor turns."""

    def cooperate(self, iterator: Any) -> Any:
        for _ in iterator:
            pass
        return _Done()


class _Done:
    def whenDone(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass
