"""WebSocket frames written the long way, for the WebSocket tests (independent of the code under test)."""

from __future__ import annotations

import struct

__all__ = ["closeCodeOf", "frame"]


def frame(opcode: int, payload: bytes, mask: bytes | None = None, fin: bool = True) -> bytes:
    """One RFC 6455 frame, written the long way (independently of the code under test)."""
    n = len(payload)
    b1 = 0x80 if mask else 0
    if n < 126:
        head = bytes((0x80 * fin | opcode, b1 | n))
    elif n < 65536:
        head = bytes((0x80 * fin | opcode, b1 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 * fin | opcode, b1 | 127)) + struct.pack("!Q", n)
    if mask:
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def closeCodeOf(data: bytes) -> int:
    """The code of the close frame C{data} (masked or not)."""
    assert data[0] == 0x88, data
    if data[1] & 0x80:
        mask = data[2:6]
        return int(struct.unpack("!H", bytes(b ^ mask[i] for i, b in enumerate(data[6:8])))[0])
    return int(struct.unpack("!H", data[2:4])[0])
