"""
A proxied request leaves no reference cycles behind.

Objects caught in a cycle are freed only by the garbage collector, whose
generation-0 passes then run every few dozen requests and stall every request
in flight; with no cycles, reference counting frees each request's objects as
soon as it is answered.  This drives keep-alive requests through the real
Site, resource tree, chain, forwarder, Agent and pool (L{txgateway.testing}),
with the origins in memory, and asks the collector what it found.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from txgateway.context import RequestContext
from txgateway.http.request import GatewayRequest
from txgateway.testing import GatewayFixture

CONFIG = """
server: {listen: "tcp:0"}
upstreams:
  app:
    targets: [http://127.0.0.1:9101, http://127.0.0.1:9102]
    balancer: least_connections
routes:
  - name: api
    match: {path_prefix: /api}
    upstream: app
    rate_limit: {rate: 100000/s, burst: 100000}
"""


class _Ok(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        return b"ok"


def _ours(o: Any, fixture: GatewayFixture) -> bool:
    """A request of this gateway, or its context."""
    if isinstance(o, RequestContext):
        o = o.request
    return isinstance(o, GatewayRequest) and getattr(o, "site", None) is fixture.service.site


class RequestCycles(SynchronousTestCase):
    def test_proxiedRequestsLeaveNoGarbage(self) -> None:
        """Keep-alive requests answered 200 leave nothing for the garbage collector to find."""
        origin = _Ok()
        gw = GatewayFixture.fromYAML(CONFIG, origins={"http://127.0.0.1:9101": origin, "http://127.0.0.1:9102": origin})
        codes = []

        def one() -> None:
            codes.append(gw.request(b"GET", b"http://gw.example/api/x").code)

        for _ in range(5):  # pool, caches and metric children made
            one()
        wasEnabled = gc.isenabled()
        gc.disable()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                one()
            gc.collect()
            # Only this gateway's objects: a collection can also find
            # other tests' garbage, released meanwhile by the log history.
            found = [type(o).__qualname__ for o in gc.garbage if _ours(o, gw)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            if wasEnabled:
                gc.enable()
        self.assertEqual(codes, [200] * 25)
        self.assertEqual(found, [])
