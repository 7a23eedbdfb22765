# -*- test-case-name: tests.test_discovery_dns -*-
"""
DNS discovery: every A/AAAA address of a name, or the SRV records of a service.

C{{dns: NAME, port: P}} makes each address of NAME a target, which is how a
Kubernetes headless Service exposes its ready pods; C{{dns_srv:
_http._tcp.NAME}} takes ports and weights from SRV records (the lowest
priority group only, as RFC 2782 asks: higher priorities are backups, which
the balancers have no notion of).

Resolution uses C{twisted.names} on the reactor, never the blocking system
resolver, and runs one refresh at a time per source: the next is scheduled
(a C{callLater} on the injected clock) when the last one finished, after
the smallest TTL of the records used, bounded above by C{refresh} and below
by C{minInterval} so a TTL of 0 cannot make a busy loop.  A failed refresh
is retried sooner (from C{minInterval}, doubling up to C{refresh}).

What counts as what:
  - a good answer with addresses: the new set (no change callback when it
    equals the current one);
  - NXDOMAIN, or an answer with no address (NODATA, an SRV target of
    C{.}): an I{empty} answer, handled by C{on_empty};
  - a timeout, SERVFAIL, REFUSED, an unreachable server: a I{failure};
    the last good set is kept.  With C{family: any}, a failure of either the
    A or the AAAA query fails the whole refresh, since half an answer would
    silently drop targets.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IResolver
from twisted.names import client, dns, hosts, resolve
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from zope.interface import implementer

from txgateway.discovery.base import Observer, SourceBase, log
from txgateway.discovery.interfaces import DiscoveredTarget, ITargetSource

__all__ = ["AddressSource", "MIN_INTERVAL", "QUERY_TIMEOUT", "ServiceSource", "makeResolver", "systemNameservers"]

#: Seconds between the first query and its retransmissions; the query
#: fails after their sum.  Twisted's default (1, 3, 11, 45) waits a minute.
QUERY_TIMEOUT = (1.0, 3.0)
MIN_INTERVAL = 1.0

_Section = Sequence[dns.RRHeader]


class _NotFound(Exception):
    """NXDOMAIN: the name does not exist (an empty answer, not a failure)."""


def _addresses(records: _Section, qtype: int, name: str | None = None) -> list[str]:
    out = []
    for rr in records:
        if rr.type != qtype or (name is not None and rr.name.name.decode("ascii", "replace").lower() != name):
            continue
        payload: Any = rr.payload
        if qtype == dns.A:
            out.append(payload.dottedQuad())
        else:
            out.append(str(ipaddress.IPv6Address(socket.inet_ntop(socket.AF_INET6, payload.address))))
    return out


def _minTTL(records: _Section) -> float | None:
    ttls = [rr.ttl for rr in records if rr.type in (dns.A, dns.AAAA, dns.SRV, dns.CNAME)]
    return float(min(ttls)) if ttls else None


def _lower(ttl: float | None, other: float | None) -> float | None:
    if ttl is None:
        return other
    return ttl if other is None else min(ttl, other)


class _DnsSource(SourceBase):
    """Scheduling, cancellation and outcome handling shared by the A/AAAA and SRV sources."""

    kind = "dns"

    def __init__(self, resolver: IResolver, clock: IReactorTime, *, scheme: str, refresh: float,
                 onEmpty: str = "keep", family: str = "any", minInterval: float = MIN_INTERVAL,
                 queryTimeout: Sequence[float] | None = None, observe: Observer | None = None) -> None:
        super().__init__(onEmpty, observe)
        if family not in ("any", "ipv4", "ipv6"):
            raise ValueError(f"family must be any, ipv4 or ipv6, not {family!r}")
        self.resolver = resolver
        self.clock = clock
        self.scheme = scheme
        self.refreshInterval = max(refresh, minInterval)
        self.minInterval = minInterval
        self.family = family
        # None: the resolver's own (see makeResolver).  IResolver says
        # Sequence[int]; the client takes fractions of a second as well.
        self.queryTimeout: Any = None if queryTimeout is None else tuple(queryTimeout)
        self._call: IDelayedCall | None = None
        self._inFlight: Deferred[Any] | None = None
        self._waiters: list[Deferred[None]] = []
        self.nextDelay: float | None = None  # the last scheduled wait, for tests and the status page

    # -- lifecycle

    def startService(self) -> None:
        super().startService()
        self.refresh()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        inFlight, self._inFlight = self._inFlight, None
        if inFlight is not None:
            inFlight.cancel()
        return succeed(None)

    # -- refreshing

    def refresh(self) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self._waiters.append(done)
        if self._inFlight is not None:
            return done  # joins the refresh already under way
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        d = ensureDeferred(self.resolve())
        self._inFlight = d
        d.addCallbacks(self._answered, self._failed, callbackArgs=(d,), errbackArgs=(d,))
        d.addErrback(lambda f: log.failure("{source}: refresh bookkeeping failed", f, source=self.description))
        return done

    async def resolve(self) -> tuple[list[DiscoveredTarget], float | None]:
        """One resolution: the targets found and the smallest TTL seen (None when nothing had one)."""
        raise NotImplementedError

    def _answered(self, result: tuple[list[DiscoveredTarget], float | None], d: Deferred[Any]) -> None:
        if self._inFlight is not d:
            return self._wake()  # stopped meanwhile: the answer is no longer wanted
        self._inFlight = None
        targets, ttl = result
        # Scheduled before the listeners run, so they (and the observer) see
        # the next refresh time, and one that stops the source cancels it.
        self._schedule(self.refreshInterval if ttl is None else min(self.refreshInterval, max(self.minInterval, ttl)))
        self.publish(targets, self.clock.seconds())
        self._wake()

    def _failed(self, f: Failure, d: Deferred[Any]) -> None:
        if self._inFlight is not d:
            return self._wake()  # cancelled by stopService: not a failure of the name
        self._inFlight = None
        streak = self.counters.consecutiveFailures + 1
        self._schedule(min(self.refreshInterval, self.minInterval * 2 ** min(streak - 1, 20)))
        kind, message = (f.type or Exception).__name__, f.getErrorMessage()
        self.fail(f"{kind}: {message}" if message and message != kind else kind)
        self._wake()

    def _schedule(self, delay: float) -> None:
        if self.running:
            self.nextDelay = delay
            self._call = self.clock.callLater(delay, self._tick)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)

    def _tick(self) -> None:
        self._call = None
        self.refresh()

    # -- lookups

    async def _lookup(self, name: str) -> tuple[list[str], float | None]:
        """Every address of C{name} (per C{family}) and the smallest TTL; raises on failure."""
        lookups: list[Deferred[Any]] = []
        types = []
        if self.family in ("any", "ipv4"):
            lookups.append(self.resolver.lookupAddress(name, self.queryTimeout))
            types.append(dns.A)
        if self.family in ("any", "ipv6"):
            lookups.append(self.resolver.lookupIPV6Address(name, self.queryTimeout))
            types.append(dns.AAAA)
        results = await DeferredList(lookups, consumeErrors=True)
        addresses: list[str] = []
        ttl: float | None = None
        for qtype, (ok, value) in zip(types, results, strict=True):
            if not ok:
                if value.check(DNSNameError):
                    continue
                value.raiseException()
            answers = value[0]
            addresses.extend(_addresses(answers, qtype))
            ttl = _lower(ttl, _minTTL(answers))
        return addresses, ttl


@implementer(ITargetSource)
class AddressSource(_DnsSource):
    """C{{dns: NAME, port: P}}: one target per A/AAAA address of NAME."""

    def __init__(self, resolver: IResolver, clock: IReactorTime, name: str, port: int, **kwargs: Any) -> None:
        super().__init__(resolver, clock, **kwargs)
        self.dnsName = name.rstrip(".").lower()
        self.port = port
        self.description = f"dns {self.dnsName} port {port}"

    async def resolve(self) -> tuple[list[DiscoveredTarget], float | None]:
        addresses, ttl = await self._lookup(self.dnsName)
        # A record set has no duplicates, but a sloppy server may repeat one:
        # once here, so it is not summed into a double weight.
        return [DiscoveredTarget(self.scheme, a, self.port, 1, "dns") for a in dict.fromkeys(addresses)], ttl


@implementer(ITargetSource)
class ServiceSource(_DnsSource):
    """C{{dns_srv: _svc._proto.NAME}}: the SRV records' hosts, ports and weights."""

    def __init__(self, resolver: IResolver, clock: IReactorTime, name: str, **kwargs: Any) -> None:
        super().__init__(resolver, clock, **kwargs)
        self.dnsName = name.rstrip(".").lower()
        self.description = f"dns_srv {self.dnsName}"

    async def resolve(self) -> tuple[list[DiscoveredTarget], float | None]:
        try:
            result: Any = await self.resolver.lookupService(self.dnsName, self.queryTimeout)
        except DNSNameError:
            return [], None
        answers, _authority, additional = result
        records: list[Any] = [rr.payload for rr in answers if rr.type == dns.SRV]
        ttl = _minTTL(answers)
        records = [r for r in records if r.target.name not in (b"", b".")]
        if not records:
            return [], ttl
        lowest = min(r.priority for r in records)
        targets: list[DiscoveredTarget] = []
        for r in records:
            if r.priority != lowest:
                continue
            host = r.target.name.decode("ascii").rstrip(".").lower()
            addresses, addressTTL = self._glued(host, additional)
            if not addresses:
                addresses, addressTTL = await self._lookup(host)
            ttl = _lower(ttl, addressTTL)
            # SRV weight 0 means "rarely, if ever"; our weights start at 1.
            targets.extend(DiscoveredTarget(self.scheme, a, r.port, max(r.weight, 1), "dns") for a in addresses)
        return targets, ttl

    def _glued(self, host: str, additional: _Section) -> tuple[list[str], float | None]:
        """Addresses of C{host} already in the answer (an IP literal, or the additional section)."""
        try:
            return [str(ipaddress.ip_address(host))], None
        except ValueError:
            pass
        glue = [rr for rr in additional if rr.name.name.decode("ascii", "replace").rstrip(".").lower() == host]
        found = []
        if self.family in ("any", "ipv4"):
            found += _addresses(glue, dns.A)
        if self.family in ("any", "ipv6"):
            found += _addresses(glue, dns.AAAA)
        return found, _minTTL(glue)


