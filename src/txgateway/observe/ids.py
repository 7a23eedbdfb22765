# -*- test-case-name: tests.test_observe -*-
"""
Request ids and W3C trace context: what ties every line about a request together.
"""

from __future__ import annotations

import os
import re

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def parseTraceparent(value: bytes | None) -> tuple[str, str] | None:
    """
    (trace id, flags) from a valid W3C traceparent, else None (a new trace starts).

    Version 00 must be exactly four fields; a later version may append
    fields after the flags, which are ignored (trace context, section 3.2.4).
    """
    if value is None:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None or m.group(1) == b"ff" or m.group(2) == b"0" * 32 or m.group(3) == b"0" * 16:
        return None
    if m.group(1) == b"00" and m.group(5):
        return None
    return m.group(2).decode(), m.group(4).decode()


def parentSpanId(value: bytes) -> str | None:
    """The caller's span id (the parent-id field) of a traceparent that L{parseTraceparent} accepts, else None."""
    if parseTraceparent(value) is None:
        return None
    return value.strip()[36:52].decode()


class IdSource:
    """
    Request, trace and span ids from the OS's random source, read in blocks.

    A request can need three ids; C{os.urandom} per id is a getrandom(2)
    syscall each.  Reading a few kilobytes at a time, turned into hex once,
    and slicing gives the same unpredictable ids for a fraction of the cost.
    One per process (L{GatewayState}); a worker is its own process with its
    own buffer.
    """

    __slots__ = ("_hex", "_pos")

    BLOCK = 4096  # random bytes read at a time: 8192 hex digits

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def _digits(self, n: int) -> str:
        """The next C{n} hex digits (C{n} // 2 random bytes), each digit used once."""
        pos = self._pos
        end = pos + n
        if end > len(self._hex):
            self._hex = os.urandom(self.BLOCK).hex()
            pos, end = 0, n
        self._pos = end
        return self._hex[pos:end]

    def requestId(self, value: bytes | None) -> str:
        """The client's X-Request-ID if it is short and plain; else a fresh 128-bit one."""
        if value is not None and _SANE_ID.fullmatch(value):
            return value.decode("ascii")
        return self._digits(32)

    def traceId(self) -> str:
        """A fresh 128-bit trace id (32 hex digits)."""
        return self._digits(32)

    def spanId(self) -> str:
        """A fresh 64-bit span id (16 hex digits)."""
        return self._digits(16)


__all__ = ["IdSource", "parentSpanId", "parseTraceparent"]
