# -*- test-case-name: tests.test_membership -*-
"""
The running discovery sources of a gateway, kept across reloads.

One L{DiscoveryService} (a child of the gateway service) holds the shared
resolver and every source, keyed by C{(upstream name, item index, spec)}.
Specs are frozen values, so a reload is a diff: a source whose key is
unchanged keeps running (no re-resolution, no gap), a new one starts, a
gone one stops.  A change of C{discovery.nameservers} rebuilds every DNS
source (their resolver changed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime, IResolver

from txgateway.config.schema_discovery import DiscoveryConfig, FileSpec, SourceSpec
from txgateway.discovery.base import Observer
from txgateway.discovery.build import makeSource
from txgateway.discovery.dns import makeResolver
from txgateway.discovery.interfaces import ITargetSource

__all__ = ["DiscoveryService", "SourceKey"]

SourceKey = tuple[str, int, SourceSpec]
ObserverFactory = Callable[[str, SourceSpec], Observer]


class DiscoveryService(MultiService):
    """Owns the resolver and the sources; L{sync} reconciles them with a config."""

    def __init__(self, reactor: Any, clock: IReactorTime, observerFor: ObserverFactory | None = None) -> None:
        super().__init__()
        self.setName("discovery")
        self.reactor = reactor
        self.clock = clock
        self.observerFor = observerFor
        self.sources: dict[SourceKey, ITargetSource] = {}
        self._nameservers: tuple[tuple[str, int], ...] | None = None
        self._resolver: IResolver | None = None

    def resolver(self, discovery: DiscoveryConfig) -> IResolver:
        if self._resolver is None or discovery.nameservers != self._nameservers:
            self._resolver = makeResolver(self.reactor, discovery.nameservers)
            self._nameservers = discovery.nameservers
        return self._resolver

    def sync(self, discovery: DiscoveryConfig, upstreams: Mapping[str, Sequence[SourceSpec]]) -> dict[SourceKey, ITargetSource]:
        """Keep the sources whose key is unchanged, start new ones, stop the rest; return them all."""
        rebuildDNS = self._resolver is not None and discovery.nameservers != self._nameservers
        wanted = {(name, i, spec) for name, specs in upstreams.items() for i, spec in enumerate(specs)}
        for key in list(self.sources):
            if key not in wanted or (rebuildDNS and not isinstance(key[2], FileSpec)):
                self.sources.pop(key).disownServiceParent()
        needed = [key for key in sorted(wanted, key=lambda k: (k[0], k[1])) if key not in self.sources]
        if not needed:
            return dict(self.sources)
        resolver = self.resolver(discovery) if any(not isinstance(k[2], FileSpec) for k in needed) else None
        for key in needed:
            name, _, spec = key
            observe = self.observerFor(name, spec) if self.observerFor is not None else None
            source = makeSource(spec, resolver, self.clock, observe)  # type: ignore[arg-type]
            source.setServiceParent(self)  # started now if the gateway runs, else with it
            self.sources[key] = source
        return dict(self.sources)
