"""
The WriteBatcher over real TCP sockets: what one event writes leaves when the
event ends, in one piece, without the reactor's write round trip.

The transports are Twisted's own TCP connections over a real loopback socket
pair; the reactor they report to is a MemoryReactor, so a test can see
whether a socket was handed to the reactor for writing.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from txgateway.http.sending import BUFFER_SIZE, WriteBatcher


def _tcpPair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


class Batched(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        ours, self.peer = _tcpPair()
        self.peer.settimeout(5)
        ours.setblocking(False)
        self.transport = tcp.Connection(ours, Protocol(), self.reactor)
        self.transport.connected = 1
        self.batcher = WriteBatcher()
        self.batcher.adopt(self.transport)
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)

    def receive(self, n: int) -> bytes:
        got = b""
        while len(got) < n:
            chunk = self.peer.recv(n - len(got))
            if not chunk:
                break
            got += chunk
        return got

    def test_eventWritesLeaveWhenTheEventEnds(self) -> None:
        """Head and body written in one event reach the peer as soon as it returns, no reactor turn needed."""
        def handler(data: bytes) -> None:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            self.transport.write(b"ok")
            # Nothing has left yet: the event is still running.
            self.assertEqual(self.transport._tempDataLen, 40)

        self.batcher.run(handler, b"")
        self.assertNotIn(self.transport, self.reactor.getWriters())
        self.assertEqual(self.receive(40), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def test_sequencesLeaveAsOneString(self) -> None:
        """A head handed over in pieces is buffered as one string, bytes unchanged; non-bytes still refused."""
        pieces = [b"HTTP/1.1", b" ", b"200", b" ", b"OK", b"\r\n", b"A", b": ", b"b", b"\r\n", b"\r\n"]
        self.batcher.run(lambda data: self.transport.writeSequence(pieces), b"")
        self.assertEqual(self.receive(len(b"".join(pieces))), b"".join(pieces))
        self.assertRaises(TypeError, self.transport.writeSequence, [b"a", "b"])

    def test_noDelayIsOn(self) -> None:
        """Nagle's algorithm would hold a streamed body's last small segment for a delayed ACK."""
        sock = self.transport.getHandle()
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def test_writesOutsideAnEventTakeTheReactorPath(self) -> None:
        """A timer's write is left to the reactor, as Twisted does it."""
        self.transport.write(b"late")
        self.assertIn(self.transport, self.reactor.getWriters())
        self.transport.doWrite()
        self.assertEqual(self.receive(4), b"late")
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_whatTheSocketDoesNotTakeIsLeftToTheReactor(self) -> None:
        """A write larger than the socket buffer: the rest waits for writability, and all of it arrives in order."""
        body = bytes(range(256)) * (64 * 1024)  # 16 MiB, far over any loopback buffer
        self.batcher.run(lambda data: self.transport.write(body), b"")
        self.assertIn(self.transport, self.reactor.getWriters())
        got = bytearray()
        while len(got) < len(body):
            got += self.peer.recv(1 << 20)
            if self.transport in self.reactor.getWriters():
                self.transport.doWrite()
        self.assertEqual(bytes(got), body)
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_closeAfterWriteIsLeftToTheReactor(self) -> None:
        """loseConnection in the event: the reactor's doWrite sends, then closes and reports it."""
        def handler(data: bytes) -> None:
            self.transport.write(b"bye")
            self.transport.loseConnection()

        self.batcher.run(handler, b"")
        self.assertIn(self.transport, self.reactor.getWriters())
        self.transport.doWrite()
        self.assertEqual(self.receive(3), b"bye")

    def test_nestedEventsSendOnceTheOutermostEnds(self) -> None:
        """An upstream event handled inside a client event (in-memory paths) does not send early."""
        def inner(data: bytes) -> None:
            self.transport.write(b"b")

        def outer(data: bytes) -> None:
            self.transport.write(b"a")
            self.batcher.run(inner, b"")
            self.assertEqual(self.transport._tempDataLen, 2)

        self.batcher.run(outer, b"")
        self.assertEqual(self.receive(2), b"ab")

    def test_handlerErrorsStillSend(self) -> None:
        """A handler that raises does not strand what it wrote before raising."""
        def handler(data: bytes) -> None:
            self.transport.write(b"partial")
            raise ValueError("boom")

        self.assertRaises(ValueError, self.batcher.run, handler, b"")
        self.assertEqual(self.receive(7), b"partial")

    def test_lostConnectionsAreSkipped(self) -> None:
        """A connection lost during the event is not written to."""
        def handler(data: bytes) -> None:
            self.transport.write(b"x")
            self.transport.connected = 0

        self.batcher.run(handler, b"")
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_nonTcpTransportsAreLeftAlone(self) -> None:
        """TLS and in-memory transports keep Twisted's own write path."""
        class Other:
            startWriting = None

        other = Other()
        self.batcher.adopt(other)
        self.assertIsNone(other.startWriting)

    def test_aFailingProducerDoesNotStrandOtherSockets(self) -> None:
        """A producer that raises when resumed is logged and left to the reactor; the event's caller is not hit."""
        class Broken:
            def resumeProducing(self) -> None:
                raise RuntimeError("broken producer")

            def stopProducing(self) -> None:
                pass

        self.transport.registerProducer(Broken(), True)
        self.transport.producerPaused = True  # as after a full buffer: doWrite resumes it once drained
        self.batcher.run(lambda data: self.transport.write(b"x"), b"")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(self.transport, self.reactor.getWriters())
        self.assertEqual(self.receive(1), b"x")

    def test_aSixtyFourKiBResponseDoesNotPauseItsTarget(self) -> None:
        """
        A 64 KiB body and its head written in one event leave at once without
        pausing the producer feeding them (the target's connection): at
        Twisted's 64 KiB buffer it was paused and resumed around every such
        response, two epoll_ctl calls for bytes the socket took anyway.
        """
        events: list[str] = []
        self.transport.registerProducer(_Target(events), True)
        message = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + b"x" * 65536
        self.batcher.run(lambda data: self.transport.write(message), b"")
        self.assertEqual(events, [])
        self.assertEqual(self.receive(len(message)), message)

    def test_aClientThatDoesNotReadStillPausesTheTarget(self) -> None:
        """Past BUFFER_SIZE unsent bytes the producer is paused, as before: backpressure holds."""
        events: list[str] = []
        self.transport.registerProducer(_Target(events), True)
        self.batcher.run(lambda data: self.transport.write(b"x" * (BUFFER_SIZE + 1)), b"")
        self.assertEqual(events, ["pause"])


class _Target:
    """A streaming producer that notes what it was asked to do."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")
