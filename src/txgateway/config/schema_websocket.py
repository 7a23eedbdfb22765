# -*- test-case-name: tests.test_websocket -*-
"""
The typed configuration of a route's WebSocket proxying (issue 20): whether
the route relays upgrades at all, how long a quiet connection may stay open,
and how many may be open at once.  Re-exported by L{txgateway.config.schema}.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WebSocketSpec"]


@dataclass(frozen=True)
class WebSocketSpec:
    """
    C{routes[].websocket}, C{websocket_idle_timeout}, C{max_websockets},
    C{max_websockets_per_ip}.

    Off by default: a WebSocket holds a client connection and a target
    connection for minutes or hours, outside the request deadlines, the
    cache and the admission limits every other request is held to.  A route
    opts in when its backend really speaks WebSocket; on other routes an
    upgrade request is forwarded as the plain GET it also is.  C{None}
    means no cap.
    """

    enabled: bool = False
    idle_timeout: float = 300.0
    max_connections: int | None = None
    max_per_ip: int | None = None
