"""
txgateway.testing, the public in-memory gateway: what it promises its users.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txgateway.testing import GatewayFixture

CONFIG = """
upstreams:
  app:
    targets: [http://app.internal:8000]
    timeouts: {response: 10s}
    retries: false
  gone:
    targets: [http://gone.internal:8000]
    retries: false
routes:
  - {name: api, match: {path_prefix: /api}, upstream: app}
  - {name: gone, match: {path_prefix: /gone}, upstream: gone}
"""


class Echo(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"X-Origin", b"app")
        assert request.content is not None
        return request.method + b" " + request.uri + b" " + request.content.read()


class Late(Resource):
    """Answers C{delay} seconds of the fixture's clock later."""

    isLeaf = True

    def __init__(self, clock: MemoryReactorClock, delay: float) -> None:
        super().__init__()
        self.clock = clock
        self.delay = delay

    def render(self, request: Request) -> object:
        def answer() -> None:
            request.write(b"late")
            request.finish()

        self.clock.callLater(self.delay, answer)
        return NOT_DONE_YET


class GatewayFixtureTests(SynchronousTestCase):
    def test_requestReachesTheOriginAndTheClientSeesItsAnswer(self) -> None:
        """Method, path, query and body reach the origin; status, headers and body come back, with the gateway's own."""
        fixture = GatewayFixture.fromYAML(CONFIG, origins={"http://app.internal:8000": Echo()})
        response = fixture.request(b"POST", b"http://gw.example/api/items?x=1", {b"X-Request-ID": [b"t-1"]},
                                   body=b"payload")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"POST /api/items?x=1 payload")
        self.assertEqual(response.header(b"x-origin"), b"app")
        self.assertEqual(response.header("X-Request-ID"), b"t-1")

    def test_targetWithoutOriginRefuses(self) -> None:
        """A target with no in-memory origin is a dead backend: 502."""
        fixture = GatewayFixture.fromYAML(CONFIG, origins={"http://app.internal:8000": Echo()})
        response = fixture.request(b"GET", b"http://gw.example/gone/x")
        self.assertEqual(response.code, 502)
        self.assertIn(b'"reason":"connect_failure"', response.body)

    def test_timeMovesOnlyWithTheClock(self) -> None:
        """An answer that waits on time arrives once the test advances the clock."""
        clock = MemoryReactorClock()
        fixture = GatewayFixture.fromYAML(CONFIG, origins={"http://app.internal:8000": Late(clock, 5)}, clock=clock)
        d = fixture.requestDeferred(b"GET", b"http://gw.example/api/x")
        self.assertNoResult(d)
        clock.advance(5)
        fixture.flush()
        self.assertEqual(self.successResultOf(d).body, b"late")

    def test_upstreamTimeoutSeenByTheClient(self) -> None:
        """An origin slower than timeouts.response gives the client a 504 when the clock reaches it."""
        clock = MemoryReactorClock()
        fixture = GatewayFixture.fromYAML(CONFIG, origins={"http://app.internal:8000": Late(clock, 60)}, clock=clock)
        d = fixture.requestDeferred(b"GET", b"http://gw.example/api/x")
        clock.advance(10)
        fixture.flush()
        self.assertEqual(self.successResultOf(d).code, 504)

    def test_requestWithoutAnAnswerYetSaysSo(self) -> None:
        """request() refuses to wait for time to pass: it says to advance the clock."""
        clock = MemoryReactorClock()
        fixture = GatewayFixture.fromYAML(CONFIG, origins={"http://app.internal:8000": Late(clock, 5)}, clock=clock)
        with self.assertRaises(AssertionError) as caught:
            fixture.request(b"GET", b"http://gw.example/api/x")
        self.assertIn("advance the clock", str(caught.exception))
