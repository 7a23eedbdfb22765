# -*- test-case-name: tests.test_websocket -*-
"""
Parsing a route's WebSocket keys (issue 20): C{websocket},
C{websocket_idle_timeout}, C{max_websockets}, C{max_websockets_per_ip}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from txgateway.config.errors import keyPath
from txgateway.config.schema_websocket import WebSocketSpec
from txgateway.config.values import boolean, duration, integer, positive

if TYPE_CHECKING:
    from txgateway.config.parser_base import ParserBase
    from txgateway.config.source import YAMLMap

__all__ = ["WEBSOCKET_ROUTE_KEYS", "parseRouteWebSocket"]

WEBSOCKET_ROUTE_KEYS = ("websocket", "websocket_idle_timeout", "max_websockets", "max_websockets_per_ip")


def parseRouteWebSocket(parser: ParserBase, m: YAMLMap, path: str) -> WebSocketSpec:
    """
    The L{WEBSOCKET_ROUTE_KEYS} of one route mapping (C{path} is the
    route's key path); problems go to C{parser} with their lines.  The
    limits without C{websocket: true} would limit nothing, and a split or a
    route that answers itself has no one upstream to upgrade to: both are said.
    """
    d = WebSocketSpec()
    enabled = parser.get(m, "websocket", path, boolean, d.enabled)
    spec = WebSocketSpec(
        enabled=enabled,
        idle_timeout=parser.get(m, "websocket_idle_timeout", path, positive(duration), d.idle_timeout),
        max_connections=parser.get(m, "max_websockets", path, integer(1), d.max_connections),
        max_per_ip=parser.get(m, "max_websockets_per_ip", path, integer(1), d.max_per_ip),
    )
    if enabled:
        for key, why in (("upstreams", "a weighted split"), ("redirect", "an answer of the route's own"),
                         ("respond", "an answer of the route's own")):
            if m.get(key) is not None:
                parser.problem(keyPath(path, "websocket"), m.lines.get("websocket", m.line),
                               f"cannot be combined with {key} ({why}): a WebSocket goes to one upstream")
    else:
        for key in WEBSOCKET_ROUTE_KEYS[1:]:
            if m.get(key) is not None:
                parser.problem(keyPath(path, key), m.lines.get(key, m.line),
                               "needs websocket: true on the route (it limits WebSocket connections)")
    return spec
