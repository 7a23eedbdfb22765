"""
A deliberately cheap origin for the benchmark: a raw protocol, not twisted.web,
so the numbers measure the proxy and not the backend.

python bench/backend.py PORT [--size BYTES] [--delay SECONDS]
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol


class Origin(Protocol):
    def __init__(self, response: bytes, delay: float) -> None:
        self.response = response
        self.delay = delay
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end == -1:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            # Bodies are not used by the benchmark's GETs; a Content-Length body is skipped.
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.buffer = self.buffer[int(value):]
            if self.delay:
                reactor.callLater(self.delay, self._answer)  # type: ignore[attr-defined]
            else:
                self._answer()

    def _answer(self) -> None:
        if self.transport is not None:
            self.transport.write(self.response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    body = (b"hello, world\n" * (args.size // 13 + 1))[: args.size]
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    factory = Factory.forProtocol(lambda: Origin(response, args.delay))
    TCP4ServerEndpoint(reactor, args.port, backlog=2048, interface="127.0.0.1").listen(factory)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
