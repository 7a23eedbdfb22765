# -*- test-case-name: tests.test_forwarder -*-
"""
The client's request body, sent again for every attempt.

The Site buffered the whole body before the request was routed (except an
HTTP/2 body that streams, see L{txgateway.http.h2body}); each attempt gets
a producer that starts it from the beginning.  A primitive
module: it imports nothing from txgateway.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["BodyView", "BytesProducer", "StillTransport", "bodyProducer"]

# Bodies up to this size are read into memory and written in one go.
SMALL_BODY = 256 * 1024


@implementer(IBodyProducer)
class BytesProducer:
    """A body already in memory, written in one go (no cooperator round trip)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class StillTransport:
    """
    The transport handed to a protocol reading a body that is already in
    memory (a stored, held or gateway-written answer): nothing to pause.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def bodyProducer(request: Any) -> IBodyProducer | None:
    """
    The client's body, replayable for retries (the Site buffered it whole),
    or, for an HTTP/2 request forwarded while its body still arrives, a
    reader of that body from its start (see L{txgateway.http.h2body}).
    """
    streamed = getattr(request, "bodyStream", None)
    if streamed is not None and not streamed.ended:
        return streamed.producer()  # type: ignore[no-any-return]
    content = request.content
    if content is None:
        return None
    n = getattr(request, "_bodyBytes", None)  # GatewayRequest counts the body as it reads it
    if not isinstance(n, int):
        content.seek(0, 2)
        n = content.tell()
        content.seek(0)
    if n == 0:
        return None
    content.seek(0)
    if n <= SMALL_BODY or isinstance(content, io.BytesIO):
        data = content.read()
        content.seek(0)
        return BytesProducer(data)
    return FileBodyProducer(BodyView(content))


class BodyView:
    """
    One attempt's reading position in the buffered request body.

    C{FileBodyProducer} closes its file when done or stopped, and reads
    from the file's shared position; over the Site's temp file that would
    make a retry send nothing (closed file) or, while a cancelled attempt's
    producer winds down, an interleaved body.  Each attempt gets its own
    view, with its own offset, that never closes the client's body.
    """

    def __init__(self, content: Any) -> None:
        self._content = content
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        content = self._content
        content.seek(self._pos)
        data: bytes = content.read(n)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = self._content.seek(0, 2) + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        pass
