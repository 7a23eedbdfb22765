"""
The CPU cost of the request path alone: no sockets, no other processes.

bench/run.py measures the gateway as deployed, syscalls and all, but on a
shared machine its CPU per request drifts by 10-20% between runs.  This
drives the same code in one process instead: the real GatewaySite, channel,
resource tree, chain, forwarder, Agent and connection pool, with the client
and the origins replaced by in-memory transports, and times a fixed number
of keep-alive requests (best of several rounds, the usual way to take
scheduling noise out).  What it leaves out is the kernel's share (send,
recv, epoll), which the gateway cannot change much anyway.

It also runs bench/reference_proxy.py's resource the same way, so the
result is a ratio as in run.py.

python bench/inproc.py [--requests 5000] [--rounds 7] [--routes 20] [--size 13] [--chunks 0] [--side gateway|reference|both]
                      [--tracing SAMPLE]

--tracing adds a C{tracing:} section with that sample ratio: spans are
made, queued, batched and encoded as OTLP JSON as in a running gateway; only
the POST is replaced by one that answers 200 at once (its cost is one HTTP
request per batch of 512 spans).

Run it with PYTHONPATH pointing at another tree's src to time that tree
(bench/compare.py --inproc does that, alternating).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402


class OriginTransport(StringTransport):
    """The origin's side of one pooled connection: a request head in, a canned response out."""

    def __init__(self, response: bytes | list[bytes], pending: list[OriginTransport]) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 9000),
                         hostAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.response = response
        self.pending = pending
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        if b"\r\n\r\n" in data or self.io.tell() and b"\r\n\r\n" in self.io.getvalue() + data:
            self.io.seek(0)
            self.io.truncate()
            self.pending.append(self)
        else:
            super().write(data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))


@implementer(IAgentEndpointFactory)
class OriginEndpoints:
    def __init__(self, response: bytes | list[bytes]) -> None:
        self.response = response
        self.pending: list[OriginTransport] = []

    def endpointForURI(self, uri: Any) -> Any:
        return self

    def connect(self, factory: Any) -> Any:
        proto = factory.buildProtocol(None)
        transport = OriginTransport(self.response, self.pending)
        transport.protocol = proto
        proto.makeConnection(transport)
        return succeed(proto)

    def pump(self) -> None:
        while self.pending:
            t = self.pending.pop(0)
            if isinstance(t.response, list):  # a stream: each piece its own read
                for piece in t.response:
                    t.protocol.dataReceived(piece)
            else:
                t.protocol.dataReceived(t.response)


def originResponse(size: int) -> bytes:
    body = (b"hello, world\n" * (size // 13 + 1))[:size]
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def streamResponse(size: int, chunks: int) -> list[bytes]:
    """A chunked event stream: the head, then C{chunks} chunks of C{size} bytes, each arriving alone."""
    event = (b"data: token\n\n" * (size // 13 + 1))[:size]
    return ([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"]
            + [b"%x\r\n%s\r\n" % (len(event), event)] * chunks + [b"0\r\n\r\n"])


class Client:
    """One keep-alive client connection to a Site."""

    def __init__(self, site: Any) -> None:
        addr = IPv4Address("TCP", "127.0.0.1", 40000)
        self.channel = site.buildProtocol(addr)
        self.transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.channel.makeConnection(self.transport)


REQUEST = (b"GET " + run.PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           b"User-Agent: bench\r\nAccept: */*\r\n\r\n")


def gatewaySite(clock: MemoryReactorClock, origins: OriginEndpoints, routes: int, tmp: Path,
                tracing: float | None = None) -> Any:
    from txgateway.config import parseConfig
    from txgateway.observe import Metrics
    from txgateway.service import GatewayService

    targets = ["http://127.0.0.1:9101", "http://127.0.0.1:9102", "http://127.0.0.1:9103"]
    text = run.gatewayConfig(8080, targets, routes, tmp / "access.log")
    if tracing is not None:
        text += f"tracing:\n  otlp: {{endpoint: 'http://127.0.0.1:4318'}}\n  sample: {tracing}\n"
    config = parseConfig(text)
    service = GatewayService(config, clock, clock=clock, metrics=Metrics())
    if tracing is not None:
        exporter = service.getServiceNamed("tracing")
        exporter.post = lambda body: succeed(200)
        exporter.startService()
    for cluster in service.gateway.runtime.clusters.values():
        # The gateway's own Agent and pool, connecting to the in-memory origins.
        cluster.agent._endpointFactory = origins  # type: ignore[attr-defined]
    service.gateway.state.ready = True
    return service.site


def referenceSite(clock: MemoryReactorClock, origins: OriginEndpoints) -> Any:
    import reference_proxy
    from twisted.web import server
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(clock, persistent=True)
    pool.maxPersistentPerHost = 1000
    pool.retryAutomatically = False
    targets = [b"http://127.0.0.1:9101", b"http://127.0.0.1:9102", b"http://127.0.0.1:9103"]
    site = server.Site(reference_proxy.Proxy(Agent.usingEndpointFactory(clock, origins, pool=pool), targets),
                       reactor=clock)
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


def timeSide(side: str, requests: int, rounds: int, routes: int, size: int, chunks: int = 0,
             tracing: float | None = None) -> dict[str, Any]:
    clock = MemoryReactorClock()
    origins = OriginEndpoints(streamResponse(size, chunks) if chunks else originResponse(size))
    with tempfile.TemporaryDirectory(prefix="txgw-inproc-") as tmp:
        site = (gatewaySite(clock, origins, routes, Path(tmp), tracing) if side == "gateway"
                else referenceSite(clock, origins))
        client = Client(site)

        def one() -> None:
            client.channel.dataReceived(REQUEST)
            origins.pump()
            clock.advance(0)

        for _ in range(200):  # warm up: pool filled, caches hot
            one()
        head = client.transport.value().split(b"\r\n\r\n", 1)[0]
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"{side}: unexpected response {client.transport.value()[:300]!r}")
        best = float("inf")
        for _ in range(rounds):
            client.transport.clear()
            gc.collect()
            t0 = time.process_time()
            for _ in range(requests):
                one()
            elapsed = time.process_time() - t0
            best = min(best, elapsed)
            if client.transport.value().count(b"HTTP/1.1 200 OK") != requests:
                raise SystemExit(f"{side}: not every request was answered 200")
    return {"side": side, "us_per_request": round(best / requests * 1e6, 2), "requests": requests,
            "rounds": rounds, "response_head": head.decode("latin-1")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--routes", type=int, default=20)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--chunks", type=int, default=0,
                        help="a chunked stream of this many chunks of --size bytes, each its own read (0: one plain response)")
    parser.add_argument("--side", choices=("gateway", "reference", "both"), default="both")
    parser.add_argument("--tracing", type=float, default=None, help="trace with this sample ratio (0.1, 1.0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per side")
    parser.add_argument("--show-response", action="store_true")
    args = parser.parse_args()
    sides = ("reference", "gateway") if args.side == "both" else (args.side,)
    results = {s: timeSide(s, args.requests, args.rounds, args.routes, args.size, args.chunks, args.tracing)
               for s in sides}
    for r in results.values():
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['side']:9}  {r['us_per_request']:7.2f} us/request (Python only, best of {r['rounds']})")
            if args.show_response:
                print(r["response_head"])
    if len(results) == 2 and not args.json:
        ratio = results["gateway"]["us_per_request"] / results["reference"]["us_per_request"]
        print(f"ratio      {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
