# -*- test-case-name: tests.test_upstream_response -*-
"""
The pooled upstream client protocol, with a short way for plain exchanges.

Twisted private names used here (held to stock Twisted by the hypothesis
test in tests/test_upstream_response.py, which runs both ways):
  - C{twisted.web._newclient.HTTP11ClientProtocol} (subclassed) and its
    state: C{_state}, C{_parser}, C{_currentRequest}, C{_finishedRequest},
    C{_transportProxy}, C{_responseDeferred}, C{_quiescentCallback},
    C{_finishResponse}, C{_disconnectParser}, C{_giveUp}, C{_log};
  - C{_newclient.TransportProxyProducer}, C{Response._construct},
    C{Response._bodyDataReceived}, C{Response._bodyDataFinished},
    C{Response._state}, C{Request._writeHeaders}, C{HTTPParser._finished},
    C{_everReceivedData}, C{_responseDeferred};
  - C{twisted.web.http._ChunkedTransferDecoder} and C{_IdentityTransferDecoder}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser, Response, TransportProxyProducer
from twisted.web.client import ResponseDone
from twisted.web.http import _ChunkedTransferDecoder, _IdentityTransferDecoder

from txgateway.http.client.parser import StrictResponseParser, plainHead
from txgateway.http.replay import BytesProducer

if TYPE_CHECKING:
    from txgateway.http.sending import WriteBatcher

__all__ = ["StrictClientProtocol"]

# Every complete body ends with this reason; one instance serves them all.
_BODY_DONE = Failure(ResponseDone("Response body fully received"))


class StrictClientProtocol(HTTP11ClientProtocol):
    """
    The pooled client protocol, parsing responses with L{StrictResponseParser}.

    A request without a body, or with one already in memory, is sent the
    short way: its head (and body) are written and the response awaited
    without the parser, transport proxy, second Deferred and callbacks that
    C{HTTP11ClientProtocol.request} sets up for it.  A response whose head
    arrives whole in one read, framed by one Content-Length or chunked and
    with nothing unusual in it (nearly every response from a keep-alive
    backend), is handed over directly, and its body, whole or in pieces, is
    counted out to it (a chunked one through Twisted's own decoder).
    Anything else first makes the state the stock way would be in at that
    point, and goes the stock way from there: an unusual or partial head, a
    lost connection, a cancellation, bytes beyond the body, bad chunk
    framing, a body consumer that raises.
    """

    _short = False  # a request sent the short way awaits its response; no parser made yet
    _remaining = 0  # a response taken the short way still has this many body bytes to come
    _decoder: _ChunkedTransferDecoder | None = None  # ... or is chunked, and this reads its framing
    _response: Response | None = None

    def __init__(self, quiescentCallback: Callable[[Any], None] = lambda c: None,
                 writes: WriteBatcher | None = None) -> None:
        super().__init__(quiescentCallback)
        self.writes = writes

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.writes is not None:
            self.writes.adopt(self.transport)

    def dataReceived(self, data: bytes) -> None:
        writes = self.writes
        if writes is None:
            self._receive(data)
        else:
            # The response relayed to the client leaves when this returns.
            writes.run(self._receive, data)

    def _receive(self, data: bytes) -> None:
        remaining = self._remaining
        if remaining:
            response: Any = self._response
            n = len(data)
            if n < remaining:
                if n:
                    self._remaining = remaining - n  # counted first, as the stock decoder does
                    self._deliver(response, data, False)
                return
            if n == remaining:
                self._remaining = 0
                self._response = None
                if self._deliver(response, data, True):
                    self._quiesce()
                    self._bodyDone(response)
                return
            self._stockBody()
        elif self._decoder is not None:
            try:
                self._decoder.dataReceived(data)
            except BaseException:
                # As the stock parser: bad framing, or a consumer that
                # raised, drops the connection and fails the body.
                failure = Failure()
                if self._decoder is not None:
                    self._stockBody()
                self._giveUp(failure)
            return
        elif self._short:
            if self._shortResponse(data):
                return
            self._unshort()
        super().dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._short:
            self._unshort()
        elif self._remaining or self._decoder is not None:
            self._stockBody()
        super().connectionLost(reason)

    def request(self, request: Any) -> Deferred[Any]:
        body = request.bodyProducer
        if (body is None or type(body) is BytesProducer) and self._state == "QUIESCENT" and request.persistent \
                and request.method != b"HEAD":
            self._state = "TRANSMITTING"
            transport: Any = self.transport
            try:
                # Written at once, or raising before a byte is written (bad
                # headers): the stock way then fails the request.
                if body is None:
                    request.writeTo(transport)
                else:
                    request._writeHeaders(transport, b"Content-Length: %d\r\n" % body.length)
                    transport.write(body.data)
            except BaseException:
                self._state = "QUIESCENT"
            else:
                self._state = "WAITING"
                self._short = True
                self._currentRequest = request
                d: Deferred[Any] = Deferred(self._cancelShort)
                self._finishedRequest = d
                return d
        d = super().request(request)
        parser = self._parser
        if parser is not None and type(parser) is HTTPClientParser:
            # HTTP11ClientProtocol names its parser class inline; the fresh
            # parser has seen no byte yet, so giving it our subclass's
            # behaviour here is the same as having constructed one.
            parser.__class__ = StrictResponseParser
        return d

    def _unshort(self) -> None:
        """The state C{HTTP11ClientProtocol.request} leaves once the request is written, made now."""
        self._short = False
        proxy = self._transportProxy = TransportProxyProducer(self.transport)
        parser = self._parser = StrictResponseParser(self._currentRequest, self._finishResponse)
        parser.makeConnection(proxy)
        self._responseDeferred = parser._responseDeferred
        self._responseDeferred.chainDeferred(self._finishedRequest)  # type: ignore[arg-type]

    def _stockBody(self) -> None:
        """The state the stock parser is in partway through a body, made now."""
        response: Any = self._response
        parser = self._parser = StrictResponseParser(self._currentRequest, self._finishResponse)
        parser.makeConnection(self._transportProxy)
        parser._everReceivedData = True
        parser.response = response
        del parser._responseDeferred  # fired: the stock parser drops it then
        decoder: Any = self._decoder
        if decoder is None:
            decoder = _IdentityTransferDecoder(self._remaining, response._bodyDataReceived, parser._finished)
        else:
            decoder.finishCallback = parser._finished  # the chunked decoder as it stands, ending the stock way
        self._response = None
        self._remaining = 0
        self._decoder = None
        parser.switchToBodyMode(decoder)

    def _chunkedEnd(self, rest: bytes) -> None:
        """The chunked body's last chunk and trailers are in: back to the pool, and the body ends."""
        response: Any = self._response
        self._response = None
        self._decoder = None
        self._quiesce()
        self._bodyDone(response)

    def _deliver(self, response: Any, data: bytes, last: bool) -> bool:
        """
        Body bytes to the response; False if its consumer raised, which ends
        the exchange as the stock way does: the connection is dropped, and
        the consumer hears the body failed (or, if these were its last
        bytes, that it ended).
        """
        try:
            response._bodyDataReceived(data)
        except BaseException:
            failure = Failure()
            if last:
                transport: Any = self.transport
                transport.loseConnection()
                self._currentRequest = None
                self._finishedRequest = None
                proxy: Any = self._transportProxy
                self._transportProxy = None
                proxy.stopProxying()
                self._bodyDone(response)
            else:
                self._stockBody()
                self._giveUp(failure)
            return False
        return True

    def _bodyDone(self, response: Any) -> None:
        try:
            response._bodyDataFinished(_BODY_DONE)
        except Exception:
            # As the stock parser: the body's consumer failing here is logged, not raised.
            self._log.failure("while interacting with body decoder:")

    def _cancelShort(self, d: Deferred[Any]) -> None:
        # HTTP11ClientProtocol.request's canceller, for a request fully written.
        if self._short:
            self._unshort()
        self.transport.abortConnection()  # type: ignore[union-attr]
        self._disconnectParser(Failure(CancelledError()))

    def _quiesce(self) -> None:
        """C{_finishResponse_WAITING}, for a persistent response read in full: back to the pool."""
        self._state = "QUIESCENT"
        self._currentRequest = None
        self._finishedRequest = None
        proxy: Any = self._transportProxy
        self._transportProxy = None
        proxy.stopProxying()
        transport: Any = self.transport
        transport.resumeProducing()  # if the body's consumer paused it meanwhile
        try:
            self._quiescentCallback(self)
        except Exception:
            self._log.failure("while invoking quiescent callback:")
            transport.loseConnection()

    def _shortResponse(self, data: bytes) -> bool:
        """
        Take a response whose plain head (see L{plainHead}) is whole in
        C{data}, with no more body than its Content-Length (or chunked).
        Returns False, having changed nothing, for anything else.

        What follows is what the stock path does with such a response, in its
        order: the Deferred fires with the response (the forwarder asks for
        the body there; if nobody does, the connection is paused until
        someone does), the body is delivered, and once all of it is in, the
        connection goes back to the pool and the body's protocol learns the
        body is complete.
        """
        head = plainHead(data)
        if head is None:
            return False
        end, code, phrase, headers, length = head
        body = data[end:]
        if length is not None and length < len(body):
            return False  # bytes beyond the body: the stock parser decides what they are

        self._short = False
        finished: Any = self._finishedRequest
        proxy = self._transportProxy = TransportProxyProducer(self.transport)
        response = Response._construct((b"HTTP", 1, 1), code, phrase, headers, proxy, self._currentRequest)
        if length is None:
            # Chunked: Twisted's own decoder reads the framing, as it does the stock way.
            finished.callback(response)
            if response._state == "INITIAL":
                proxy.pauseProducing()
            self._response = response
            self._decoder = _ChunkedTransferDecoder(response._bodyDataReceived, self._chunkedEnd)
            if body:
                self._receive(body)
            return True
        response.length = length
        if length == 0:
            # As the stock parser does with an empty body: all done before the response is handed over.
            self._quiesce()
            response._bodyDataFinished(_BODY_DONE)
            finished.callback(response)
            return True
        finished.callback(response)
        if response._state == "INITIAL":
            proxy.pauseProducing()  # as the strict parser: nobody has asked for the body yet
        self._response = response
        self._remaining = length
        if body:
            self._receive(body)  # the body counted out as any later bytes are
        return True
