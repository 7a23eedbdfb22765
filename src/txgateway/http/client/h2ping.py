# -*- test-case-name: tests.test_h2client -*-
"""
PING keep-alive for an HTTP/2 upstream connection.

A connection to a target that vanished without a FIN (a crashed host, a
dropped NAT entry) looks open until a write times out, which for an idle
pool connection is never: the next request would hang on it.  Every
C{ping_interval} L{KeepAlive} sends a PING; if no ACK comes within
C{ping_timeout} the connection is given up.  Time comes from the injected
clock, so tests drive it with a C{Clock}.

No private name of any library is used here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

__all__ = ["KeepAlive"]


class KeepAlive:
    """
    The PING loop of one connection: C{send(data)} writes a PING carrying
    C{data}; C{expired()} is called when one went unanswered.
    """

    def __init__(self, clock: IReactorTime, interval: float, timeout: float,
                 send: Callable[[bytes], None], expired: Callable[[], None]) -> None:
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self._send = send
        self._expired = expired
        self._next: Any = None
        self._deadline: Any = None
        self._data = b""

    def start(self) -> None:
        """Schedule the first PING (nothing when C{interval} is 0: keep-alive is off)."""
        if self.interval > 0:
            self._next = self.clock.callLater(self.interval, self._ping)

    def _ping(self) -> None:
        self._next = None
        self._data = os.urandom(8)
        self._deadline = self.clock.callLater(self.timeout, self._unanswered)
        self._send(self._data)

    def answered(self, data: bytes) -> None:
        """A PING ACK arrived: if it is ours, the next PING is scheduled."""
        call = self._deadline
        if data != self._data or call is None:
            return
        self._deadline = None
        if call.active():
            call.cancel()
        self.start()

    def _unanswered(self) -> None:
        self._deadline = None
        self._expired()

    def stop(self) -> None:
        """The connection closed: no timer is left behind."""
        for call in (self._next, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._next = self._deadline = None
