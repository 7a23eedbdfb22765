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
to both sides: no byte for C{websocket_idle_timeout}, the drain).  A close
frame of the gateway's goes between two frames: a direction in the middle of
one passes its rest first (for up to L{CLOSE_GRACE}), then the close frame.
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

__all__ = ["CLOSE_GRACE", "Splice"]

# How long a side in the middle of a frame may take to finish it before the gateway's close frame.
CLOSE_GRACE = 1.0


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
        self.firstClose: int | None = None  # the code of the first close frame that passed, either way
        self.ended = False
        self.targetFailed = False  # the target's side ended without a close frame
        self._idleCall: IDelayedCall | None = None
        self._graceCall: IDelayedCall | None = None
        self._pending: dict[int, int] = {}  # a direction mid-frame when closing (its tracker's id): the close code
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
            self._closing(data, self.fromClientFrames, self.target, True)
            return
        self.last = self.clock.seconds()
        self.bytesIn += len(data)
        self.countIn(len(data))
        frames = self.fromClientFrames
        frames.feed(data)
        if self.firstClose is None:
            self.firstClose = frames.closeCode
        self.target.write(data)

    def fromTarget(self, data: bytes) -> None:
        if self.client is None:
            self._held.append(data)
            return
        if self.outcome is not None:
            self._closing(data, self.fromTargetFrames, self.client, False)
            return
        self.last = self.clock.seconds()
        self.bytesOut += len(data)
        self.countOut(len(data))
        frames = self.fromTargetFrames
        frames.feed(data)
        if self.firstClose is None:
            self.firstClose = frames.closeCode
        self.client.write(data)

    def _closing(self, data: bytes, frames: FrameTracker, to: Any, masked: bool) -> None:
        """
        Closing: a direction that was in the middle of a frame passes the
        rest of that frame, then the close frame; anything after is dropped.
        """
        code = self._pending.pop(id(frames), None)
        if code is None:
            return
        taken = frames.feed(data, stop=True)
        if taken:
            to.write(data[:taken])
            if masked:
                self.bytesIn += taken
            else:
                self.bytesOut += taken
        if frames.atBoundary:
            to.write(closeFrame(code, masked))
        else:
            self._pending[id(frames)] = code
        if not self._pending:
            self._hangUp()

    # -- ends

    def clientLost(self, reason: Failure) -> None:
        """The client's connection closed (whoever closed it): the WebSocket is over."""
        if self.outcome is None:
            code = self.firstClose
            self.outcome = "websocket_closed" if code is not None else "websocket_client_gone"
            self.closeCode = code
        self._end()
        if self.target is not None:
            self.target.loseConnection()

    def targetLost(self, reason: Failure) -> None:
        """The target's connection closed: pass a clean close on, or tell the client 1011."""
        if self.outcome is not None:
            return
        code = self.firstClose
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
        """
        Close both sides with 1001: the drain's deadline, or the idle timeout.
        A side in the middle of a frame gets its close frame once that frame
        has passed, or its connection closed without one after L{CLOSE_GRACE}.
        """
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.closeCode = GOING_AWAY
        self._sayClose(GOING_AWAY, toTarget=True)
        if self._pending:
            self._graceCall = self.clock.callLater(CLOSE_GRACE, self._hangUp)
        else:
            self._hangUp()

    def _hangUp(self) -> None:
        self._pending.clear()
        call, self._graceCall = self._graceCall, None
        if call is not None and call.active():
            call.cancel()
        if self.client is not None:
            self.client.loseConnection()
        self.target.loseConnection()

    def _sayClose(self, code: int, toTarget: bool) -> None:
        """A close frame to the client (and the target) now, or after the frame being relayed."""
        directions = [(self.fromTargetFrames, self.client, False)]
        if toTarget:
            directions.append((self.fromClientFrames, self.target, True))
        for frames, to, masked in directions:
            if to is None or frames.closeCode is not None or frames.broken:
                continue  # that side already had its close frame (or is not WebSocket at all)
            if frames.atBoundary:
                to.write(closeFrame(code, masked))
            else:
                self._pending[id(frames)] = code

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
        for call in (self._idleCall, self._graceCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._graceCall = None
        self.onEnd(self)
