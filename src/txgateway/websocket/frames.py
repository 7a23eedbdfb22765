# -*- test-case-name: tests.test_websocket -*-
"""
Just enough of RFC 6455 framing to close a connection politely.

The gateway relays WebSocket bytes as they come (see
L{txgateway.websocket.splice}); it never reassembles messages.  To say
"going away" (1001) or "internal error" (1011) it must write a close frame
between two frames, never in the middle of one, and to log the close code it
must spot a close frame as it passes.  L{FrameTracker} follows one direction
of the stream by reading frame headers only: a payload is skipped by
arithmetic, not copied or unmasked (only a close frame's two-byte code is),
so watching costs a few operations per frame whatever its size.
"""

from __future__ import annotations

import os
import struct

__all__ = ["GOING_AWAY", "INTERNAL_ERROR", "NO_STATUS", "FrameTracker", "closeFrame"]

GOING_AWAY = 1001
INTERNAL_ERROR = 1011
NO_STATUS = 1005  # a close frame without a code (RFC 6455 §7.1.5)
_CLOSE = 0x8


def closeFrame(code: int, masked: bool) -> bytes:
    """
    A close frame carrying C{code} and no reason.  C{masked} for the
    gateway speaking as a client (to a target, RFC 6455 §5.3 requires a mask),
    unmasked as a server (to a client).
    """
    payload = struct.pack("!H", code)
    if not masked:
        return bytes((0x80 | _CLOSE, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x80 | _CLOSE, 0x80 | len(payload))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FrameTracker:
    """
    Follows the frames of one direction: where the next frame starts, and
    the code of a close frame once one has passed.
    """

    __slots__ = ("_head", "_remaining", "_closing", "_closeBytes", "_mask", "closeCode", "broken")

    def __init__(self) -> None:
        self._head = b""  # a frame header split across reads
        self._remaining = 0  # payload bytes of the current frame still to pass
        self._closing = False  # the current frame is a close frame
        self._closeBytes = b""
        self._mask = b""
        self.closeCode: int | None = None  # set once a close frame has passed (NO_STATUS without a code)
        self.broken = False  # a header no WebSocket peer would send: stop following (and never inject)

    @property
    def atBoundary(self) -> bool:
        """Whether a frame could be written now without splitting one in two."""
        return not self.broken and not self._head and not self._remaining

    def feed(self, data: bytes, stop: bool = False) -> int:
        """
        Account for C{data}, the next bytes of this direction; how many were
        taken.  With C{stop}, only up to the next frame boundary (0 when
        already at one): what may still be passed on before a close frame.
        """
        if self.broken:
            return len(data)
        i = 0
        n = len(data)
        while i < n:
            if stop and not self._remaining and not self._head:
                return i
            remaining = self._remaining
            if remaining:
                take = remaining if remaining < n - i else n - i
                if self._closing and len(self._closeBytes) < 2:
                    self._closeBytes += data[i:i + min(take, 2 - len(self._closeBytes))]
                self._remaining = remaining - take
                i += take
                if not self._remaining and self._closing:
                    self._closed()
                continue
            held = self._head
            head = held + data[i:i + 14 - len(held)]
            size = _headerSize(head)
            if size is None or len(head) < size:
                self._head = head
                return n
            i += size - len(held)
            self._head = b""
            self._start(head[:size])
            if self.broken:
                return n
        return n

    def _start(self, head: bytes) -> None:
        b0, b1 = head[0], head[1]
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", head, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", head, 2)[0]
            if length >> 63:
                self.broken = True
                return
        opcode = b0 & 0x0F
        self._remaining = length
        if opcode == _CLOSE:
            self._closing = True
            self._closeBytes = b""
            self._mask = head[-4:] if b1 & 0x80 else b""
            if not length:
                self._closed()

    def _closed(self) -> None:
        self._closing = False
        raw = self._closeBytes
        if len(raw) < 2:
            self.closeCode = NO_STATUS
            return
        mask = self._mask
        if mask:
            raw = bytes((raw[0] ^ mask[0], raw[1] ^ mask[1]))
        self.closeCode = struct.unpack("!H", raw)[0]


def _headerSize(head: bytes) -> int | None:
    """A frame header's size from its first bytes (None until two are in)."""
    if len(head) < 2:
        return None
    b1 = head[1]
    length = b1 & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + 4 if b1 & 0x80 else size
