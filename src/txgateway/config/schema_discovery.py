# -*- test-case-name: tests.test_discovery_config,tests.test_config -*-
"""
The frozen specs of discovery (issue 22): the target items that name a
source instead of a URL, and the top-level C{discovery:} section.

They live in the config package, beside L{txgateway.config.schema}, because
L{UpstreamConfig} holds them; L{txgateway.discovery.build.makeSource} turns
each into a running source.  Specs compare by value, so a reload keeps a
source whose spec is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_REFRESH", "DEFAULT_WATCH", "DiscoveryConfig", "DnsSpec", "DnsSrvSpec", "FileSpec", "SourceSpec"]

DEFAULT_REFRESH = 10.0
DEFAULT_WATCH = 2.0


@dataclass(frozen=True)
class DnsSpec:
    """C{{dns: NAME, port: P, scheme: http, refresh: 10s, on_empty: keep, family: any}}"""

    name: str
    port: int
    scheme: str = "http"
    refresh: float = DEFAULT_REFRESH
    on_empty: str = "keep"
    family: str = "any"

    @property
    def label(self) -> str:
        """The C{source} label of metrics."""
        return f"dns:{self.name}:{self.port}"


@dataclass(frozen=True)
class DnsSrvSpec:
    """C{{dns_srv: _http._tcp.NAME, scheme: http, refresh: 10s, on_empty: keep, family: any}}"""

    name: str
    scheme: str = "http"
    refresh: float = DEFAULT_REFRESH
    on_empty: str = "keep"
    family: str = "any"

    @property
    def label(self) -> str:
        return f"dns_srv:{self.name}"


@dataclass(frozen=True)
class FileSpec:
    """C{{file: PATH, watch: 2s, on_empty: keep}}; C{path} is absolute (relative to the config file)."""

    path: Path
    watch: float = DEFAULT_WATCH
    on_empty: str = "keep"

    @property
    def label(self) -> str:
        return f"file:{self.path}"


SourceSpec = DnsSpec | DnsSrvSpec | FileSpec


@dataclass(frozen=True)
class DiscoveryConfig:
    """The top-level C{discovery:} section; no nameservers means the system's (resolv.conf)."""

    nameservers: tuple[tuple[str, int], ...] = ()
