# -*- test-case-name: tests.test_h2client -*-
"""
h2's client state machine as the gateway's HTTP/2 connections need it.

Private h2 name used here: C{H2Connection._receive_goaway_frame}
(overridden in L{ClientState}; held to h2 by tests/test_h2client.py
C{EndingTests.test_goAwayLetsEarlierStreamsFinishAndRefusesLaterOnes}).
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.errors
import h2.events
from twisted.internet.error import ConnectError

__all__ = ["ClientState", "StreamRefused", "codeName"]


class StreamRefused(ConnectError):
    """
    The target will not process this stream (it went away before reading
    it, or refused it): nothing of the request was acted on, so any method
    may be sent again.
    """


class ClientState(h2.connection.H2Connection):
    """
    h2's client state machine, still reading the streams a GOAWAY lets finish.

    h2 closes its whole state machine on a received GOAWAY, after which
    every frame of the streams the target promised to finish is a protocol
    error.  Here a GOAWAY is only an event; L{H2ClientProtocol} opens no
    stream after it.
    """

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = _errorCode(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def _errorCode(code: int) -> Any:
    try:
        return h2.errors.ErrorCodes(code)
    except ValueError:
        return code


def codeName(code: Any) -> str:
    return getattr(code, "name", str(code))
