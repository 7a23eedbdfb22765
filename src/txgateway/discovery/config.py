# -*- test-case-name: tests.test_discovery_config,tests.test_discovery_files -*-
"""
The discovery specs and the target conversion the sources share.

The specs and their parsing live in the config package
(L{txgateway.config.schema_discovery}, L{txgateway.config.parser_discovery});
this module names them for the sources and turns a URL into a
L{DiscoveredTarget} with the config package's own converter, so a URL in a
targets file obeys exactly the rules of one in C{targets:}.
"""

from __future__ import annotations

from typing import Any

from txgateway.config.errors import Invalid
from txgateway.config.fields import targetURL
from txgateway.config.schema_discovery import DiscoveryConfig, DnsSpec, DnsSrvSpec, FileSpec, SourceSpec
from txgateway.config.values import integer
from txgateway.discovery.interfaces import DiscoveredTarget

__all__ = ["DiscoveryConfig", "DnsSpec", "DnsSrvSpec", "FileSpec", "SourceSpec", "targetFromURL", "weight"]

_weight = integer(1)


def weight(value: Any) -> int:
    """A target's weight: a whole number, 1 or more (ValueError otherwise)."""
    try:
        return _weight(value)
    except Invalid as e:
        raise ValueError(f"not a weight: {value!r} ({e})") from None


def targetFromURL(value: Any, weight: int = 1, source: str = "static") -> DiscoveredTarget:
    """C{http://10.0.0.5:8000} as a target (the same rules as a plain URL in C{targets:}); ValueError if not."""
    try:
        t = targetURL(value)
    except Invalid as e:
        raise ValueError(str(e)) from None
    return DiscoveredTarget(t.scheme, t.host, t.port, weight, source)
