# -*- test-case-name: tests.test_canary_config -*-
"""
The frozen values a route's canary keys are parsed into (L{txgateway.config.parser_canary}).

Kept apart from the parser so that the run-time modules (split, mirror,
compare) depend on plain values only, never on the config converters.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = [
    "INTERNAL_NETWORKS", "CanaryRouteSpec", "CompareSpec", "IPNetwork", "JsonCompareSpec", "MirrorSpec",
    "OverrideSpec", "RedactSpec", "StickySpec", "WeightedUpstream",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Who C{canary_override} trusts when it names nobody: loopback and private
#: addresses, i.e. testers inside the operator's network, never the internet.
INTERNAL_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7"))


@dataclass(frozen=True)
class WeightedUpstream:
    """One item of C{routes[].upstreams}: an upstream's name and its integer weight (0: no traffic)."""

    name: str
    weight: int


@dataclass(frozen=True)
class StickySpec:
    """C{sticky: {key: header:X-User | cookie:NAME | client_ip | consumer}}."""

    key: str

    @property
    def kind(self) -> str:
        return self.key.partition(":")[0]

    @property
    def name(self) -> str:
        return self.key.partition(":")[2]


@dataclass(frozen=True)
class OverrideSpec:
    """
    C{canary_override: {header: X-Canary, trusted_only: true}}.

    A trusted request whose C{header} names one of the route's upstreams
    goes there; the value C{always} names the route's canary, its last
    listed upstream.  With C{trusted_only}, a client is trusted when its
    address is in C{trusted_clients} (default: loopback and private
    networks) or its consumer is in C{trusted_consumers} (C{"*"}: any
    authenticated consumer).
    """

    header: str = "X-Canary"
    trusted_only: bool = True
    trusted_clients: tuple[IPNetwork, ...] = INTERNAL_NETWORKS
    trusted_consumers: tuple[str, ...] = ()


@dataclass(frozen=True)
class JsonCompareSpec:
    """C{compare.json}: paths not compared, and how far two numbers may differ and still be equal."""

    ignore: tuple[str, ...] = ()
    absolute: float = 0.0
    relative: float = 0.0


@dataclass(frozen=True)
class RedactSpec:
    """
    C{compare.redact}: more headers and JSON body paths to hide in samples.
    Credential headers (L{txgateway.canary.compare.CREDENTIAL_HEADERS}) are
    always hidden; these add to them.
    """

    headers: tuple[str, ...] = ()
    json: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompareSpec:
    """
    C{mirror.compare}: what makes two answers the same.  C{body} is C{json}
    (the default when C{json:} is given), C{bytes} (otherwise) or C{ignore}.
    C{samples} mismatches are kept for the admin API.
    """

    status: bool = True
    headers: tuple[str, ...] = ()
    body: str = "bytes"
    json: JsonCompareSpec = field(default_factory=JsonCompareSpec)
    redact: RedactSpec = field(default_factory=RedactSpec)
    samples: int = 20


@dataclass(frozen=True)
class MirrorSpec:
    """
    C{mirror: {upstream: U, percent: 10, timeout: 5s, max_body: 1MiB,
    queue: 100, concurrency: 10, compare: {...}}}.  C{percent} is 0 to 100.
    """

    upstream: str
    percent: float = 100.0
    timeout: float = 5.0
    max_body: int = 1024 * 1024
    queue: int = 100
    concurrency: int = 10
    compare: CompareSpec | None = None


@dataclass(frozen=True)
class CanaryRouteSpec:
    """A route's canary keys; C{upstreams} is empty for a route with one C{upstream:}."""

    upstreams: tuple[WeightedUpstream, ...] = ()
    sticky: StickySpec | None = None
    override: OverrideSpec | None = None
    mirror: MirrorSpec | None = None

    @property
    def active(self) -> bool:
        """Whether the route needs a splitter or a mirror at all (most routes: no)."""
        return bool(self.upstreams or self.mirror is not None)
