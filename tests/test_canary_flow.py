"""
Weighted splits and mirrors in the gateway (issue 23), in memory: the real
resource tree, forwarder, clusters and upstream client over GatewayFixture.
"""

from __future__ import annotations

import json
from random import Random
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txgateway.admin.api import AdminResource
from txgateway.admin.page import renderBody
from txgateway.canary.interfaces import Answer
from txgateway.canary.mirror import Mirror
from txgateway.canary.specs import MirrorSpec
from txgateway.config import parseConfig
from txgateway.mirroring import MirroringForwarder
from txgateway.testing import GatewayFixture

V1 = "http://v1.internal:8000"
V2 = "http://v2.internal:8000"


class Model(Resource):
    """An inference service: answers JSON naming its version, and remembers what it was sent."""

    isLeaf = True

    def __init__(self, version: str, score: float = 0.5, clock: MemoryReactorClock | None = None,
                 delay: float = 0.0) -> None:
        super().__init__()
        self.version = version
        self.score = score
        self.clock = clock
        self.delay = delay
        self.seen: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []

    def render(self, request: Request) -> Any:
        assert request.content is not None
        self.seen.append((request.method, request.uri, dict(request.requestHeaders.getAllRawHeaders()),
                          request.content.read()))
        request.setHeader(b"Content-Type", b"application/json")
        body = json.dumps({"version": self.version, "score": self.score, "meta": {"latency": len(self.seen)}}).encode()
        if self.clock is None or not self.delay:
            return body

        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)

        def answer() -> None:
            if not gone:  # the gateway gave up on a slow mirror and closed the connection
                request.write(body)
                request.finish()

        self.clock.callLater(self.delay, answer)
        return NOT_DONE_YET


UPSTREAMS = f"""
upstreams:
  model-v1: {{targets: [{V1}], retries: false}}
  model-v2: {{targets: [{V2}], retries: false}}
  dead: {{targets: [http://dead.internal:8000], retries: false}}
"""


def fixture(routes: str, **origins: Resource) -> GatewayFixture:
    return GatewayFixture.fromYAML(UPSTREAMS + "routes:\n" + routes,
                                   origins={V1: origins.get("v1", Model("v1")), V2: origins.get("v2", Model("v2"))})


def version(response: Any) -> str:
    return str(json.loads(response.body)["version"])


class SplitTests(SynchronousTestCase):
    SPLIT = """
  - name: predict
    match: {path_prefix: /predict}
    upstreams: [{name: model-v1, weight: 90}, {name: model-v2, weight: 10}]
"""

    def test_weightedSplitSharesAndUpstreamLabel(self) -> None:
        """A 90/10 split sends about a tenth to v2; metrics and access log name the upstream chosen."""
        gw = fixture(self.SPLIT)
        seen = [version(gw.request(b"GET", b"http://gw/predict")) for _ in range(400)]
        v2 = seen.count("v2")
        self.assertTrue(20 <= v2 <= 65, v2)  # 40 expected; about 4.5 standard deviations either side
        value = gw.service.metrics.registry.get_sample_value
        self.assertEqual(value("txgateway_http_requests_total",
                               {"route": "predict", "method": "GET", "status": "200", "upstream": "model-v2"}), v2)
        self.assertEqual(value("txgateway_http_requests_total",
                               {"route": "predict", "method": "GET", "status": "200", "upstream": "model-v1"}),
                         400 - v2)
        self.assertEqual(value("txgateway_split_weight", {"route": "predict", "upstream": "model-v2"}), 10)
        entries: list[dict[str, Any]] = []
        self.patch(gw.service.accessLog, "record", lambda c, d: entries.append(gw.service.accessLog.entry(c, d)))
        gw.request(b"GET", b"http://gw/predict")
        self.assertIn(entries[0]["upstream"], ("model-v1", "model-v2"))
        self.assertEqual(entries[0]["upstream_choice"], "weighted")

    def test_stickyKeyKeepsAClientOnOneVersion(self) -> None:
        gw = fixture(self.SPLIT + "    sticky: {key: 'header:X-User'}\n")
        for user in (b"alice", b"bob", b"carol", b"dave"):
            versions = {version(gw.request(b"GET", b"http://gw/predict", {b"X-User": [user]})) for _ in range(20)}
            self.assertEqual(len(versions), 1, user)

    def test_overrideFromTrustedAndUntrustedClients(self) -> None:
        """The fixture's client is 127.0.0.1: trusted by default, not when trusted_clients names others."""
        trusted = fixture(self.SPLIT + "    canary_override: {header: X-Canary}\n")
        for _ in range(20):
            self.assertEqual(version(trusted.request(b"GET", b"http://gw/predict", {b"X-Canary": [b"always"]})), "v2")
            self.assertEqual(version(trusted.request(b"GET", b"http://gw/predict",
                                                     {b"X-Canary": [b"model-v1"]})), "v1")
        untrusted = fixture(self.SPLIT + "    canary_override: {header: X-Canary, trusted_clients: [192.0.2.0/24]}\n")
        seen = [version(untrusted.request(b"GET", b"http://gw/predict", {b"X-Canary": [b"always"]}))
                for _ in range(100)]
        self.assertGreater(seen.count("v1"), 70)

    def test_retriesStayWithinTheChosenUpstream(self) -> None:
        """v2 is down: requests chosen for it fail (503/502), never fall over to v1."""
        gw = GatewayFixture.fromYAML(UPSTREAMS + "routes:\n" + self.SPLIT.replace("90", "50").replace("10}", "50}")
                                     .replace("model-v2", "dead"), origins={V1: Model("v1")})
        statuses = [gw.request(b"GET", b"http://gw/predict").code for _ in range(60)]
        self.assertTrue(0 < statuses.count(502) < 60, statuses)
        self.assertEqual(statuses.count(200) + statuses.count(502), 60)

    def test_runTimeWeightsSurviveAReloadThatKeepsTheUpstreams(self) -> None:
        gw = fixture(self.SPLIT)
        route = gw.service.gateway.runtime.routes.routes[0]
        route.canary.splitter.setSplit(route.canary.splitter.split.withWeights({"model-v1": 0, "model-v2": 1}))
        text = UPSTREAMS + "routes:\n" + self.SPLIT
        self.assertEqual(gw.service.reload(parseConfig(text + "    sticky: {key: client_ip}\n")), [])
        self.assertEqual({version(gw.request(b"GET", b"http://gw/predict")) for _ in range(10)}, {"v2"})
        self.assertEqual(gw.service.reload(parseConfig(text.replace("90", "100").replace("10}", "0}"))), [])
        self.assertEqual({version(gw.request(b"GET", b"http://gw/predict")) for _ in range(10)}, {"v1"})


