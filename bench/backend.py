"""
A deliberately cheap origin for the benchmark: a raw protocol, not twisted.web,
so the numbers measure the proxy and not the backend.

python bench/backend.py PORT [--size BYTES] [--delay SECONDS] [--echo] [--json]

--json answers with a JSON document of --size bytes (application/json): what
the compression case compresses.

--echo answers each request with what the proxy sent (its head, a blank line,
its body) and with hop-by-hop fields a proxy must drop: what tests/test_bench.py
checks a bench proxy against.
"""

from __future__ import annotations

import argparse

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

ECHO_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Origin: %d\r\nConnection: keep-alive, X-Hop\r\n"
             b"Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-End: 1\r\nContent-Length: %d\r\n\r\n")


class Origin(Protocol):
    def __init__(self, response: bytes, delay: float, echo: int | None = None) -> None:
        self.response = response
        self.delay = delay
        self.echo = echo
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end == -1:
                return
            head = self.buffer[:end]
            # Bodies are not used by the benchmark's GETs; a Content-Length body is skipped (echoed with --echo).
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            response = self.response
            if self.echo is not None:
                seen = head + b"\r\n\r\n" + body
                response = ECHO_HEAD % (self.echo, len(seen)) + seen
            if self.delay:
                reactor.callLater(self.delay, self._answer, response)  # type: ignore[attr-defined]
            else:
                self._answer(response)

    def _answer(self, response: bytes) -> None:
        if self.transport is not None:
            self.transport.write(response)


def jsonBody(size: int) -> bytes:
    """A JSON array of API-like records, exactly C{size} bytes (padded inside the last string)."""
    items = []
    n = 0
    while sum(len(i) + 1 for i in items) < size:
        items.append(b'{"id":%d,"sku":"SKU-%06d","name":"Item number %d","price":%d.%02d,"tags":["new","sale"],'
                     b'"stock":%d,"active":%s}' % (n, n * 7919 % 1000000, n, n % 500, n % 100, n * 13 % 97,
                                                  b"true" if n % 3 else b"false"))
        n += 1
    doc = b"[" + b",".join(items[:-1]) + b',{"pad":"'
    return doc + b"x" * max(0, size - len(doc) - 3) + b'"}]'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--echo", action="store_true", help="answer with the request as received")
    parser.add_argument("--json", action="store_true", help="a JSON body (application/json) of --size bytes")
    args = parser.parse_args()
    body = (b"hello, world\n" * (args.size // 13 + 1))[: args.size]
    kind = b"text/plain"
    if args.json:
        body = jsonBody(args.size)
        kind = b"application/json"
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (kind, len(body))) + body
    factory = Factory.forProtocol(lambda: Origin(response, args.delay, args.port if args.echo else None))
    TCP4ServerEndpoint(reactor, args.port, backlog=2048, interface="127.0.0.1").listen(factory)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
