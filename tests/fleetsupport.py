"""
In-memory fleets for the fleet's unit tests (issue 26): real gateway
services (L{GatewayFixture}) joined to a real L{FleetHub} over in-memory
connections, time moved by Clocks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from txgateway.fleet.hub import FleetHub
from txgateway.fleet.member import FleetMember
from txgateway.fleet.supervise import readConfig
from txgateway.fleet.wire import WireProtocol
from txgateway.testing import FixtureResponse, GatewayFixture

from .support import Origin

TARGETS = ["http://a.internal:8000", "http://b.internal:8000"]

CONFIG = """\
upstreams:
  app:
    targets: [http://a.internal:8000, http://b.internal:8000]
    retries: false
{upstream}
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: app
{route}
"""


class _Link:
    """A worker's connection to the hub: two in-memory transports, moved by L{pump}."""

    def __init__(self, hub: FleetHub, member: FleetMember) -> None:
        self.toHub = StringTransport()
        self.toMember = StringTransport()
        self.hubSide = WireProtocol(hub.received, hub.lost)
        self.hubSide.makeConnection(self.toMember)
        self.memberSide = WireProtocol(member.received, member.lost)
        self.memberSide.makeConnection(self.toHub)
        member.joined(self.memberSide)

    def pump(self) -> bool:
        moved = False
        for transport, proto in ((self.toHub, self.hubSide), (self.toMember, self.memberSide)):
            data = transport.value()
            if data:
                transport.clear()
                proto.dataReceived(data)
                moved = True
        return moved

    def cut(self) -> None:
        self.hubSide.connectionLost(None)
        self.memberSide.connectionLost(None)


class Fleet:
    """C{n} in-memory workers of one config, joined to one hub."""

    def __init__(self, config: str, n: int = 2, origins: dict[str, Any] | None = None) -> None:
        self.dir = tempfile.mkdtemp()
        self.path = Path(self.dir) / "gw.yaml"
        self.path.write_text(config)
        self.hubClock = Clock()
        self.hub = FleetHub(self.dir, None, self.hubClock, lambda: readConfig(str(self.path), {}), config)
        self.workers: list[GatewayFixture] = []
        self.members: list[FleetMember] = []
        self.links: list[_Link] = []
        for i in range(n):
            clock = MemoryReactorClock()
            member = FleetMember(self.dir, i, clock, clock, str(self.path), {})
            member.generation = 1
            fixture = GatewayFixture.fromYAML(config, origins or {t: Origin(clock) for t in TARGETS}, clock=clock,
                                              shared=member.shared)
            member.attach(fixture.service, connect=False)
            self.workers.append(fixture)
            self.members.append(member)
            self.links.append(_Link(self.hub, member))
        self.settle()

    def settle(self) -> None:
        """Run every worker and move every message until nothing moves."""
        for _ in range(1000):
            for fixture in self.workers:
                fixture.flush()
            if not any([link.pump() for link in self.links]):
                return
        raise AssertionError("the fleet kept busy")

    def request(self, worker: int, path: bytes) -> FixtureResponse:
        result: list[Any] = []
        self.workers[worker].requestDeferred(b"GET", b"http://gw.example" + path).addBoth(result.append)
        self.settle()
        if not result:
            raise AssertionError(f"worker {worker}: no answer to {path!r}")
        response: FixtureResponse = result[0]
        return response

    def advance(self, seconds: float) -> None:
        self.hubClock.advance(seconds)
        for fixture in self.workers:
            fixture.clock.advance(seconds)
        self.settle()

    def endpoint(self, worker: int, url: str = TARGETS[0]) -> Any:
        return self.workers[worker].service.gateway.runtime.clusters["app"].endpointByURL(url)
