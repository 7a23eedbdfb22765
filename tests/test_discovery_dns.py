"""
DNS discovery with a fake resolver and a Clock: what becomes a target, when
the name is asked again, and what a failure or an empty answer does.

The real resolver against a real DNS server is in test_discovery_realdns.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.support import tempPath
from txgateway.discovery.dns import AddressSource, ServiceSource, makeResolver, systemNameservers
from txgateway.discovery.interfaces import DiscoveredTarget, ITargetSource


def a(name: str, address: str, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


def aaaa(name: str, address: str, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl))


def srv(name: str, target: str | bytes, port: int, weight: int = 1, priority: int = 0, ttl: int = 30) -> dns.RRHeader:
    return dns.RRHeader(name, dns.SRV, dns.IN, ttl, dns.Record_SRV(priority, weight, port, target, ttl))


class FakeResolver:
    """
    Answers from C{records} (name -> list of RRHeader), raises what
    C{errors} names, or hands out a pending Deferred when C{hold} is set.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[dns.RRHeader]] = {}
        self.additional: dict[str, list[dns.RRHeader]] = {}
        self.errors: dict[tuple[str, int], Exception] = {}
        self.hold = False
        self.pending: list[Deferred[Any]] = []
        self.queries: list[tuple[str, int]] = []

    def _answer(self, name: str, qtype: int) -> Deferred[Any]:
        self.queries.append((name, qtype))
        if self.hold:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        error = self.errors.get((name, qtype)) or self.errors.get((name, 0))
        if error is not None:
            return fail(error)
        if name not in self.records:
            return fail(DNSNameError(name))
        answers = [rr for rr in self.records[name] if rr.type == qtype]
        return succeed((answers, [], self.additional.get(name, [])))

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._answer(name, dns.A)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._answer(name, dns.AAAA)

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._answer(name, dns.SRV)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[DiscoveredTarget, ...]] = []
        self.outcomes: list[str] = []

    def __call__(self, targets: tuple[DiscoveredTarget, ...]) -> None:
        self.calls.append(targets)


def urls(targets: tuple[DiscoveredTarget, ...]) -> list[str]:
    return [t.url for t in targets]


class AddressSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.changes = Recorder()

    def source(self, **kwargs: Any) -> AddressSource:
        kwargs.setdefault("scheme", "http")
        kwargs.setdefault("refresh", 10.0)
        s = AddressSource(self.resolver, self.clock, "api.test", 8000, observe=self.changes.outcomes.append, **kwargs)
        s.subscribe(self.changes)
        self.addCleanup(lambda: s.running and s.stopService())
        return s

    def test_providesITargetSource(self) -> None:
        """The A/AAAA source provides ITargetSource."""
        self.assertTrue(verifyObject(ITargetSource, self.source()))

    def test_everyAddressIsATarget(self) -> None:
        """Each A and AAAA address becomes a target on the configured port, sorted."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.2"), a("api.test", "10.0.0.1"),
                                             aaaa("api.test", "fd00::1")]
        s = self.source()
        s.startService()
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://[fd00::1]:8000"])
        self.assertEqual(self.changes.calls, [s.targets])
        self.assertEqual({t.source for t in s.targets}, {"dns"})
        self.successResultOf(s.whenReady())

    def test_familyLimitsTheQueries(self) -> None:
        """family: ipv4 asks only for A records."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1"), aaaa("api.test", "fd00::1")]
        s = self.source(family="ipv4")
        s.startService()
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8000"])
        self.assertEqual(self.resolver.queries, [("api.test", dns.A)])

    def test_reresolvesOnTheTTLBoundedByRefresh(self) -> None:
        """The next query waits the smallest TTL, at most refresh and at least the floor."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1", ttl=3), a("api.test", "10.0.0.2", ttl=5)]
        s = self.source()
        s.startService()
        self.assertEqual(s.nextDelay, 3.0)
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1", ttl=300)]
        self.clock.advance(3)
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8000"])
        self.assertEqual(s.nextDelay, 10.0)
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1", ttl=0)]
        self.clock.advance(10)
        self.assertEqual(s.nextDelay, 1.0)

    def test_unchangedAnswerIsNoChange(self) -> None:
        """The same records in another order call no listener."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1"), a("api.test", "10.0.0.2")]
        s = self.source()
        s.startService()
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.2"), a("api.test", "10.0.0.1"),
                                             a("api.test", "10.0.0.1")]
        self.clock.advance(10)
        self.assertEqual(len(self.changes.calls), 1)
        self.assertEqual(self.changes.outcomes, ["changed", "unchanged"])
        self.assertEqual(s.counters.changes, 1)
        self.assertEqual(s.counters.refreshes, 2)

    def test_addedAndRemovedAddresses(self) -> None:
        """A new address adds a target, a gone one removes it."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1"), a("api.test", "10.0.0.2")]
        s = self.source()
        s.startService()
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.2"), a("api.test", "10.0.0.3")]
        self.clock.advance(10)
        self.assertEqual(urls(self.changes.calls[-1]), ["http://10.0.0.2:8000", "http://10.0.0.3:8000"])

    def test_failureKeepsTheLastGoodSet(self) -> None:
        """SERVFAIL keeps the targets, is counted, and is retried sooner than refresh."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1")]
        s = self.source()
        s.startService()
        self.resolver.errors[("api.test", 0)] = DNSServerError("SERVFAIL")
        self.clock.advance(10)
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8000"])
        self.assertEqual(s.counters.failures, 1)
        self.assertIn("DNSServerError", s.counters.lastError or "")
        self.assertEqual(s.nextDelay, 1.0)
        self.clock.advance(1)
        self.assertEqual(s.nextDelay, 2.0)
        self.clock.advance(2)
        self.assertEqual(s.nextDelay, 4.0)
        self.assertEqual(s.counters.consecutiveFailures, 3)
        del self.resolver.errors[("api.test", 0)]
        self.clock.advance(4)
        self.assertEqual(s.counters.consecutiveFailures, 0)
        self.assertEqual(s.nextDelay, 10.0)
        self.assertEqual(len(self.changes.calls), 1)
        self.assertEqual(self.changes.outcomes, ["changed", "failed", "failed", "failed", "unchanged"])

    def test_outageLoggedOncePerStreak(self) -> None:
        """Retries during an outage do not repeat the warning; the recovery is logged once."""
        from twisted.logger import LogLevel, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1")]
        s = self.source()
        s.startService()
        self.resolver.errors[("api.test", 0)] = DNSServerError("SERVFAIL")
        for delay in (10, 1, 2, 4, 8):
            self.clock.advance(delay)
        self.assertEqual(s.counters.failures, 5)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn and e.get("source") == s.description]
        self.assertEqual(len(warnings), 1)
        self.assertIn("keeping the last", warnings[0]["log_format"])
        del self.resolver.errors[("api.test", 0)]
        self.clock.advance(10)
        recovered = [e for e in events if e.get("n") == 5 and "answering again" in e.get("log_format", "")]
        self.assertEqual(len(recovered), 1)

    def test_halfAFailedAnswerFailsTheRefresh(self) -> None:
        """With family any, a failed AAAA query keeps the set rather than dropping IPv6 targets."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1"), aaaa("api.test", "fd00::1")]
        s = self.source()
        s.startService()
        self.resolver.errors[("api.test", dns.AAAA)] = DNSServerError("SERVFAIL")
        self.clock.advance(10)
        self.assertEqual(len(s.targets), 2)
        self.assertEqual(s.counters.failures, 1)

    def test_emptyKeep(self) -> None:
        """on_empty: keep ignores NXDOMAIN and NODATA answers, and warns once per empty spell."""
        from twisted.logger import LogLevel, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1")]
        s = self.source(onEmpty="keep")
        s.startService()
        del self.resolver.records["api.test"]
        self.clock.advance(10)
        self.resolver.records["api.test"] = []
        self.clock.advance(10)
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8000"])
        self.assertEqual(len([e for e in events if e.get("log_level") == LogLevel.warn]), 1)
        self.assertEqual(s.counters.empty, 2)
        self.assertEqual(s.counters.failures, 0)
        self.assertEqual(self.changes.outcomes, ["changed", "empty", "empty"])

    def test_emptyDrop(self) -> None:
        """on_empty: drop empties the set (one change) when the name is gone."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1")]
        s = self.source(onEmpty="drop")
        s.startService()
        del self.resolver.records["api.test"]
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(s.targets, ())
        self.assertEqual(self.changes.calls[-1], ())
        self.assertEqual(len(self.changes.calls), 2)

    def test_firstAnswerEmptyIsReady(self) -> None:
        """A name with no address yet still makes the source ready, with no target."""
        s = self.source()
        d = s.whenReady()
        self.assertNoResult(d)
        s.startService()
        self.successResultOf(d)
        self.assertEqual(s.targets, ())
        self.assertEqual(self.changes.calls, [])

    def test_stopCancelsTimerAndQuery(self) -> None:
        """After stopService no timer is left and a query in flight is abandoned, not counted."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1")]
        s = self.source()
        s.startService()
        self.resolver.hold = True
        self.clock.advance(10)
        self.assertEqual(len(self.resolver.pending), 2)
        s.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(s.counters.failures, 0)
        for d in self.resolver.pending:
            self.assertTrue(d.called)  # cancelled
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refreshJoinsAQueryInFlight(self) -> None:
        """refresh() while a query runs waits for it rather than asking twice."""
        self.resolver.hold = True
        s = self.source()
        s.startService()
        d = s.refresh()
        self.assertEqual(len(self.resolver.pending), 2)
        self.assertNoResult(d)
        queryA, queryAAAA = self.resolver.pending
        queryA.callback(([a("api.test", "10.0.0.1")], [], []))
        queryAAAA.callback(([], [], []))
        self.successResultOf(d)
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8000"])
        self.assertEqual(s.counters.refreshes, 1)

    def test_listenerErrorDoesNotStopTheSource(self) -> None:
        """A listener that raises is logged; the others and the schedule go on."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1")]
        s = self.source()

        def broken(targets: object) -> None:
            raise RuntimeError("boom")

        s.subscribe(broken)
        later = Recorder()
        s.subscribe(later)
        s.startService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(later.calls), 1)
        self.assertEqual(s.nextDelay, 10.0)

    def test_unsubscribe(self) -> None:
        """The function subscribe returns stops the calls."""
        self.resolver.records["api.test"] = [a("api.test", "10.0.0.1")]
        s = self.source()
        other = Recorder()
        s.subscribe(other)()
        s.startService()
        self.assertEqual(other.calls, [])


class ServiceSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.resolver = FakeResolver()
        self.changes = Recorder()

    def source(self, **kwargs: Any) -> ServiceSource:
        kwargs.setdefault("scheme", "http")
        kwargs.setdefault("refresh", 10.0)
        s = ServiceSource(self.resolver, self.clock, "_http._tcp.api.test", **kwargs)
        s.subscribe(self.changes)
        self.addCleanup(lambda: s.running and s.stopService())
        return s

    def test_providesITargetSource(self) -> None:
        """The SRV source provides ITargetSource."""
        self.assertTrue(verifyObject(ITargetSource, self.source()))

    def test_portsAndWeightsFromSRV(self) -> None:
        """Each SRV record gives its host's addresses with its port and weight."""
        name = "_http._tcp.api.test"
        self.resolver.records[name] = [srv(name, "a.api.test", 8001, weight=3), srv(name, "b.api.test", 8002, weight=1)]
        self.resolver.records["a.api.test"] = [a("a.api.test", "10.0.0.1")]
        self.resolver.records["b.api.test"] = [a("b.api.test", "10.0.0.2"), aaaa("b.api.test", "fd00::2")]
        s = self.source()
        s.startService()
        self.assertEqual([(t.url, t.weight) for t in s.targets],
                         [("http://10.0.0.1:8001", 3), ("http://10.0.0.2:8002", 1), ("http://[fd00::2]:8002", 1)])

    def test_additionalSectionSavesLookups(self) -> None:
        """Addresses in the additional section (as kube-dns sends) are used without asking again."""
        name = "_http._tcp.api.test"
        self.resolver.records[name] = [srv(name, "a.api.test", 8001)]
        self.resolver.additional[name] = [a("a.api.test", "10.0.0.1", ttl=4)]
        s = self.source()
        s.startService()
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8001"])
        self.assertEqual(self.resolver.queries, [(name, dns.SRV)])
        self.assertEqual(s.nextDelay, 4.0)

    def test_lowestPriorityOnly(self) -> None:
        """Records of a higher priority number are backups and not used."""
        name = "_http._tcp.api.test"
        self.resolver.records[name] = [srv(name, "10.0.0.1", 80, priority=10), srv(name, "10.0.0.9", 80, priority=20)]
        s = self.source()
        s.startService()
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:80"])

    def test_weightZeroAndDuplicates(self) -> None:
        """Weight 0 counts as 1; two records for one address and port add up."""
        name = "_http._tcp.api.test"
        self.resolver.records[name] = [srv(name, "10.0.0.1", 80, weight=0), srv(name, "x.api.test", 80, weight=2)]
        self.resolver.records["x.api.test"] = [a("x.api.test", "10.0.0.1")]
        s = self.source()
        s.startService()
        self.assertEqual([(t.url, t.weight) for t in s.targets], [("http://10.0.0.1:80", 3)])

    def test_dotTargetIsEmpty(self) -> None:
        """A target of '.' says the service is not offered: an empty answer."""
        name = "_http._tcp.api.test"
        self.resolver.records[name] = [srv(name, b".", 0)]
        s = self.source()
        s.startService()
        self.assertEqual(s.targets, ())
        self.assertEqual(s.counters.empty, 1)

    def test_failedHostLookupFailsTheRefresh(self) -> None:
        """A SERVFAIL for one SRV target's address keeps the last good set."""
        name = "_http._tcp.api.test"
        self.resolver.records[name] = [srv(name, "a.api.test", 8001)]
        self.resolver.records["a.api.test"] = [a("a.api.test", "10.0.0.1")]
        s = self.source()
        s.startService()
        self.resolver.records[name].append(srv(name, "b.api.test", 8002))
        self.resolver.errors[("b.api.test", 0)] = DNSServerError("SERVFAIL")
        self.clock.advance(10)
        self.assertEqual(urls(s.targets), ["http://10.0.0.1:8001"])
        self.assertEqual(s.counters.failures, 1)


class ResolverTests(SynchronousTestCase):
    def test_systemNameservers(self) -> None:
        """resolv.conf's nameserver lines, port 53; none means 127.0.0.1."""
        path = tempPath(self)
        with open(path, "w") as f:
            f.write("search default.svc\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\noptions ndots:5\n")
        self.assertEqual(systemNameservers(path), [("10.96.0.10", 53), ("fe80::1", 53)])
        self.assertEqual(systemNameservers(tempPath(self)), [("127.0.0.1", 53)])

    def test_makeResolverStartsNoTimer(self) -> None:
        """Building the resolver schedules nothing (no resolv.conf re-read loop on the reactor)."""
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        makeResolver(reactor, [("127.0.0.1", 5353)])
        makeResolver(reactor, (), resolvconf=tempPath(self), hostsFile=tempPath(self))
        self.assertEqual(reactor.getDelayedCalls(), [])
