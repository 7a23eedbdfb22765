# -*- test-case-name: tests.test_websocket_http,tests.e2e.test_websocket -*-
"""
The client side of a WebSocket upgrade: telling an upgrade request apart,
and taking its connection away from HTTP once the target said 101.

An HTTP/1.1 connection belongs to its L{GatewayChannel
<txgateway.http.channel.GatewayChannel>} until the 101 is written; from then
on its bytes are WebSocket frames, which the channel must neither parse nor
time out.  L{takeOver} writes the 101, stops the channel's timers, takes the
channel off the transport's producer seat (the splice registers its own, for
backpressure), sends what the client sends from now on to the splice, and
marks the request answered: the request stays open until the connection
closes, so its access-log line, written then, carries the connection's
whole duration and the bytes each way.

Private names used here: C{HTTPChannel._dataBuffer} (bytes the client sent
after the upgrade request, before the 101; normally none) and
C{Headers._rawHeaders}; C{HTTPChannel.writeHeaders} is public.  C{_disarm} and C{_stopConnectionTimers} are the
gateway's own channel's.  Held to stock behaviour by
tests/test_websocket_upgrade.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from txgateway.http.connection import GatewayConnection
from txgateway.http.headers import H_CONNECTION, storedName

__all__ = ["H_UPGRADE", "isUpgrade", "takeOver", "upgradeFields"]

H_UPGRADE = storedName(b"Upgrade")


def _tokens(values: list[bytes] | None) -> set[bytes]:
    return {t.strip(b" \t").lower() for v in values or () for t in v.split(b",")}


def isUpgrade(request: Any) -> bool:
    """
    Whether C{request} opens a WebSocket (RFC 6455 §4.1): a GET on an
    HTTP/1.1 connection with C{Upgrade: websocket} and C{Connection: upgrade}.
    (HTTP/2's extended CONNECT, RFC 8441, is not offered.)
    """
    if request.method != b"GET" or request.clientproto != b"HTTP/1.1":
        return False
    raw = request.requestHeaders._rawHeaders
    if b"websocket" not in _tokens(raw.get(H_UPGRADE)) or b"upgrade" not in _tokens(raw.get(H_CONNECTION)):
        return False
    return isinstance(request.channel, GatewayConnection)


def upgradeFields(request: Any) -> list[tuple[bytes, bytes]]:
    """The hop-by-hop fields an upgrade carries to the target: the client's C{Upgrade}, and C{Connection: Upgrade}."""
    raw = request.requestHeaders._rawHeaders
    return [(b"Upgrade", b", ".join(raw.get(H_UPGRADE, [b"websocket"]))), (b"Connection", b"Upgrade")]


def takeOver(request: Any, answer: Headers, upgrade: bytes, sink: Callable[[bytes], None],
             onLost: Callable[[Failure], None]) -> Any:
    """
    Write the 101 (C{answer}'s fields, with C{Upgrade: upgrade} and
    C{Connection: Upgrade}) and give the connection to the splice: the
    client's bytes go to C{sink}, its loss to C{onLost} (before the request
    learns of it and its access-log line is written).  Returns the client's
    transport.
    """
    channel = request.channel
    transport = channel.transport
    channel._disarm()
    channel._stopConnectionTimers()
    channel.setTimeout(None)
    channel.persistent = False
    answer.setRawHeaders(b"Upgrade", [upgrade])
    answer.setRawHeaders(b"Connection", [b"Upgrade"])
    channel.writeHeaders(b"HTTP/1.1", b"101", b"Switching Protocols", answer)
    request.setResponseCode(101)
    request.startedWriting = True
    request.finished = True  # answered: nothing may write an HTTP response on this connection again
    transport.unregisterProducer()  # the channel's seat; the splice takes it
    early = b"".join(channel._dataBuffer)
    channel._dataBuffer = []
    channel.dataReceived = sink
    closed = channel.connectionLost

    def connectionLost(reason: Failure) -> None:
        try:
            onLost(reason)
        finally:
            closed(reason)

    channel.connectionLost = connectionLost
    transport.resumeProducing()  # the channel may have paused reading behind the request
    if early:
        sink(early)
    return transport
