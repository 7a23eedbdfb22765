"""
An HTTP/2 target in memory, for the upstream client's tests: h2's own
server-side state machine behind C{twisted.test.iosim}, answering as each
test tells it to, with a clock that moves only when the test moves it.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txgateway.http.client.h2client import H2Client
from txgateway.http.client.h2pool import H2Settings


class Target(Protocol):
    """One server-side HTTP/2 connection: records what arrives, sends what the test says."""

    def __init__(self, settings: dict[int, int] | None = None) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.settings = settings or {}
        self.requests: dict[int, dict[str, Any]] = {}
        self.resets: dict[int, int] = {}
        self.pings = 0
        self.last = 0  # the latest stream opened
        self.lost = False

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        if self.settings:
            self.conn.update_settings(self.settings)
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.last = event.stream_id
                self.requests[event.stream_id] = {"headers": dict(event.headers), "fields": event.headers,
                                                  "body": b"", "ended": False}
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id]["body"] += event.data
            elif isinstance(event, h2.events.StreamEnded):
                self.requests[event.stream_id]["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.PingReceived):
                self.pings += 1
        self.flush()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)  # type: ignore[union-attr]

    def respond(self, sid: int, status: int = 200, headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
                body: bytes = b"", trailers: list[tuple[bytes, bytes]] | None = None, end: bool = True) -> None:
        self.conn.send_headers(sid, [(b":status", b"%d" % status), *headers],
                               end_stream=end and not body and trailers is None)
        if body:
            self.conn.send_data(sid, body, end_stream=end and trailers is None)
        if trailers is not None:
            self.conn.send_headers(sid, trailers, end_stream=True)
        self.flush()


@implementer(IStreamClientEndpoint)
class TargetEndpoint:
    """Each connect makes a new L{Target} joined to the client by an iosim pump."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return self.wire.connect(factory)


@implementer(IAgentEndpointFactory)
class Wire:
    """The in-memory network between an L{H2Client} and its L{Target}s."""

    def __init__(self, **targetArgs: Any) -> None:
        self.targetArgs = targetArgs
        self.targets: list[Target] = []
        self.clients: list[Any] = []
        self.pumps: list[iosim.IOPump] = []
        self.refuse: Exception | None = None

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return TargetEndpoint(self)

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        if self.refuse is not None:
            from twisted.internet.defer import fail

            return fail(self.refuse)
        address = IPv4Address("TCP", "127.0.0.1", 8000)
        target = Target(**self.targetArgs)
        client = factory.buildProtocol(address)
        serverIO = iosim.FakeTransport(target, True, address, IPv4Address("TCP", "127.0.0.1", 40000))
        clientIO = iosim.FakeTransport(client, False, IPv4Address("TCP", "127.0.0.1", 40000), address)
        self.pumps.append(iosim.connect(target, serverIO, client, clientIO, greet=False))
        self.targets.append(target)
        self.clients.append(client)
        return succeed(client)

    def pump(self) -> None:
        for _ in range(50):
            moved = False
            for p in self.pumps:
                moved = p.pump(advanceClock=False) or moved
            if not moved:
                return


def makeClient(settings: H2Settings | None = None,
               targetSettings: dict[int, int] | None = None) -> tuple[H2Client, Wire, MemoryReactorClock]:
    """An L{H2Client} whose targets (sending C{targetSettings}) are in memory, and its clock."""
    clock = MemoryReactorClock()
    client = H2Client(clock, settings or H2Settings(), 5.0)
    wire = Wire(settings=targetSettings)
    client.connectVia(wire)
    return client, wire, clock
