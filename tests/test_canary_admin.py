"""
The admin side of issue 23: PUT /api/routes/{route}/split, GET /api/mirrors, the status page's splits and samples.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from txgateway.admin.api import AdminResource
from txgateway.admin.page import renderBody
from txgateway.testing import GatewayFixture

from .test_canary_flow import UPSTREAMS, V1, V2, Model, version

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
