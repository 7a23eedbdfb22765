# -*- test-case-name: tests.test_h2client -*-
"""
One HTTP/2 upstream response, as an C{IResponse} whose body streams with backpressure.

The attempt loop, the cache and the relay only know Twisted's C{IResponse}:
status, headers, C{length}, and a body handed to a protocol through
C{deliverBody} whose transport pauses and resumes the target.  Over HTTP/2,
"pause the target" means "stop giving back flow-control window": the body
bytes of a paused stream are held here, not acknowledged, so the stream's
window (and only that) closes and the target stops sending on it while the
connection's other streams carry on.  Resuming delivers what was held and
gives the window back.

When the body ends the response's C{trailers} (a C{Headers}) hold the
target's trailer fields: L{txgateway.http.trailers.relayTrailers} passes
them on (gRPC's C{grpc-status}).

No private name of any library is used here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

__all__ = ["H2Response", "responseHead"]

_DONE = Failure(ResponseDone("Response body fully received"))


def responseHead(fields: list[tuple[bytes, bytes]]) -> tuple[int, Headers, int | object]:
    """
    The status, the regular fields (pseudo-fields left out) and the body
    length (C{Content-Length}, or C{UNKNOWN_LENGTH}) of an HTTP/2 response head.
    """
    code = 0
    headers = Headers()
    length: int | object = UNKNOWN_LENGTH
    for name, value in fields:
        if name[:1] == b":":
            if name == b":status":
                code = int(value)
            continue
        headers.addRawHeader(name, value)
        if name == b"content-length" and value.isdigit():
            length = int(value)
    return code, headers, length


@implementer(IResponse, IPushProducer)
class H2Response:
    """
    The response of one stream.  It is also the body's transport (an
    C{IPushProducer}): C{pauseProducing} holds the body back,
    C{stopProducing} resets the stream (the gateway's client went away).

    C{acknowledge(n)} gives C{n} flow-controlled bytes of window back to the
    target; C{reset()} sends RST_STREAM(CANCEL): both are the connection's,
    handed in by it.
    """

    version = (b"HTTP", 2, 0)
    request = None
    previousResponse = None

    def __init__(self, code: int, headers: Headers, length: int | object,
                 acknowledge: Callable[[int], None], reset: Callable[[], None]) -> None:
        self.code = code
        self.phrase = RESPONSES.get(code, b"")
        self.headers = headers
        self.length = length
        self.trailers = Headers()
        self._acknowledge = acknowledge
        self._reset = reset
        self._protocol: Any = None
        self._held: list[tuple[bytes, int]] = []
        self._paused = False
        self._end: Failure | None = None  # how the body ended, while it is still held here
        self._closed = False  # the protocol has heard the end

    # -- IResponse

    def deliverBody(self, protocol: Any) -> None:
        if self._protocol is not None:
            raise RuntimeError("the body of an HTTP/2 response can be delivered only once")
        self._protocol = protocol
        protocol.makeConnection(self)
        if not self._paused:
            self._flush()

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    # -- fed by the connection

    def bodyReceived(self, data: bytes, flowControlled: int) -> None:
        """Body bytes of this stream, counting C{flowControlled} bytes against its window."""
        if self._closed:
            self._acknowledge(flowControlled)
            return
        if self._protocol is None or self._paused or self._held:
            self._held.append((data, flowControlled))
            return
        self._acknowledge(flowControlled)
        if data:
            self._protocol.dataReceived(data)

    def bodyEnded(self, reason: Failure | None = None) -> None:
        """The stream ended (C{reason} None: complete, trailers in) or broke off."""
        if self._end is not None or self._closed:
            return
        self._end = reason if reason is not None else _DONE
        if reason is not None:
            self._held = []  # a broken body is not worth finishing
        if self._protocol is not None:
            self._flush()  # held bytes wait for a resume; the end follows them

    # -- IPushProducer, for the body's protocol

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._protocol is not None:
            self._flush()

    def stopProducing(self) -> None:
        if self._closed:
            return
        self._held = []
        if self._end is None:
            self._reset()
            self._end = Failure(ResponseFailed([Failure(CancelledError("the response body was stopped"))]))
        self._flush()

    def _flush(self) -> None:
        protocol = self._protocol
        while self._held and not self._paused:
            data, n = self._held.pop(0)
            self._acknowledge(n)
            if data:
                protocol.dataReceived(data)
        if self._end is not None and not self._held and not self._closed:
            self._closed = True
            protocol.connectionLost(self._end)
