# -*- test-case-name: tests.test_websocket_http,tests.e2e.test_websocket -*-
"""
WebSocket proxying (issue 20): a route with C{websocket: true} relays
upgrades to its upstream and splices the two connections.

  - L{proxy}: the upgrade sequence of one route (caps, target, handshake);
  - L{splice}: one open WebSocket, both ways, with backpressure and the idle timeout;
  - L{frames}: the few bits of RFC 6455 framing the gateway reads and writes (close frames);
  - L{registry}: the process's open WebSockets, their caps, metrics and the drain.

The handshake's wire work (the target's connection, the client's
connection taken from HTTP) is in L{txgateway.http.handshake} and
L{txgateway.http.upgrade}, where Twisted's private names may be used.
"""

from txgateway.websocket.proxy import WebSocketProxy, proxyFor
from txgateway.websocket.registry import WebSocketRegistry

__all__ = ["WebSocketProxy", "WebSocketRegistry", "proxyFor"]
