"""
The bare-Agent reference proxy: what a hand-written Twisted proxy costs.

twisted.web Site + Agent + a persistent HTTPConnectionPool, round robin over
the targets, streaming the body back.  No features.  The benchmark runs it in
the same session as txgateway so results are ratios, robust to a noisy machine.

python bench/reference_proxy.py PORT TARGET_URL [TARGET_URL ...]
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Protocol
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"proxy-connection", b"trailer"}


class Body(Protocol):
    def __init__(self, request: Any) -> None:
        self.request = request

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.request.finished and not self.request._disconnected:
            self.request.finish()


class Proxy(Resource):
    isLeaf = True

    def __init__(self, agent: Agent, targets: list[bytes]) -> None:
        super().__init__()
        self.agent = agent
        self.targets = itertools.cycle(targets)

    def render(self, request: Any) -> Any:
        headers = Headers()
        for k, v in request.requestHeaders.getAllRawHeaders():
            if k.lower() not in HOP:
                headers.setRawHeaders(k, v)
        d = self.agent.request(request.method, next(self.targets) + request.uri, headers, None)

        def got(response: Any) -> None:
            request.setResponseCode(response.code)
            for k, v in response.headers.getAllRawHeaders():
                if k.lower() not in HOP:
                    request.responseHeaders.setRawHeaders(k, v)
            if response.length is not UNKNOWN_LENGTH:
                request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % response.length])
            response.deliverBody(Body(request))

        def failed(f: Any) -> None:
            request.setResponseCode(502)
            request.finish()

        d.addCallbacks(got, failed)
        return server.NOT_DONE_YET


def main() -> None:
    port = int(sys.argv[1])
    targets = [t.encode() for t in sys.argv[2:]]
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1000  # as txgateway's bench config (pool.max_per_target)
    pool.retryAutomatically = False
    site = server.Site(Proxy(Agent(reactor, pool=pool), targets))
    site.log = lambda request: None  # type: ignore[method-assign]
    TCP4ServerEndpoint(reactor, port, backlog=2048, interface="127.0.0.1").listen(site)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
