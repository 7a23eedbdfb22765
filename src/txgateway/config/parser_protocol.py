# -*- test-case-name: tests.test_h2config -*-
"""
Parsing the upstream protocol keys (issue 21): C{upstreams.NAME.protocol},
the HTTP/2 pool keys (C{pool.max_connections}, C{max_streams},
C{ping_interval}, C{ping_timeout}) and C{health.active.grpc_service}.

L{ProtocolSections} is a part of the parser (L{UpstreamSections
<txgateway.config.parser_upstreams.UpstreamSections>} calls it), so a
mistake here is reported with its key path and line like any other.
"""

from __future__ import annotations

from typing import Any

from txgateway.config.errors import Invalid
from txgateway.config.parser_base import ParserBase
from txgateway.config.schema import PoolConfig
from txgateway.config.source import YAMLMap, lines
from txgateway.config.values import duration, integer, oneOf, positive

__all__ = ["H2_POOL_KEYS", "PROTOCOLS", "ProtocolSections", "grpcService"]

PROTOCOLS = ("http1", "http2", "grpc")
H2_POOL_KEYS = ("max_connections", "max_streams", "ping_interval", "ping_timeout")


def grpcService(value: Any) -> str:
    """A gRPC service name for the health check: C{""} is the server as a whole."""
    if not isinstance(value, str):
        raise Invalid('must be a gRPC service name (a string; "" for the whole server)')
    text = value.strip()
    if any(c.isspace() or c == "/" for c in text):
        raise Invalid(f"{value!r} is not a gRPC service name (like grpc.health.v1.Health or my.pkg.Model)")
    return text


class ProtocolSections(ParserBase):
    """What an upstream speaks to its targets, and the HTTP/2 connection settings."""

    def h2Pool(self, pm: YAMLMap, path: str) -> dict[str, Any]:
        d = PoolConfig()
        return {
            "max_connections": self.get(pm, "max_connections", path, integer(1), d.max_connections),
            "max_streams": self.get(pm, "max_streams", path, integer(1), d.max_streams),
            "ping_interval": self.get(pm, "ping_interval", path, duration, d.ping_interval),
            "ping_timeout": self.get(pm, "ping_timeout", path, positive(duration), d.ping_timeout),
        }

    def protocol(self, m: YAMLMap, path: str) -> str:
        """C{protocol}; a gRPC health check or gRPC retry condition needs an HTTP/2 one."""
        protocol = self.get(m, "protocol", path, oneOf(*PROTOCOLS), "http1")
        health = m.get("health")
        active = health.get("active") if isinstance(health, dict) else None
        if isinstance(active, dict) and active.get("grpc_service") is not None and protocol == "http1":
            self.problem(f"{path}.health.active.grpc_service", lines(active).get("grpc_service"),
                         "a gRPC health check needs protocol: grpc (or http2)")
        retries = m.get("retries")
        on = retries.get("on") if isinstance(retries, dict) else None
        if isinstance(on, list) and protocol != "grpc" and any(str(c).startswith("grpc:") for c in on):
            self.problem(f"{path}.retries.on", lines(retries).get("on"),
                         "grpc: retry conditions need protocol: grpc")
        return protocol
