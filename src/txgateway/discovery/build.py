# -*- test-case-name: tests.test_discovery_config -*-
"""
From a parsed spec to a running source: the one place that knows every kind.

The cluster (after integration) calls L{makeSource} for each discovery item
of an upstream, with the one resolver the gateway shares
(L{txgateway.discovery.dns.makeResolver} built from C{discovery.nameservers}).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime, IResolver

from txgateway.discovery.base import Observer
from txgateway.discovery.config import DnsSpec, DnsSrvSpec, FileSpec, SourceSpec
from txgateway.discovery.dns import AddressSource, ServiceSource
from txgateway.discovery.files import FileSource
from txgateway.discovery.interfaces import ITargetSource

__all__ = ["makeSource"]


def makeSource(spec: SourceSpec, resolver: IResolver, clock: IReactorTime,
               observe: Observer | None = None) -> ITargetSource:
    """A not yet started L{ITargetSource} for C{spec}."""
    if isinstance(spec, DnsSpec):
        return AddressSource(resolver, clock, spec.name, spec.port, scheme=spec.scheme, refresh=spec.refresh,
                             onEmpty=spec.on_empty, family=spec.family, observe=observe)
    if isinstance(spec, DnsSrvSpec):
        return ServiceSource(resolver, clock, spec.name, scheme=spec.scheme, refresh=spec.refresh,
                             onEmpty=spec.on_empty, family=spec.family, observe=observe)
    if isinstance(spec, FileSpec):
        return FileSource(spec.path, clock, spec.watch, spec.on_empty, observe=observe)
    raise TypeError(f"not a discovery spec: {spec!r}")