class MirrorTests(SynchronousTestCase):
    def route(self, mirror: str) -> str:
        return f"""
  - name: predict
    match: {{path_prefix: /predict}}
    upstream: model-v1
    rate_limit: {{rate: 2/s, burst: 2}}
    mirror: {mirror}
"""

    def test_mirrorGetsACopyAndTheClientOnlyThePrimary(self) -> None:
        v1, v2 = Model("v1"), Model("v2")
        gw = fixture(self.route("{upstream: model-v2, percent: 100}"), v1=v1, v2=v2)
        r = gw.request(b"POST", b"http://gw/predict?x=1", {b"Authorization": [b"Bearer t"]}, b'{"input": 1}')
        gw.flush()
        self.assertEqual((r.code, version(r)), (200, "v1"))
        self.assertEqual(len(v2.seen), 1)
        method, uri, headers, body = v2.seen[0]
        self.assertEqual((method, uri, body), (b"POST", b"/predict?x=1", b'{"input": 1}'))
        self.assertEqual(headers[b"X-Txgateway-Mirror"], [b"1"])
        self.assertEqual(headers[b"X-Request-Id"], v1.seen[0][2][b"X-Request-Id"])
        report = gw.service.gateway.runtime.routes.routes[0].canary.mirror.report()
        self.assertEqual(report["sent"], 1)

    def test_mirrorDoesNotConsumeTheRateLimit(self) -> None:
        """burst 2: two client requests pass, each mirrored, and the mirror took none of the tokens."""
        v2 = Model("v2")
        gw = fixture(self.route("{upstream: model-v2, percent: 100}"), v2=v2)
        codes = [gw.request(b"GET", b"http://gw/predict").code for _ in range(3)]
        gw.flush()
        self.assertEqual(codes, [200, 200, 429])
        self.assertEqual(len(v2.seen), 2)

    def test_comparisonWithinAndOutsideTolerance(self) -> None:
        compare = "{json: {ignore: ['$.meta.latency', '$.version'], absolute: 0.01}}"
        close = fixture(self.route("{upstream: model-v2, compare: " + compare + "}"), v2=Model("v2", 0.505))
        close.request(b"GET", b"http://gw/predict")
        close.flush()
        mirror = close.service.gateway.runtime.routes.routes[0].canary.mirror
        self.assertEqual((mirror.report()["compared"], mirror.report()["mismatched"]), (1, 0))

        far = fixture(self.route("{upstream: model-v2, compare: " + compare + "}"), v2=Model("v2", 0.9))
        far.request(b"GET", b"http://gw/predict", {b"Authorization": [b"Bearer secret"]})
        far.flush()
        report = far.service.gateway.runtime.routes.routes[0].canary.mirror.report()
        self.assertEqual((report["compared"], report["mismatched"]), (1, 1))
        sample = report["samples"][0]
        self.assertEqual(sample["differences"], ["$.score"])
        self.assertNotIn("secret", json.dumps(sample))
        self.assertEqual(far.service.metrics.registry.get_sample_value(
            "txgateway_mirror_mismatches_total", {"route": "predict"}), 1)

    def test_deadAndSlowMirrorsNeverTouchThePrimary(self) -> None:
        dead = fixture(self.route("{upstream: dead}"))
        self.assertEqual(version(dead.request(b"GET", b"http://gw/predict")), "v1")
        dead.flush()
        self.assertEqual(dead.service.gateway.runtime.routes.routes[0].canary.mirror.report()["failed"], 1)

        clock = MemoryReactorClock()
        gw = GatewayFixture.fromYAML(UPSTREAMS + "routes:\n" + self.route("{upstream: model-v2, timeout: 1s}"),
                                     origins={V1: Model("v1"), V2: Model("v2", clock=clock, delay=3)}, clock=clock)
        self.assertEqual(version(gw.request(b"GET", b"http://gw/predict")), "v1")  # answered without time passing
        clock.advance(1)
        gw.flush()
        report = gw.service.gateway.runtime.routes.routes[0].canary.mirror.report()
        self.assertEqual((report["timed_out"], report["in_flight"]), (1, 0), report)
        clock.advance(5)
        gw.flush()

    def test_shutdownLeavesNoTimer(self) -> None:
        clock = MemoryReactorClock()
        gw = GatewayFixture.fromYAML(UPSTREAMS + "routes:\n" + self.route("{upstream: model-v2, timeout: 5s}"),
                                     origins={V1: Model("v1"), V2: Model("v2", clock=clock, delay=3)}, clock=clock)
        gw.request(b"GET", b"http://gw/predict")
        gw.flush()
        gw.service.gateway.runtime.routes.routes[0].canary.mirror.stop()
        self.assertEqual(gw.service.gateway.runtime.routes.routes[0].canary.mirror.report()["in_flight"], 0)


