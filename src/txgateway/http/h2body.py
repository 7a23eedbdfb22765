# -*- test-case-name: tests.test_h2body -*-
"""
An HTTP/2 request body that streams: the request is forwarded before its body ended.

A gRPC client-streaming or bidirectional call, or a long upload, cannot wait
for its whole body before the gateway forwards it: the client may be waiting
for the answer to its first messages before it sends the next.  So an HTTP/2
request whose body did not arrive with its head (in the same read) is
dispatched at once (see L{GatewayH2Stream.startStreaming
<txgateway.http.h2stream.GatewayH2Stream.startStreaming>}) and its body
flows through a L{StreamedBody}:

  - every chunk is also appended to the request's C{content} (the "tee"), so
    a retry can send the body again from its start, and the access log and
    C{server.max_request_body} count it as for a buffered body;
  - each attempt reads it through its own L{BodyReader} (an
    C{IBodyProducer}): what arrived so far first, then each chunk as it
    arrives, paused and resumed by the upstream connection;
  - backpressure: a chunk's HTTP/2 flow-control credit (WINDOW_UPDATE) goes
    back to the client only once a reader has handed it to the upstream, so
    a client can be at most one window (64 KiB by default) ahead of a slow
    upstream;
  - a route that needs the whole body before forwarding (a mirror, batching,
    POST coalescing) waits for it (L{StreamedBody.whole}), and then credit
    goes back as chunks arrive, as for a buffered body.

A primitive module: it imports nothing from txgateway.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

__all__ = ["BodyReader", "StreamedBody", "pendingBody"]

# The most a reader hands its consumer in one write, replaying what is stored.
_READ = 64 * 1024


class _Credit(Protocol):
    """What a L{StreamedBody} needs of its stream: to give flow-control credit back."""

    def openWindow(self, increment: int) -> None: ...


class StreamedBody:
    """The body of one request, forwarded while it still arrives."""

    def __init__(self, credit: _Credit, request: Any, length: int | None) -> None:
        self.credit = credit
        self.request = request
        self.length = length  # what the client declared (Content-Length), if it did
        self.size = int(getattr(request, "_bodyBytes", 0) or 0)  # bytes stored so far
        self.ended = False
        self.failure: Failure | None = None
        self.buffering = False  # credit on arrival: someone waits for the whole body
        self._owed: deque[tuple[int, int]] = deque()  # (body offset it ends at, credit) not yet given back
        self._readers: list[BodyReader] = []
        self._waiters: list[Deferred[None]] = []

    # -- from the stream

    def received(self, data: bytes, flowLength: int) -> None:
        """A DATA frame's payload: stored, then offered to the readers."""
        content = getattr(self.request, "content", None)
        if content is None or self.failure is not None:
            self._give(flowLength)  # answered already: the client's credit comes back at once
            return
        if data:
            content.seek(0, 2)
            self.request.handleContentChunk(data)  # counts it: 413 past server.max_request_body
            self.size += len(data)
            self.request.bytesIn = self.size
        if self.buffering or not data or self.failure is not None:
            self._give(flowLength)
            return
        self._owed.append((self.size, flowLength))
        for reader in list(self._readers):
            reader.more()

    def end(self) -> None:
        """The client sent END_STREAM: the body is complete."""
        if self.ended:
            return
        self.ended = True
        for reader in list(self._readers):
            reader.more()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def fail(self, reason: Failure) -> None:
        """The stream was reset or refused: every reader and waiter fails, owed credit goes back."""
        if self.failure is not None or self.ended:
            self.release()
            return
        self.failure = reason
        self.release()
        for reader in list(self._readers):
            reader.failed(reason)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(reason)

    def release(self) -> None:
        """Give back all the credit still owed (the stream is done with the body)."""
        owed = sum(n for _, n in self._owed)
        self._owed.clear()
        self._give(owed)

    # -- from the request path

    def producer(self) -> BodyReader:
        """A new reader from the start of the body, for one attempt."""
        reader = BodyReader(self)
        self._readers.append(reader)
        return reader

    def whole(self) -> Deferred[None] | None:
        """
        None if the body is complete; else a Deferred that fires when it is,
        and from now on every chunk's credit goes back on arrival (no reader
        is going to consume it before the end).
        """
        if self.ended:
            return None
        if self.failure is not None:
            d: Deferred[None] = Deferred()
            d.errback(self.failure)
            return d
        self.buffering = True
        self.release()
        d = Deferred()
        self._waiters.append(d)
        return d

    def consumed(self, offset: int) -> None:
        """A reader handed the body up to C{offset} to its upstream: that much credit goes back."""
        owed = self._owed
        n = 0
        while owed and owed[0][0] <= offset:
            n += owed.popleft()[1]
        self._give(n)

    def forget(self, reader: BodyReader) -> None:
        if reader in self._readers:
            self._readers.remove(reader)

    def read(self, offset: int, n: int) -> bytes:
        """Up to C{n} stored bytes from C{offset}."""
        content = self.request.content
        content.seek(offset)
        data: bytes = content.read(n)
        return data

    def _give(self, n: int) -> None:
        if n > 0:
            self.credit.openWindow(n)


@implementer(IBodyProducer)
class BodyReader:
    """One attempt's reading of a L{StreamedBody}: what is stored, then what arrives."""

    def __init__(self, body: StreamedBody) -> None:
        self.body = body
        self.length = body.length if body.length is not None else UNKNOWN_LENGTH
        self.offset = 0
        self.paused = False
        self.consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._writing = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        # Kept here: more() and failed() may fire it and let go of it at once
        # (a body that has all arrived), and the caller must still get it.
        done = self._done = Deferred()
        if self.body.failure is not None:
            self.failed(self.body.failure)
        else:
            self.more()
        return done

    def more(self) -> None:
        """Write what is stored past our offset, unless paused; finish at the end of the body."""
        consumer = self.consumer
        if consumer is None or self._writing:
            return
        body = self.body
        self._writing = True  # a write may pause or resume us: no re-entry
        try:
            while not self.paused and self.offset < body.size and self.consumer is not None:
                data = body.read(self.offset, min(_READ, body.size - self.offset))
                if not data:
                    break
                self.offset += len(data)
                consumer.write(data)
                body.consumed(self.offset)
        finally:
            self._writing = False
        if body.ended and self.offset >= body.size and self._done is not None:
            d, self._done = self._done, None
            body.forget(self)
            d.callback(None)

    def failed(self, reason: Failure) -> None:
        d, self._done = self._done, None
        self.body.forget(self)
        if d is not None:
            d.errback(reason)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.more()

    def stopProducing(self) -> None:
        # IBodyProducer: the Deferred from startProducing must not fire now.
        self._done = None
        self.consumer = None
        self.body.forget(self)


def pendingBody(request: Any) -> Deferred[None] | None:
    """
    For a route that needs the whole request body before it forwards: a
    Deferred that fires once a streamed body is complete, or None when the
    body is already whole (every HTTP/1.1 request, most HTTP/2 ones).
    """
    body: StreamedBody | None = getattr(request, "bodyStream", None)
    return None if body is None else body.whole()
