# -*- test-case-name: tests.test_sending -*-
"""
How bytes leave the gateway: what one reactor event wrote, sent when the event ends.

Twisted never sends from C{transport.write}: it buffers, registers the socket
for writability with epoll, sends on the next reactor turn and unregisters
again.  For a proxied request that is four C{epoll_ctl} calls, two extra
wake-ups and two extra event dispatches (one on the upstream side, one on
the client side) for bytes the socket would have taken at once.

A L{WriteBatcher} keeps Twisted's buffering but not the round trip: while a
connection handles an event (bytes from a client, bytes from an upstream),
the transports it writes to only note that they have something to send;
when the event is handled, each is asked to send right away, the way the
reactor would have a turn later.  Whatever the socket does not take (a slow
reader, a large body) is left to the reactor as usual, so backpressure,
producers and C{loseConnection} behave as before.  Everything written in
one event still leaves in one C{send}: a response head and its body are not
split.

Writes made outside such an event (timers, Redis answers, health probes)
take Twisted's usual path.  TLS connections are not adopted: their transport
is a protocol over the socket, not the socket.

Private Twisted names used here: C{tcp.Connection}'s C{_tempDataLen},
C{dataBuffer}, C{offset}, C{_writeDisconnecting} and C{_aborting} (what a
TCP transport still holds to send).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger

__all__ = ["WriteBatcher", "pendingBytes"]

log = Logger(namespace="txgateway.http.sending")

#: What a gateway connection reads in one C{recv} and holds unsent before it
#: pauses what feeds it (Twisted's C{bufferSize}, 64 KiB by default).  At 64
#: KiB a 64 KiB response took two reads from its target (its head pushes the
#: body past one read) and, written to the client in one piece, went over the
#: client's limit at once: the target's connection was paused and resumed
#: around every such response (two C{epoll_ctl}) although the write batcher
#: sends it a moment later.  256 KiB per connection still bounds what a slow
#: client holds (Envoy's per-connection default is 1 MiB).
BUFFER_SIZE = 1 << 18


def pendingBytes(transport: Any) -> int | None:
    """
    How many bytes C{transport} holds that the socket has not taken yet, or
    None when that cannot be known (a TLS transport, a test's transport).

    The write timeout (L{txgateway.http.connection}) compares two of these to
    tell a client that reads slowly (fewer pending) from one that stopped.
    """
    if not isinstance(transport, tcp.Connection):
        return None
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class WriteBatcher:
    """
    One per process (the service makes it; the client-facing Site and every
    upstream pool share it, because an upstream's bytes are written to a
    client's transport and the other way round).
    """

    __slots__ = ("depth", "_pending")

    def __init__(self) -> None:
        self.depth = 0
        self._pending: dict[tcp.Connection, Callable[[], None]] = {}

    def adopt(self, transport: Any) -> None:
        """
        Route C{transport}'s write scheduling through this batcher, join what
        is written as a sequence, and turn off Nagle's algorithm on it: the
        gateway writes a whole message per event, so there is nothing to gain
        from holding back a small last segment until the previous one is
        acknowledged (up to 40 ms with delayed ACKs, on every streamed
        response).
        """
        if not isinstance(transport, tcp.Connection):
            return
        try:
            transport.setTcpNoDelay(True)
        except OSError:  # not a TCP socket after all (a UNIX socket passed as one)
            pass
        transport.bufferSize = BUFFER_SIZE
        schedule = transport.startWriting
        pending = self._pending

        def startWriting() -> None:
            if self.depth:
                pending[transport] = schedule
            else:
                schedule()

        transport.startWriting = startWriting  # type: ignore[method-assign]

        # twisted.web and the Agent hand over messages as sequences of small
        # pieces (four per header field), which the TCP transport checks one
        # by one to be bytes, buffers, and joins when it sends; joining them
        # first is the same bytes for a fifth of the work (2.6 -> 0.5 us for
        # a 10-field head).
        write = transport.write

        def writeSequence(pieces: Any) -> None:
            write(b"".join(pieces))

        transport.writeSequence = writeSequence  # type: ignore[method-assign]

    def run(self, handler: Callable[[bytes], None], data: bytes) -> None:
        """Handle one event's bytes, then send what was written meanwhile."""
        self.depth += 1
        try:
            handler(data)
        finally:
            self.depth -= 1
            if not self.depth and self._pending:
                self.flush()

    def flush(self) -> None:
        """Send what the event wrote; leave what the sockets do not take to the reactor."""
        pending = self._pending
        while pending:
            transport, schedule = pending.popitem()
            if not transport.connected or getattr(transport, "_aborting", False):
                continue
            if transport.disconnecting or transport._writeDisconnecting:
                # Closing after the write: the reactor's doWrite both sends
                # and closes, and reports the close through connectionLost.
                schedule()
                continue
            try:
                failed = transport.doWrite() is not None
            except Exception:
                # A producer resumed by doWrite raised: the reactor's own
                # doWrite will meet it again and close that connection
                # properly, not the one whose event this was.
                log.failure("sending on {transport} failed", transport=transport)
                failed = True
            if failed or transport._tempDataLen or transport.dataBuffer:
                # The socket took only part (or failed: the reactor's own
                # doWrite will see the error again and close properly).
                schedule()
