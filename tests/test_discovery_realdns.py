"""
DNS discovery against a real DNS server on loopback, with the real reactor.

Each test starts a C{twisted.names} authoritative server on 127.0.0.1 (a
free UDP port) serving an in-memory zone the test edits, points the
gateway's resolver (L{makeResolver} with C{discovery.nameservers}) at it,
and waits, bounded, for the source's own callbacks: no fixed sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import common, dns, server
from twisted.names.error import DomainError
from twisted.trial.unittest import TestCase

from txgateway.discovery.dns import AddressSource, ServiceSource, makeResolver
from txgateway.discovery.interfaces import DiscoveredTarget

WAIT = 8.0  # the longest any expected callback may take


class Zone(common.ResolverBase):
    """An authority whose records (name -> RRHeaders) the test changes at will."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[bytes, list[dns.RRHeader]] = {}
        self.queries = 0
        self.glue = False

    def set(self, name: str, *records: dns.RRHeader) -> None:
        self.records[name.encode()] = list(records)

    def remove(self, name: str) -> None:
        self.records.pop(name.encode(), None)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        self.queries += 1
        if name.lower() not in self.records:
            return fail(DomainError(name))
        answers = [rr for rr in self.records[name.lower()] if rr.type == type]
        additional: list[dns.RRHeader] = []
        if type == dns.SRV and self.glue:
            # As kube-dns does: the SRV targets' addresses ride along.
            for rr in answers:
                target = rr.payload.target.name.lower()
                additional += [g for g in self.records.get(target, []) if g.type in (dns.A, dns.AAAA)]
        return succeed((answers, [], additional))


def A(name: str, address: str, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl), auth=True)


def AAAA(name: str, address: str, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl), auth=True)


def SRV(name: str, target: str, port: int, weight: int, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name, dns.SRV, dns.IN, ttl, dns.Record_SRV(0, weight, port, target, ttl), auth=True)


