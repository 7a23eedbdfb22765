# -*- test-case-name: tests.test_websocket -*-
"""
The process's open WebSockets: the per-route and per-client caps, their
metrics, and what the drain does to them.

One registry lives as long as the process (a reload hands it to the new
runtime, see L{txgateway.building}): a WebSocket opened under one config
stays open on its target, and still counts against its route's caps, after
a reload.

Caps are taken before the target is asked (a slot is held through the
handshake, so a burst of upgrades cannot overshoot) and answered:
  - 503 when the route is at C{max_websockets} (the service is full);
  - 429 when this client address holds C{max_websockets_per_ip} on the
    route (this client is over its share; others still get in);
  - 503 while the gateway drains (no new WebSocket would outlive it).

The drain (L{drain}) lets open WebSockets run and, a little before
C{server.timeouts.drain} ends, closes each with 1001 to both sides, so the
close frames are out before the listener's connections are cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config.schema_websocket import WebSocketSpec
    from txgateway.observe import Metrics
    from txgateway.websocket.splice import Splice

__all__ = ["Refusal", "Slot", "WebSocketRegistry"]

# Time left at the drain deadline for the close frames to go out.
CLOSE_GRACE = 1.0


class Refusal:
    """Why an upgrade is not let in: the status and message the client gets."""

    __slots__ = ("status", "message", "outcome")

    def __init__(self, status: int, message: str, outcome: str) -> None:
        self.status = status
        self.message = message
        self.outcome = outcome


class Slot:
    """One WebSocket's place in its route's caps, from admission until it closes."""

    __slots__ = ("registry", "route", "client", "upstream", "target", "released", "splice")

    def __init__(self, registry: WebSocketRegistry, route: str, client: str) -> None:
        self.registry = registry
        self.route = route
        self.client = client
        self.upstream = ""
        self.target = ""
        self.released = False
        self.splice: Splice | None = None

    def release(self) -> None:
        """Give the place back (the handshake failed, or the WebSocket closed)."""
        if not self.released:
            self.released = True
            self.registry._release(self)


class WebSocketRegistry:
    """Every open WebSocket of the process, by route and client address."""

    def __init__(self, clock: IReactorTime, metrics: Metrics) -> None:
        self.clock = clock
        self.metrics = metrics
        self.draining = False
        self.perRoute: dict[str, int] = {}
        self.perClient: dict[tuple[str, str], int] = {}
        self.open: set[Slot] = set()

    def admit(self, route: str, client: str, spec: WebSocketSpec) -> Slot | Refusal:
        """A slot for a new WebSocket on C{route} from C{client}, or why not."""
        if self.draining:
            return Refusal(503, "the gateway is shutting down: no new WebSocket connections", "refused_draining")
        cap = spec.max_connections
        if cap is not None and self.perRoute.get(route, 0) >= cap:
            return Refusal(503, f"the route is at its limit of {cap} WebSocket connections (max_websockets)",
                           "refused_route_limit")
        cap = spec.max_per_ip
        key = (route, client)
        if cap is not None and self.perClient.get(key, 0) >= cap:
            return Refusal(429, f"this client holds {cap} WebSocket connections on the route (max_websockets_per_ip)",
                           "refused_client_limit")
        self.perRoute[route] = self.perRoute.get(route, 0) + 1
        self.perClient[key] = self.perClient.get(key, 0) + 1
        return Slot(self, route, client)

    def opened(self, slot: Slot, splice: Splice) -> None:
        """The 101 went out: C{slot}'s WebSocket is open."""
        slot.splice = splice
        self.open.add(slot)
        m = self.metrics
        m.websocketConnections.labels(slot.route).inc()
        m.websocketTargetConnections.labels(slot.upstream, slot.target).inc()

    def _release(self, slot: Slot) -> None:
        route, key = slot.route, (slot.route, slot.client)
        n = self.perRoute.get(route, 0) - 1
        if n > 0:
            self.perRoute[route] = n
        else:
            self.perRoute.pop(route, None)
        n = self.perClient.get(key, 0) - 1
        if n > 0:
            self.perClient[key] = n
        else:
            self.perClient.pop(key, None)
        if slot in self.open:
            self.open.discard(slot)
            m = self.metrics
            m.websocketConnections.labels(slot.route).dec()
            m.websocketTargetConnections.labels(slot.upstream, slot.target).dec()

    def drain(self, seconds: float) -> Any:
        """
        No new WebSockets; the open ones get 1001 shortly before the drain
        deadline C{seconds} from now (at once if none is left by then).
        Returns the timer (None if nothing is open).
        """
        self.draining = True
        if not self.perRoute:  # none open, none in its handshake
            return None
        return self.clock.callLater(max(seconds - min(CLOSE_GRACE, seconds / 4), 0), self.goingAway)

    def goingAway(self) -> None:
        """Close every open WebSocket with 1001 to both sides."""
        for slot in list(self.open):
            if slot.splice is not None:
                slot.splice.goingAway()
