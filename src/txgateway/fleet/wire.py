# -*- test-case-name: tests.test_fleet_hub -*-
"""
The fleet's wire: one JSON object per line over a Unix stream socket.

Line-delimited JSON rather than AMP because the hub relays most messages
untouched to the other workers: a line is forwarded as the bytes it came
in, with no re-encoding, and each message stays readable with C{socat}
when something goes wrong.  Every message is a JSON object whose C{"t"}
names its kind (see L{txgateway.fleet.hub} for the list).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

__all__ = ["Message", "WireProtocol", "encode"]

log = Logger(namespace="txgateway.fleet")

Message = dict[str, Any]


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class WireProtocol(LineOnlyReceiver):
    """
    Reads and writes messages; hands each one (with its raw line) to
    C{onMessage}.  A malformed line is logged and dropped: a peer's bug must
    not cut the connection every other kind of sharing rides on.
    """

    delimiter = b"\n"
    # A config's text travels in one line: allow big configs.
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, onMessage: Callable[[WireProtocol, Message, bytes], None],
                 onLost: Callable[[WireProtocol], None] | None = None) -> None:
        self.onMessage = onMessage
        self.onLost = onLost
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise ValueError("not an object with a kind")
        except ValueError as e:
            log.warn("fleet: dropped a malformed message ({why})", why=str(e))
            return
        try:
            self.onMessage(self, message, line)
        except Exception:
            log.failure("fleet: handling a {kind!r} message failed", kind=message.get("t"))

    def lineLengthExceeded(self, line: bytes) -> None:
        log.error("fleet: a message over {n} bytes; closing the connection", n=self.MAX_LENGTH)
        super().lineLengthExceeded(line)

    def send(self, message: Message) -> None:
        self.sendRaw(encode(message))

    def sendRaw(self, data: bytes) -> None:
        if self.connected and self.transport is not None:
            self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        if self.onLost is not None:
            self.onLost(self)