# --------------------------------------------------------------------------
# The resolver


def systemNameservers(resolvconf: str | Path = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """
    The C{nameserver} lines of resolv.conf, or 127.0.0.1 as glibc assumes.

    Read once here rather than by C{twisted.names.client.Resolver(resolv=)},
    which re-reads the file on a global-reactor timer that nothing public
    stops.
    """
    servers: list[tuple[str, int]] = []
    try:
        text = Path(resolvconf).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append((words[1].split("%", 1)[0], dns.PORT))
    return servers or [("127.0.0.1", dns.PORT)]


def makeResolver(reactor: Any, nameservers: Sequence[tuple[str, int]] = (),
                 resolvconf: str | Path = "/etc/resolv.conf", hostsFile: str | Path | None = "/etc/hosts",
                 timeout: Sequence[float] = QUERY_TIMEOUT) -> IResolver:
    """
    The resolver every DNS source of a gateway shares.

    C{discovery.nameservers} when given (and nothing else: a test's or a
    cluster's DNS server is the truth), else resolv.conf's servers after the
    hosts file, as the system resolver would.  No cache: each source already
    waits out its records' TTL, and a cache would hand back stale TTLs.
    """
    if nameservers:
        return client.Resolver(servers=list(nameservers), timeout=tuple(timeout), reactor=reactor)
    upstream = client.Resolver(servers=systemNameservers(resolvconf), timeout=tuple(timeout), reactor=reactor)
    if hostsFile is None:
        return upstream
    return resolve.ResolverChain([hosts.Resolver(file=str(hostsFile).encode()), upstream])
