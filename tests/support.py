"""
Support shared by several test modules (not itself a test module).

A gateway driven over C{StringTransport}s with a scripted upstream
(L{Wire}, L{FakeAgent}, L{FakeResponse}) and a whole L{GatewayService} in
memory with an echoing origin (L{InMemoryGateway}); raw-HTTP helpers to
write requests and split what a client read into responses.
"""

from __future__ import annotations

import ast
import gc
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from txgateway.building import Gateway, buildRuntime
from txgateway.config import GatewayConfig, parseConfig
from txgateway.gateway import GatewayRoot
from txgateway.http.site import GatewaySite
from txgateway.observe import Metrics
from txgateway.service import GatewayService

BASE_CONFIG = """\
server:
  listen: "tcp:8080"
  max_request_body: 1KiB
  max_header_bytes: 2KiB
  max_uri_bytes: 200
  max_connections_per_ip: 3
  timeouts: {{request_header: 10s, request_body: 20s, idle: 60s}}
  trusted_proxies: [10.0.0.0/8]
logging: {{access_log: false}}
upstreams:
  app:
    targets: [http://127.0.0.1:9999]
    retries: false
routes:
  - name: files
    match: {{path_prefix: /files}}
    upstream: app
    allow_encoded_slash: true
  - name: all
    match: {{path_prefix: /}}
    upstream: app
{extra}
"""


@implementer(IResponse)
class FakeResponse:
    """A scripted upstream response with the shape the Forwarder reads."""

    def __init__(self, code: int = 200, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"",
                 phrase: bytes = b"OK", length: Any = None) -> None:
        self.code = code
        self.phrase = phrase
        self.version = (b"HTTP", 1, 1)
        self.headers = Headers()
        for k, v in headers:
            self.headers.addRawHeader(k, v)
        self.body = body
        self.length = len(body) if length is None else length
        self.request = None
        self.previousResponse = None

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(NullProducer())
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        pass


class NullProducer:
    disconnecting = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Sent:
    """One request the gateway sent upstream."""

    def __init__(self, method: bytes, uri: bytes, headers: Headers, body: bytes | None,
                 length: Any, deferred: Deferred[Any]) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.length = length
        self.deferred = deferred
        self.producer: Any = None
        self.sink: BodySink | None = None

    def header(self, name: bytes) -> list[bytes]:
        return list(self.headers.getRawHeaders(name, []))


class BodySink:
    """The upstream's end of a request body: what reached it so far, and how the body ended."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done = False
        self.failure: Failure | None = None

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)

    def ended(self, _: Any) -> None:
        self.done = True

    def failed(self, failure: Failure) -> None:
        self.failure = failure


class FakeAgent:
    """Stands for the upstream's pooled Agent: records each request, answers when told."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.autoRespond: FakeResponse | None = None

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
                ) -> Deferred[Any]:
        body: bytes | None = None
        length = None
        sink = BodySink()
        if bodyProducer is not None:
            length = bodyProducer.length
            bodyProducer.startProducing(sink).addCallbacks(sink.ended, sink.failed)
            body = sink.data
        d: Deferred[Any] = Deferred() if self.autoRespond is None else succeed(self.autoRespond)
        sent = Sent(method, uri, headers or Headers(), body, length, d)
        sent.producer, sent.sink = bodyProducer, sink  # a streamed body goes on arriving in the sink
        self.sent.append(sent)
        return d


class Wire:
    """A gateway (real Site and resource tree) with a fake upstream, driven over StringTransports."""

    def __init__(self, extra: str = "", config: str | None = None, agent: Any = None) -> None:
        """C{agent}: every upstream's client (a L{FakeAgent} when not given)."""
        self.clock = MemoryReactorClock()
        self.config = parseConfig(config if config is not None else BASE_CONFIG.format(extra=extra))
        self.metrics = Metrics(processMetrics=False)
        self.agent = agent if agent is not None else FakeAgent()
        runtime = buildRuntime(self.config, reactor=self.clock, clock=self.clock, metrics=self.metrics,
                               clients=lambda upstream: self.agent)
        self.gateway = Gateway(runtime)
        self.gateway.state.ready = True
        self.site = GatewaySite(GatewayRoot(self.gateway), self.config.server, self.metrics, reactor=self.clock)

    def connect(self, peer: str = "192.0.2.10", port: int = 40000) -> tuple[Any, StringTransport]:
        addr = IPv4Address("TCP", peer, port)
        proto = self.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        proto.makeConnection(transport)
        return proto, transport

    def send(self, data: bytes, peer: str = "192.0.2.10") -> tuple[Any, StringTransport]:
        proto, transport = self.connect(peer)
        proto.dataReceived(data)
        return proto, transport

    def exchange(self, data: bytes, response: FakeResponse | None = None,
                 peer: str = "192.0.2.10") -> tuple[list[ParsedResponse], StringTransport]:
        """Send C{data}; answer every upstream request with C{response}; parse what the client got."""
        self.agent.autoRespond = response or FakeResponse(200, [(b"Content-Type", b"text/plain")], b"ok")
        _, transport = self.send(data, peer)
        return parseResponses(transport.value()), transport


class ParsedResponse:
    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"<ParsedResponse {self.status} {self.headers!r} {self.body[:120]!r}>"


