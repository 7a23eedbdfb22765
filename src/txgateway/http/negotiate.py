# -*- test-case-name: tests.test_h2server -*-
"""
Which protocol a client connection speaks: HTTP/1.1 or HTTP/2.

Every connection starts as an HTTP/1.1 L{GatewayChannel
<txgateway.http.channel.GatewayChannel>} (its head deadline runs from the
first instant, as before).  On a listener that may speak HTTP/2, the first
bytes decide:

  - TLS (C{ssl:} listeners, C{server.http2}): the client chose C{h2} by ALPN
    (the Site offers it, L{acceptableProtocols});
  - cleartext (C{tcp:} listeners, C{server.h2c}): the bytes begin with the
    HTTP/2 connection preface (RFC 9113 §3.4, "prior knowledge").

Then the HTTP/1.1 channel steps aside (its timers stopped, off the Site's
books) and a L{GatewayH2Connection <txgateway.http.h2channel.GatewayH2Connection>}
takes the transport and every byte read so far.  A listener that cannot
speak HTTP/2 gets the HTTP/1.1 channel itself, with nothing in between.

No private Twisted name is used here.  (C{_disarm} and
C{_stopConnectionTimers} are the gateway's own channel's.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocol
from zope.interface import implementer

from txgateway.http.h2channel import H2_PREFACE, GatewayH2Connection

__all__ = ["NegotiatingProtocol", "offeredProtocols"]

_H2 = b"h2"
_HTTP11 = b"http/1.1"


def offeredProtocols(http2: bool) -> list[bytes]:
    """The ALPN protocols a TLS listener offers, most preferred first."""
    return [_H2, _HTTP11] if http2 else [_HTTP11]


@implementer(IProtocol)
class NegotiatingProtocol:
    """
    Stands in front of an HTTP/1.1 channel until the first bytes say
    whether the client speaks HTTP/2.
    """

    def __init__(self, channel: Any, site: Any, tls: bool) -> None:
        self.channel = channel
        self.site = site
        self.tls = tls
        self.decided = False
        self.sniffed = b""

    def makeConnection(self, transport: Any) -> None:
        self.channel.makeConnection(transport)

    def connectionMade(self) -> None:
        # makeConnection (above) makes the channel's connection; nothing else to do.
        pass

    def dataReceived(self, data: bytes) -> None:
        if self.decided:
            self.channel.dataReceived(data)
            return
        if self.tls:
            h2 = getattr(self.channel.transport, "negotiatedProtocol", None) == _H2
        else:
            data = self.sniffed + data
            if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                self.sniffed = data  # not enough yet to tell (the HTTP/1.1 head deadline still runs)
                return
            self.sniffed = b""
            h2 = data.startswith(H2_PREFACE)
        self.decided = True
        if h2:
            self._switch()
        self.channel.dataReceived(data)

    def _switch(self) -> None:
        old = self.channel
        transport = old.transport
        old._disarm()
        old._stopConnectionTimers()
        old.setTimeout(None)
        transport.unregisterProducer()  # the HTTP/1.1 channel registered itself as the transport's producer
        new = GatewayH2Connection(self.site)
        new.requestFactory = old.requestFactory
        new.factory = old.factory
        self.channel = new
        new.makeConnection(transport)  # counted by the Site before the old channel leaves its books
        self.site.connectionClosed(old)
        transport.registerProducer(new, True)

    def connectionLost(self, reason: Any) -> None:
        self.channel.connectionLost(reason)