class Watch:
    """Records a source's changes and outcomes; L{until} waits for a condition, bounded."""

    def __init__(self) -> None:
        self.changes: list[tuple[DiscoveredTarget, ...]] = []
        self.outcomes: list[str] = []
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def changed(self, targets: tuple[DiscoveredTarget, ...]) -> None:
        self.changes.append(targets)

    def observed(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        for entry in list(self._waiting):
            condition, d = entry
            if condition():
                self._waiting.remove(entry)
                d.callback(None)

    def until(self, condition: Callable[[], bool]) -> Deferred[None]:
        if condition():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((condition, d))
        return d.addTimeout(WAIT, reactor)


def urls(targets: tuple[DiscoveredTarget, ...]) -> list[str]:
    return [t.url for t in targets]


class RealDNSTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.zone = Zone()
        self.listen()
        self.watch = Watch()

    def listen(self, portNumber: int = 0) -> None:
        factory = server.DNSServerFactory(authorities=[self.zone])
        self.port = reactor.listenUDP(portNumber, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def source(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        resolver = makeResolver(reactor, [("127.0.0.1", self.port.getHost().port)], timeout=(0.5,))
        kwargs.setdefault("scheme", "http")
        kwargs.setdefault("refresh", 10.0)
        s = cls(resolver, reactor, *args, observe=self.watch.observed, **kwargs)
        s.subscribe(self.watch.changed)
        s.startService()
        self.addCleanup(s.stopService)
        return s

    async def test_recordsAddedAndRemoved(self) -> None:
        """A pod's address appearing and disappearing becomes a target added and removed, on the TTL."""
        self.zone.set("api.test", A("api.test", "10.1.0.1", 1), A("api.test", "10.1.0.2", 1))
        s = self.source(AddressSource, "api.test", 8000, family="ipv4")
        await self.watch.until(lambda: len(self.watch.changes) == 1)
        self.assertEqual(urls(s.targets), ["http://10.1.0.1:8000", "http://10.1.0.2:8000"])
        self.assertEqual(s.nextDelay, 1.0)

        self.zone.set("api.test", A("api.test", "10.1.0.1", 1), A("api.test", "10.1.0.2", 1),
                      A("api.test", "10.1.0.3", 1))
        await self.watch.until(lambda: len(self.watch.changes) == 2)
        self.assertEqual(urls(s.targets), ["http://10.1.0.1:8000", "http://10.1.0.2:8000", "http://10.1.0.3:8000"])

        self.zone.set("api.test", A("api.test", "10.1.0.3", 1))
        await self.watch.until(lambda: len(self.watch.changes) == 3)
        self.assertEqual(urls(s.targets), ["http://10.1.0.3:8000"])
        self.assertEqual(s.counters.failures, 0)

    async def test_unchangedRecordsCauseNoChange(self) -> None:
        """Re-resolving the same records after their TTL calls no listener."""
        self.zone.set("api.test", A("api.test", "10.1.0.1", 1))
        s = self.source(AddressSource, "api.test", 8000)
        await self.watch.until(lambda: len(self.watch.outcomes) >= 3)
        self.assertEqual(self.watch.outcomes[:3], ["changed", "unchanged", "unchanged"])
        self.assertEqual(len(self.watch.changes), 1)
        self.assertEqual(s.counters.refreshes, len(self.watch.outcomes))

    async def test_ttlExpiryBoundedByRefresh(self) -> None:
        """A long TTL waits only refresh; a short one is asked again when it expires."""
        self.zone.set("api.test", A("api.test", "10.1.0.1", 3600))
        s = self.source(AddressSource, "api.test", 8000, refresh=1.0)
        await self.watch.until(lambda: len(self.watch.outcomes) >= 1)
        self.assertEqual(s.nextDelay, 1.0)
        self.zone.set("api.test", A("api.test", "10.1.0.2", 3600))
        await self.watch.until(lambda: len(self.watch.changes) == 2)
        self.assertEqual(urls(s.targets), ["http://10.1.0.2:8000"])

    async def test_nameGoneWithOnEmptyDrop(self) -> None:
        """NXDOMAIN with on_empty: drop leaves no target; with keep the last set stays."""
        self.zone.set("api.test", A("api.test", "10.1.0.1", 1))
        self.zone.set("web.test", A("web.test", "10.2.0.1", 1))
        drop = self.source(AddressSource, "api.test", 8000, onEmpty="drop")
        keep = self.source(AddressSource, "web.test", 8000, onEmpty="keep")
        await self.watch.until(lambda: len(self.watch.changes) == 2)
        self.zone.remove("api.test")
        self.zone.remove("web.test")
        await self.watch.until(lambda: drop.targets == () and keep.counters.empty >= 1)
        self.assertEqual(urls(keep.targets), ["http://10.2.0.1:8000"])
        self.assertEqual((drop.counters.failures, keep.counters.failures), (0, 0))

    async def test_srvPortsAndWeights(self) -> None:
        """SRV records give each host's port and weight; a weight change is a change."""
        name = "_http._tcp.api.test"
        self.zone.set(name, SRV(name, "a.api.test", 8001, 3, 1), SRV(name, "b.api.test", 8002, 1, 1))
        self.zone.set("a.api.test", A("a.api.test", "10.1.0.1", 1))
        self.zone.set("b.api.test", A("b.api.test", "10.1.0.2", 1))
        s = self.source(ServiceSource, name)
        await self.watch.until(lambda: len(self.watch.changes) == 1)
        self.assertEqual([(t.url, t.weight) for t in s.targets], [("http://10.1.0.1:8001", 3), ("http://10.1.0.2:8002", 1)])
        self.zone.set(name, SRV(name, "a.api.test", 8001, 1, 1), SRV(name, "b.api.test", 8002, 5, 1))
        await self.watch.until(lambda: len(self.watch.changes) == 2)
        self.assertEqual([(t.url, t.weight) for t in s.targets], [("http://10.1.0.1:8001", 1), ("http://10.1.0.2:8002", 5)])

    async def test_ipv6AndSrvGlue(self) -> None:
        """AAAA addresses become bracketed targets; SRV glue in the additional section spares lookups."""
        name = "_http._tcp.api.test"
        self.zone.glue = True
        self.zone.set(name, SRV(name, "a.api.test", 8001, 2, 30))
        self.zone.set("a.api.test", A("a.api.test", "10.1.0.1", 30), AAAA("a.api.test", "fd00::1", 30))
        s = self.source(ServiceSource, name)
        await self.watch.until(lambda: len(self.watch.changes) == 1)
        self.assertEqual([(t.url, t.weight) for t in s.targets],
                         [("http://10.1.0.1:8001", 2), ("http://[fd00::1]:8001", 2)])
        self.assertEqual(self.zone.queries, 1)
        self.assertEqual(s.nextDelay, 10.0)

    async def test_serverDownKeepsTheLastGoodSet(self) -> None:
        """With the DNS server gone, refreshes fail and are counted, the targets stay; it recovers."""
        self.zone.set("api.test", A("api.test", "10.1.0.1", 1))
        s = self.source(AddressSource, "api.test", 8000, family="ipv4")
        await self.watch.until(lambda: len(self.watch.changes) == 1)
        portNumber = self.port.getHost().port
        await self.port.stopListening()
        await self.watch.until(lambda: s.counters.failures >= 2)
        self.assertEqual(urls(s.targets), ["http://10.1.0.1:8000"])
        self.assertEqual(len(self.watch.changes), 1)
        self.assertIn("Timeout", s.counters.lastError or "")
        self.zone.set("api.test", A("api.test", "10.1.0.9", 1))
        try:
            self.listen(portNumber)
        except Exception as e:  # the free port was taken meanwhile: nothing to learn about recovery
            self.skipTest(f"cannot listen on {portNumber} again: {e}")
        await self.watch.until(lambda: len(self.watch.changes) == 2)
        self.assertEqual(urls(s.targets), ["http://10.1.0.9:8000"])
        self.assertEqual(s.counters.consecutiveFailures, 0)
