# -*- test-case-name: tests.test_websocket -*-
"""
One open WebSocket: the client's connection and the target's, joined byte
for byte.

A pure splice, not a frame relay: what one side sends is written to the
other as it arrives, unparsed and unbuffered, so a message of any size costs
the gateway one write per read, compression extensions and subprotocols pass
untouched, and no per-message limit exists to get wrong.  Alongside, a
L{FrameTracker <txgateway.websocket.frames.FrameTracker>} per direction
reads frame headers only, to log the close code and to write a close frame
of the gateway's own between two frames.

Backpressure is the transports' own: each side's transport has the other
side as its producer, so when the client's socket buffer fills up the gateway
stops reading the target (and the target's TCP window closes), and the other
way round.

The connection ends in one of these ways (the access log's C{outcome}):
C{websocket_closed} (a close frame passed, its code logged), C{websocket_client_gone}
and C{websocket_target_gone} (a side's TCP connection ended without a close
frame: the client is sent 1011 and the target is recorded as failing),
C{websocket_idle_timeout} and C{websocket_going_away} (the gateway sends 1001
to both sides: no byte for C{websocket_idle_timeout}, the drain).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from txgateway.websocket.frames import GOING_AWAY, INTERNAL_ERROR, FrameTracker, closeFrame

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Splice"]


@implementer(IPushProducer)
class _Other:
    """Stands for one side's transport as the producer of the other side's: a full buffer there pauses reading here."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass  # each side's own connectionLost ends the splice


class Splice:
    """
    The bytes of one WebSocket, both ways.  Made when the target's 101 is
    in (L{fromClient} may be called before L{start}: those bytes go to the
    target); L{start} when the client's connection has been taken over.
    C{onEnd(splice)} is called once, when the client's side is closed.
    """

    def __init__(self, target: Any, clock: IReactorTime, idleTimeout: float,
                 onEnd: Callable[[Splice], None], countIn: Callable[[int], None],
                 countOut: Callable[[int], None]) -> None:
        self.target = target
        self.client: Any = None
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.onEnd = onEnd
        self.countIn = countIn
        self.countOut = countOut
        self.fromClientFrames = FrameTracker()
        self.fromTargetFrames = FrameTracker()
        self.bytesIn = 0  # client to target
        self.bytesOut = 0  # target to client
        self.started = clock.seconds()
        self.last = self.started
        self.outcome: str | None = None
        self.closeCode: int | None = None
        self.ended = False
        self.targetFailed = False  # the target's side ended without a close frame
        self._idleCall: IDelayedCall | None = None
        self._held: list[bytes] = []

    def start(self, client: Any) -> None:
        """The client's transport is ours: join the two, with backpressure both ways."""
        self.client = client
        client.registerProducer(_Other(self.target), True)
        self.target.registerProducer(_Other(client), True)
        held, self._held = self._held, []
        for data in held:
            self.fromTarget(data)
        self._idleCall = self.clock.callLater(self.idleTimeout, self._idleCheck)

    # -- bytes

    def fromClient(self, data: bytes) -> None:
        if self.outcome is not None:
            return  # closing: what a side still sends is dropped
        self.last = self.clock.seconds()
        self.bytesIn += len(data)
        self.countIn(len(data))
        self.fromClientFrames.feed(data)
        self.target.write(data)

    def fromTarget(self, data: bytes) -> None:
        if self.outcome is not None:
            return
        if self.client is None:
            self._held.append(data)
            return
        self.last = self.clock.seconds()
        self.bytesOut += len(data)
        self.countOut(len(data))
        self.fromTargetFrames.feed(data)
        self.client.write(data)

    # -- ends

    def _firstCloseCode(self) -> int | None:
        return self.fromClientFrames.closeCode or self.fromTargetFrames.closeCode

    def clientLost(self, reason: Failure) -> None:
        """The client's connection closed (whoever closed it): the WebSocket is over."""
        if self.outcome is None:
            code = self._firstCloseCode()
            self.outcome = "websocket_closed" if code is not None else "websocket_client_gone"
            self.closeCode = code
        self._end()
        if self.target is not None:
            self.target.loseConnection()

    def targetLost(self, reason: Failure) -> None:
        """The target's connection closed: pass a clean close on, or tell the client 1011."""
        if self.outcome is not None:
            return
        code = self._firstCloseCode()
        if code is not None:
            self.outcome = "websocket_closed"
            self.closeCode = code
        else:
            # Died without a close frame: an internal error, as the client should hear it.
            self.targetFailed = True
            self.outcome = "websocket_target_gone"
            self.closeCode = INTERNAL_ERROR
            self._sayClose(INTERNAL_ERROR, toTarget=False)
        if self.client is not None:
            self.client.loseConnection()
        else:
            self._end()

    def goingAway(self, outcome: str = "websocket_going_away") -> None:
        """Close both sides with 1001: the drain's deadline, or the idle timeout."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.closeCode = GOING_AWAY
        self._sayClose(GOING_AWAY, toTarget=True)
        if self.client is not None:
            self.client.loseConnection()
        self.target.loseConnection()

    def _sayClose(self, code: int, toTarget: bool) -> None:
        """A close frame to the client (and the target), where no frame is half written."""
        if self.client is not None and self.fromTargetFrames.atBoundary and self.fromTargetFrames.closeCode is None:
            self.client.write(closeFrame(code, masked=False))
        if toTarget and self.fromClientFrames.atBoundary and self.fromClientFrames.closeCode is None:
            self.target.write(closeFrame(code, masked=True))

    def _idleCheck(self) -> None:
        self._idleCall = None
        if self.outcome is not None:
            return
        due = self.last + self.idleTimeout
        now = self.clock.seconds()
        if now >= due:
            self.goingAway("websocket_idle_timeout")
        else:
            self._idleCall = self.clock.callLater(due - now, self._idleCheck)

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()
        self.onEnd(self)