class MirroringForwarderTests(SynchronousTestCase):
    """The wrapper alone, around a fake primary: the order of events is the promise."""

    def test_copyLeavesAfterThePrimaryWasSentInALaterTurn(self) -> None:
        events: list[str] = []
        clock = Clock()

        def send(request: Any) -> Deferred[Answer]:
            events.append("copy sent")
            return succeed(Answer(200))

        class Primary:
            def fetch(self, context: Any, method: Any = None, extraHeaders: Any = None) -> Deferred[Any]:
                events.append("primary sent")
                context.upstream = "model-v1"
                return Deferred()

        class Messages:
            def upstreamHeaders(self, context: Any, endpoint: Any) -> Any:
                return Headers({b"X-Request-Id": [b"r1"]})

        class Request:
            content = None

        class Context:
            request = Request()
            method = b"POST"
            upstreamPath = "/predict"
            query = None
            requestId = "r1"
            upstream = None

        mirror = Mirror("predict", MirrorSpec("model-v2"), send, clock, Random(0))
        forwarder = MirroringForwarder(Primary(), mirror, Messages())  # type: ignore[arg-type]
        forwarder.fetch(Context())  # type: ignore[arg-type]
        self.assertEqual(events, ["primary sent"])
        clock.advance(0)
        self.assertEqual(events, ["primary sent", "copy sent"])

    def test_largeBodiesAreSkippedAndTheSplitsOwnChoiceIsNotShadowed(self) -> None:
        v2 = Model("v2")
        gw = fixture("""
  - name: predict
    match: {path_prefix: /predict}
    upstreams: [{name: model-v1, weight: 1}, {name: model-v2, weight: 1}]
    canary_override: {header: X-Canary}
    mirror: {upstream: model-v2, max_body: 10B}
""", v2=v2)
        gw.request(b"POST", b"http://gw/predict", {b"X-Canary": [b"model-v1"]}, b"x" * 11)
        gw.request(b"POST", b"http://gw/predict", {b"X-Canary": [b"model-v2"]}, b"x" * 5)
        gw.request(b"POST", b"http://gw/predict", {b"X-Canary": [b"model-v1"]}, b"x" * 10)
        gw.flush()
        report = gw.service.gateway.runtime.routes.routes[0].canary.mirror.report()
        self.assertEqual((report["skipped"], report["sent"]), (1, 1))
        self.assertEqual([s[3] for s in v2.seen], [b"x" * 5, b"x" * 10])  # the chosen request, then the copy


