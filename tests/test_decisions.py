"""
C{logging.level: debug} shows each request's routing and target decisions
(#18 item 11): the lines an operator reads to learn why a request went where
it went, or nowhere.  Driven through L{txgateway.testing}, with the log
events captured from Twisted's global log publisher.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from txgateway.testing import GatewayFixture

CONFIG = """
logging: {{level: {level}}}
upstreams:
  app:
    balancer: round_robin
    targets: [http://dead:8000, http://live:8000]
    retries: {{attempts: 2, backoff: 0s}}
  gone:
    targets: [http://dead:8000]
    retries: {{attempts: 1, backoff: 0s}}
  sick:
    targets: [http://sick:8000]
  flaky:
    balancer: round_robin
    targets: [http://sick:8000, http://live:8000]
    retries: {{attempts: 1, backoff: 0s, on: [503]}}
    circuit_breaker: {{failures: 1, open_for: 30s}}
routes:
  - {{name: dead, match: {{path_prefix: /dead}}, upstream: gone}}
  - {{name: sick, match: {{path_prefix: /sick}}, upstream: sick}}
  - {{name: flaky, match: {{path_prefix: /flaky}}, upstream: flaky}}
  - {{name: api, match: {{path_prefix: /api}}, upstream: app}}
  - {{name: admin, match: {{path: /admin, methods: [POST]}}, upstream: app}}
"""


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class _Unavailable(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(503)
        return b"down"


def _fixture(level: str) -> GatewayFixture:
    # dead:8000 has no origin: connecting to it is refused, as to a dead backend.
    return GatewayFixture.fromYAML(CONFIG.format(level=level),
                                   origins={"http://live:8000": _Hello(), "http://sick:8000": _Unavailable()})


class DecisionLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def debugLines(self, requestId: bytes | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The debug events about requests (those carrying a request_id), formatted."""
        out = []
        for e in self.events:
            if e.get("log_level") is LogLevel.debug and "request_id" in e and (
                    requestId is None or e["request_id"] == requestId.decode()):
                out.append((formatEvent(e), e))
        return out

    def test_routeAndTargetsAndRetry(self) -> None:
        """
        One request, every decision: the route and what it matched, the
        target the balancer chose, the failed try and why it is retried,
        and the second choice with why the first target was passed over.
        """
        fixture = _fixture("debug")
        # Round robin from the first target: the dead one is tried first.
        response = fixture.request(b"GET", b"http://gw.example/api/users", {b"x-request-id": [b"req-1"]})
        self.assertEqual((response.code, response.body), (200, b"hello"))
        lines = self.debugLines(b"req-1")
        texts = [t for t, _ in lines]
        self.assertEqual(len(texts), 4, texts)
        self.assertIn("route api (path_prefix=/api) to upstream app, upstream path /api/users", texts[0])
        self.assertIn("attempt 1 on upstream app: target http://dead:8000 chosen by round_robin", texts[1])
        self.assertIn("http://live:8000: not picked by the balancer", texts[1])
        self.assertIn("attempt 1 on http://dead:8000 failed: connect_failure; retrying in 0s", texts[2])
        self.assertIn("attempt 2 on upstream app: target http://live:8000 chosen by round_robin", texts[3])
        self.assertRegex(texts[3], r"http://dead:8000: (tried already for this request|ejected by passive health)")
        # Each line carries the fields the JSON log copies, so they can be found by request id.
        for _, event in lines:
            self.assertEqual((event["request_id"], event["route"], event["upstream"]), ("req-1", "api", "app"))
        self.assertEqual([e["target"] for _, e in lines[1:]],
                         ["http://dead:8000", "http://dead:8000", "http://live:8000"])

    def test_whyNotRetried(self) -> None:
        """A failure that is not retried says why: not a retry condition, or the attempts used up."""
        fixture = _fixture("debug")
        response = fixture.request(b"GET", b"http://gw.example/sick", {b"x-request-id": [b"req-2"]})
        self.assertEqual(response.code, 503)
        texts = [t for t, _ in self.debugLines(b"req-2")]
        self.assertIn("attempt 1 on http://sick:8000 failed: status 503; not retrying: 503 is not a retry "
                      "condition for GET (retries.on, retries.methods)", texts[-1])
        response = fixture.request(b"GET", b"http://gw.example/dead", {b"x-request-id": [b"req-5"]})
        self.assertEqual(response.code, 502)
        texts = [t for t, _ in self.debugLines(b"req-5")]
        self.assertIn("attempt 1 on http://dead:8000 failed: connect_failure; retrying in 0s", texts[2])
        self.assertIn("attempt 2 on upstream gone: target http://dead:8000 chosen", texts[3])
        self.assertIn("attempt 2 on http://dead:8000 failed: connect_failure; not retrying: "
                      "retries.attempts (1) used up", texts[4])

    def test_breakerSkip(self) -> None:
        """A target passed over because its circuit breaker is open is named, with that reason."""
        fixture = _fixture("debug")
        self.assertEqual(fixture.request(b"GET", b"http://gw.example/flaky", {b"x-request-id": [b"r1"]}).code, 200)
        texts = [t for t, _ in self.debugLines(b"r1")]
        self.assertIn("attempt 1 on http://sick:8000 failed: status 503; retrying in 0s", texts[2])
        self.assertEqual(fixture.request(b"GET", b"http://gw.example/flaky", {b"x-request-id": [b"r2"]}).code, 200)
        texts = [t for t, _ in self.debugLines(b"r2")]
        self.assertIn("target http://live:8000 chosen by round_robin (others: http://sick:8000: circuit breaker open)",
                      texts[1])

    def test_noRoute(self) -> None:
        """A request no route takes says why each route did not."""
        fixture = _fixture("debug")
        response = fixture.request(b"GET", b"http://gw.example/other", {b"x-request-id": [b"req-3"]})
        self.assertEqual(response.code, 404)
        texts = [t for t, _ in self.debugLines(b"req-3")]
        self.assertEqual(len(texts), 1, texts)
        self.assertIn("GET gw.example/other: no route: no route matches (", texts[0])
        self.assertIn("api: path is not under /api", texts[0])
        self.assertIn("admin: path is not /admin", texts[0])
        self.assertIn("dead: path is not under /dead", texts[0])
        self.assertIn("sick: path is not under /sick", texts[0])
        self.assertIn("flaky: path is not under /flaky", texts[0])

    def test_methodNotAllowed(self) -> None:
        fixture = _fixture("debug")
        response = fixture.request(b"GET", b"http://gw.example/admin", {b"x-request-id": [b"req-4"]})
        self.assertEqual(response.code, 405)
        texts = [t for t, _ in self.debugLines(b"req-4")]
        self.assertEqual(len(texts), 1, texts)
        self.assertIn("no route: method not allowed; routes for this path take POST", texts[0])

    def test_nothingAtInfo(self) -> None:
        """
        At info no decision event is even made: the choice was taken when
        the config was built, not by formatting and dropping per request.
        """
        fixture = _fixture("info")
        self.assertEqual(fixture.request(b"GET", b"http://gw.example/api/users").code, 200)
        self.assertEqual(fixture.request(b"GET", b"http://gw.example/other").code, 404)
        self.assertEqual(self.debugLines(), [])
        self.assertFalse(fixture.service.gateway.runtime.debug)
        self.assertFalse(fixture.service.gateway.runtime.forwarder.attempts.debug)