def parseResponses(data: bytes) -> list[ParsedResponse]:
    """Split what a client read into responses (Content-Length or chunked framing only)."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response head: {head!r}")
        lines = head.split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ?(.*)", lines[0])
        assert m is not None, lines[0]
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k, v.strip()))
        status = int(m.group(1))
        lower = {k.lower(): v for k, v in headers}
        if status in (100,):
            continue
        if b"content-length" in lower:
            n = int(lower[b"content-length"])
            body, data = data[:n], data[n:]
        elif lower.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size, _, data = data.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    _, _, data = data.partition(b"\r\n")
                    break
                body += data[:n]
                data = data[n + 2:]
        else:
            body, data = data, b""
        out.append(ParsedResponse(status, m.group(2), headers, body))
    return out


def get(path: bytes = b"/", headers: Sequence[bytes] = (b"Host: example.com",), method: bytes = b"GET",
        version: bytes = b"HTTP/1.1") -> bytes:
    return b"%s %s %s\r\n%s\r\n" % (method, path, version, b"".join(h + b"\r\n" for h in headers))


TARGETS = ("http://127.0.0.1:9101", "http://127.0.0.1:9102")


def configText(targets: tuple[str, ...] = TARGETS, extra: str = "") -> str:
    lines = "\n".join(f"      - {t}" for t in targets)
    return f"""\
server:
  listen: "tcp:0:interface=127.0.0.1"
upstreams:
  app:
    targets:
{lines}
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: app
{extra}
"""


class Origin(Resource):
    """The backend: echoes the headers it got; C{?status=N}, C{?delay=S} (on the test's clock)."""

    isLeaf = True

    def __init__(self, clock: MemoryReactorClock) -> None:
        super().__init__()
        self.clock = clock
        self.seen: list[dict[str, list[str]]] = []

    def render(self, request: Any) -> Any:
        headers = {k.decode().lower(): [v.decode() for v in vs] for k, vs in request.requestHeaders.getAllRawHeaders()}
        self.seen.append(headers)
        status = int(request.args.get(b"status", [b"200"])[0])
        delay = float(request.args.get(b"delay", [b"0"])[0])
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        body = json.dumps({"headers": headers}).encode()
        if delay:
            def later() -> None:
                request.write(body)
                request.finish()

            self.clock.callLater(delay, later)
            return NOT_DONE_YET
        return body


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def parseReply(data: bytes, head: bool = False) -> Reply | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if head:
        return Reply(status, headers, rest)
    if "content-length" in headers:
        n = int(headers["content-length"])
        return Reply(status, headers, rest[:n]) if len(rest) >= n else None
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return None
            n = int(size, 16)
            if n == 0:
                return Reply(status, headers, body)
            body, rest = body + rest[:n], rest[n + 2:]
    return Reply(status, headers, rest)


class InMemoryGateway:
    """A whole GatewayService with in-memory clients and backend."""

    def __init__(self, text: str | None = None, metrics: Metrics | None = None,
                 loadConfig: Callable[[str], GatewayConfig] | None = None, agent: Any = None) -> None:
        """
        C{loadConfig}: how a reload reads its config (by default, from the
        file); C{agent}: every upstream's client (with a C{flush()}), by
        default one sending into L{Origin}.
        """
        self.clock = MemoryReactorClock()
        self.config = parseConfig(text or configText())
        self.metrics = metrics or Metrics(processMetrics=False)
        self.origin = Origin(self.clock)
        self.agent = agent if agent is not None else RequestTraversalAgent(self.origin)
        extra: dict[str, Any] = {"loadConfig": loadConfig} if loadConfig is not None else {}
        self.service = GatewayService(self.config, self.clock, clock=self.clock, metrics=self.metrics,
                                      clients=lambda upstream: self.agent, **extra)
        self.service.accessLog.enabled = False
        self.service.gateway.state.ready = True

    @property
    def gateway(self) -> Any:
        return self.service.gateway

    def open(self) -> tuple[Any, StringTransport]:
        addr = IPv4Address("TCP", "127.0.0.1", 40000)
        proto = self.service.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        proto.makeConnection(transport)
        return proto, transport

    def send(self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
             body: bytes = b"") -> tuple[Any, StringTransport]:
        proto, transport = self.open()
        lines = [f"{method} {path} HTTP/1.1", "Host: gw.example"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        self.agent.flush()
        return proto, transport

    def reply(self, transport: StringTransport, head: bool = False) -> Reply | None:
        self.agent.flush()
        return parseReply(transport.value(), head)

    def request(self, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
                body: bytes = b"") -> Reply:
        proto, transport = self.send(method, path, headers, body)
        reply = self.reply(transport, method == "HEAD")
        assert reply is not None, f"no complete response: {transport.value()!r}"
        proto.connectionLost(None)
        return reply

    def value(self, name: str, **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


class BrokenBreaker:
    """A stand-in breaker in a fixed state (the breaker module belongs to another issue)."""

    def __init__(self, state: str) -> None:
        self.state = state

    def allow(self) -> bool:
        return self.state != "open"

    def retryAfter(self) -> float:
        return 5.0


def tempPath(case: Any) -> str:
    """
    A path that does not exist yet, in a directory removed after the test.

    Trial's C{mktemp} writes under the working directory when the test runs
    under pytest (the checkout itself); this one works the same under both.
    """
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="txgw-test-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "f")


def parseSource(path: Path) -> ast.Module:
    """A source file's AST, parsed with no garbage collection in the middle (see below)."""
    # CPython 3.11.7 (fixed in 3.11.8, gh-106905) raises "SystemError: AST
    # constructor recursion depth mismatch" when a collection runs Python
    # finalizers in the middle of ast.parse (an earlier test's abandoned
    # coroutine, under pytest): no collection while parsing.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        if enabled:
            gc.enable()