# -- the admin side: PUT /api/routes/{route}/split, GET /api/mirrors, the status page

ROUTES = """
  - name: predict
    match: {path_prefix: /predict}
    upstreams: [{name: model-v1, weight: 95}, {name: model-v2, weight: 5}]
  - name: score
    match: {path_prefix: /score}
    upstream: model-v1
    mirror: {upstream: model-v2, compare: {json: {ignore: [$.version, $.meta]}}}
"""


class CanaryAdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = GatewayFixture.fromYAML(UPSTREAMS + "routes:\n" + ROUTES,
                                          origins={V1: Model("v1"), V2: Model("v2", score=0.9)})
        self.stub = StubTreq(AdminResource(self.gw.service, self.gw.clock, lambda: "tok"))

    def call(self, method: str, path: str, body: Any = None, token: str = "tok") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
        d = self.stub.request(method, "http://127.0.0.1:8090" + path, data=data,
                              headers={"Authorization": f"Bearer {token}"})
        self.stub.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(treq.content(response)))

    def test_putChangesTheWeightsAtOnce(self) -> None:
        code, report = self.call("PUT", "/api/routes/predict/split", {"weights": {"model-v1": 0, "model-v2": 100}})
        self.assertEqual(code, 200, report)
        self.assertEqual([u["weight"] for u in report["upstreams"]], [0, 100])
        self.assertEqual({version(self.gw.request(b"GET", b"http://gw/predict")) for _ in range(20)}, {"v2"})
        self.assertEqual(self.gw.service.metrics.registry.get_sample_value(
            "txgateway_split_weight", {"route": "predict", "upstream": "model-v2"}), 100)
        self.assertEqual(self.call("GET", "/api/routes/predict/split")[1]["upstreams"][1]["chosen"], 20)

    def test_refusals(self) -> None:
        self.assertEqual(self.call("PUT", "/api/routes/predict/split", {"weights": {"model-v3": 5}})[0], 400)
        self.assertEqual(self.call("PUT", "/api/routes/predict/split", {"weights": {"model-v1": 0, "model-v2": 0}})[0],
                         400)
        self.assertEqual(self.call("PUT", "/api/routes/predict/split", b"not json")[0], 400)
        self.assertEqual(self.call("PUT", "/api/routes/nope/split", {"weights": {"model-v1": 1}})[0], 404)
        self.assertEqual(self.call("PUT", "/api/routes/score/split", {"weights": {"model-v1": 1}})[0], 404)
        self.assertEqual(self.call("POST", "/api/routes/predict/split", {"weights": {"model-v1": 1}})[0], 405)
        self.assertEqual(self.call("PUT", "/api/routes/predict/split", {"weights": {"model-v1": 1}}, "bad")[0], 401)
        code, report = self.call("GET", "/api/routes/predict/split")
        self.assertEqual([u["weight"] for u in report["upstreams"]], [95, 5])

    def test_mirrorsReportAndStatusPage(self) -> None:
        self.gw.request(b"POST", b"http://gw/score", body=b'{"x": 1}')
        self.gw.flush()
        code, doc = self.call("GET", "/api/mirrors")
        self.assertEqual(code, 200)
        m = doc["mirrors"]["score"]
        self.assertEqual({k: m[k] for k in ("sent", "dropped", "compared", "mismatched")},
                         {"sent": 1, "dropped": 0, "compared": 1, "mismatched": 1})
        self.assertEqual(m["samples"][0]["differences"], ["$.score"])
        for _ in range(10):
            self.gw.request(b"GET", b"http://gw/predict")
        status = self.call("GET", "/api/status")[1]
        predict = next(r for r in status["routes"] if r["name"] == "predict")
        self.assertTrue(predict["split_text"].startswith("model-v1 95 % ("), predict["split_text"])
        page = renderBody(status)
        self.assertIn("<h2>Mirrors</h2>", page)
        self.assertIn('<span class="diff">  &quot;score&quot;: 0.9', page)
        self.assertIn('<span class="diff">  &quot;score&quot;: 0.5', page)

    def test_workersRefuseARunTimeSplit(self) -> None:
        """Under server.workers the PUT would reach one worker of several: 409, change weights by reload."""
        self.gw.service.workerId = 1
        code, body = self.call("PUT", "/api/routes/predict/split", {"weights": {"model-v1": 50, "model-v2": 50}})
        self.assertEqual((code, body["error"]), (409, "with server.workers > 1, change weights by reload"))
        self.assertEqual([u["weight"] for u in self.call("GET", "/api/routes/predict/split")[1]["upstreams"]], [95, 5])
