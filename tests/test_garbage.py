"""
A proxied request leaves no reference cycles behind.

Objects caught in a cycle are freed only by the garbage collector, whose
generation-0 passes then run every few dozen requests and stall every request
in flight; with no cycles, reference counting frees each request's objects as
soon as it is answered.  This drives keep-alive requests through the real
Site, resource tree, chain, forwarder, Agent and pool, with the origin's side
of the pooled connection in memory, and asks the collector what it found.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txgateway.config import parseConfig
from txgateway.context import RequestContext
from txgateway.http.channel import GatewayRequest
from txgateway.observe import Metrics
from txgateway.service import GatewayService

CONFIG = """
server: {listen: "tcp:0"}
upstreams:
  app:
    targets: [http://127.0.0.1:9101, http://127.0.0.1:9102]
    balancer: least_connections
routes:
  - name: api
    match: {path_prefix: /api}
    upstream: app
    rate_limit: {rate: 100000/s, burst: 100000}
"""

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@implementer(IAgentEndpointFactory)
class _Origins:
    """Every target's connections end here; answered when pumped."""

    def __init__(self) -> None:
        self.waiting: list[Any] = []

    def endpointForURI(self, uri: Any) -> Any:
        return self

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.waiting.append((protocol, transport))
        return succeed(protocol)

    def answer(self) -> None:
        for protocol, transport in self.waiting:
            if transport.value().endswith(b"\r\n\r\n"):
                transport.clear()
                protocol.dataReceived(RESPONSE)


def _ours(o: Any, addr: IPv4Address) -> bool:
    """A request of the test's connection, or its context."""
    if isinstance(o, RequestContext):
        o = o.request
    return isinstance(o, GatewayRequest) and o.client == addr


class KeepAliveClient:
    """
    One keep-alive client of an in-memory gateway (the real Site, tree,
    forwarder, Agent and pool) whose upstream connections end in L{_Origins}.
    """

    def __init__(self, port: int = 40000) -> None:
        self.clock = MemoryReactorClock()
        service = GatewayService(parseConfig(CONFIG), self.clock, clock=self.clock,
                                 metrics=Metrics(processMetrics=False))
        self.origins = _Origins()
        for cluster in service.gateway.runtime.clusters.values():
            cluster.agent._endpointFactory = self.origins  # type: ignore[attr-defined]
        service.gateway.state.ready = True
        self.addr = IPv4Address("TCP", "127.0.0.1", port)
        self.channel = service.site.buildProtocol(self.addr)
        self.transport = StringTransport(peerAddress=self.addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.channel.makeConnection(self.transport)

    def get(self) -> None:
        """One GET, answered by the origin, the reactor turned."""
        self.channel.dataReceived(b"GET /api/x HTTP/1.1\r\nHost: gw.example\r\n\r\n")
        self.origins.answer()
        self.clock.advance(0)


class RequestCycles(SynchronousTestCase):
    def test_proxiedRequestsLeaveNoGarbage(self) -> None:
        """Keep-alive requests answered 200 leave nothing for the garbage collector to find."""
        gw = KeepAliveClient(40321)
        client, addr, one = gw.transport, gw.addr, gw.get
        for _ in range(5):  # pool, caches and metric children made
            one()
        wasEnabled = gc.isenabled()
        gc.disable()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                one()
            gc.collect()
            # Only this connection's objects: a collection can also find
            # other tests' garbage, released meanwhile by the log history.
            found = [type(o).__qualname__ for o in gc.garbage if _ours(o, addr)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if wasEnabled:
                gc.enable()
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 25)
        self.assertEqual(found, [])
