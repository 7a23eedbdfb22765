"""
Issue 24 in the forward path (txgateway.protection), end to end in memory:
admission before the lease, shedding with 503 and Retry-After, priority,
micro-batching, coalescing, and controllers across reloads.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.protecting import Held, pending, settle
from txgateway.admin.page import renderBody
from txgateway.admin.status import StatusReport
from txgateway.config import ConfigError, parseConfig
from txgateway.testing import FixtureResponse, GatewayFixture

ORIGIN = "http://model.internal:8000"


def limited(extra: str = "", queue: str = "{size: 1, max_wait: 2s}", routes: str = "") -> str:
    return f"""
upstreams:
  model:
    targets: [{ORIGIN}]
    timeouts: {{response: 30s}}
    retries: false
    concurrency:
      limit: 1
      queue: {queue}
{extra}
routes:
  - {{name: predict, match: {{path_prefix: /p}}, upstream: model}}
{routes}
"""


class AdmissionTests(SynchronousTestCase):
    def test_overLimitQueuesThenShedsWith503AndRetryAfter(self) -> None:
        """One at the backend, one queued, the third shed before it reaches the backend."""
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(), origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        first, second, third = pending(fixture), pending(fixture), pending(fixture)
        self.assertEqual(len(origin.seen), 1)
        self.assertEqual((first, second), ([], []))
        shed: FixtureResponse = third[0]
        self.assertEqual(shed.code, 503)
        self.assertGreaterEqual(int(shed.header(b"retry-after") or b"0"), 1)
        self.assertEqual(json.loads(shed.body)["reason"], "shed_queue_full")
        origin.answer()
        fixture.flush()
        self.assertEqual(first[0].code, 200)
        self.assertEqual(len(origin.seen), 2)  # the queued one went in as the slot freed
        origin.answer()
        fixture.flush()
        self.assertEqual(second[0].code, 200)
        text = fixture.service.metrics.render().decode()
        self.assertIn('txgateway_shed_total{reason="queue_full",upstream="model"} 1.0', text)
        self.assertIn('txgateway_upstream_concurrency_limit{upstream="model"} 1.0', text)

    def test_waitRunsOut(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(), origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        pending(fixture)
        second = pending(fixture)
        fixture.clock.advance(2.1)
        fixture.flush()
        self.assertEqual(second[0].code, 503)
        self.assertEqual(json.loads(second[0].body)["reason"], "shed_max_wait")
        self.assertEqual(len(origin.seen), 1)

    def test_priorityClassesGoFirst(self) -> None:
        """A paid route's waiter is let in before a free one that queued earlier."""
        extra = "      priority: {classes: [paid, free], route: {paid: paid}}"
        routes = "  - {name: paid, match: {path_prefix: /q}, upstream: model}"
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(extra=extra, queue="{size: 5, max_wait: 10s}", routes=routes),
                                          origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        pending(fixture, path=b"/p/hold")
        pending(fixture, path=b"/p/free")
        pending(fixture, path=b"/q/paid")
        for _ in range(3):
            origin.answer()
            fixture.flush()
        self.assertEqual([p for _, p, _ in origin.seen], [b"/p/hold", b"/q/paid", b"/p/free"])

    def test_clientGoneLeavesTheQueue(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(), origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        pending(fixture)
        d = fixture.requestDeferred(b"GET", b"http://gw.example/p")
        d.addErrback(lambda _: None)
        controller = fixture.service.gateway.runtime.clusters["model"].admission
        self.assertEqual(controller.queued, 1)
        d.cancel()  # the client hangs up
        fixture.flush()
        self.assertEqual((controller.queued, controller.cancelled), (0, 1))
        origin.answer()
        fixture.flush()
        self.assertEqual(len(origin.seen), 1)

    def test_reloadKeepsTheQueue(self) -> None:
        """Same spec: the same controller; a new queue size: a new one that took over the waiter."""
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(queue="{size: 3, max_wait: 10s}"), origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        service = fixture.service
        before = service.gateway.runtime.clusters["model"].admission
        pending(fixture)
        queued = pending(fixture)
        self.assertEqual(service.reload(parseConfig(limited(queue="{size: 3, max_wait: 10s}"))), [])
        self.assertIs(service.gateway.runtime.clusters["model"].admission, before)
        self.assertEqual(service.reload(parseConfig(limited(queue="{size: 9, max_wait: 10s}"))), [])
        after = service.gateway.runtime.clusters["model"].admission
        self.assertIsNot(after, before)
        self.assertEqual((after.queued, after.inFlight), (1, 1))
        origin.answer()
        fixture.flush()
        origin.answer()
        fixture.flush()
        self.assertEqual(queued[0].code, 200)
        self.assertEqual(after.inFlight, 0)


BATCH = f"""
upstreams:
  model:
    targets: [{ORIGIN}]
    timeouts: {{response: 30s}}
    retries: false
routes:
  - name: predict
    match: {{path: /predict}}
    upstream: model
    batch: {{target_path: /batch, max_size: 3, max_wait: 5ms, envelope: instances}}
"""


class BatchingTests(SynchronousTestCase):
    def post(self, fixture: GatewayFixture, value: Any) -> list[Any]:
        return pending(fixture, b"POST", b"/predict", json.dumps(value).encode(),
                       {b"content-type": [b"application/json"]})

    def test_itemsGoAsOneCallAndComeBackInOrder(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(BATCH, origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        clients = [self.post(fixture, {"x": i}) for i in range(4)]
        fixture.clock.advance(0.005)
        fixture.flush()
        self.assertEqual([(m, p) for m, p, _ in origin.seen], [(b"POST", b"/batch"), (b"POST", b"/batch")])
        self.assertEqual([json.loads(b) for _, _, b in origin.seen],
                         [{"instances": [{"x": 0}, {"x": 1}, {"x": 2}]}, {"instances": [{"x": 3}]}])
        origin.answer(json.dumps({"predictions": [10, 11, 12]}).encode())
        origin.answer(json.dumps({"predictions": [13]}).encode())
        fixture.flush()
        self.assertEqual([json.loads(c[0].body) for c in clients], [10, 11, 12, 13])
        text = fixture.service.metrics.render().decode()
        self.assertIn('txgateway_batch_size_count{route="predict"} 2.0', text)

    def test_wrongCountIs502ForEachClient(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(BATCH, origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        clients = [self.post(fixture, i) for i in range(2)]
        fixture.clock.advance(0.005)
        fixture.flush()
        origin.answer(json.dumps({"predictions": [1]}).encode())
        fixture.flush()
        self.assertEqual([c[0].code for c in clients], [502, 502])
        self.assertIn("answered with 1 results", json.loads(clients[0][0].body)["error"])

    def test_onErrorSingleSendsEachClientsOwnRequest(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(BATCH.replace("envelope: instances", "on_error: single"),
                                          origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        clients = [self.post(fixture, i) for i in range(2)]
        fixture.clock.advance(0.005)
        fixture.flush()
        origin.answer(b"overloaded", code=500)
        fixture.flush()
        self.assertEqual([(p, b) for _, p, b in origin.seen], [(b"/batch", b"[0,1]"), (b"/predict", b"0"),
                                                              (b"/predict", b"1")])
        origin.answer(b"[0]")
        origin.answer(b"[1]")
        fixture.flush()
        self.assertEqual([(c[0].code, c[0].body) for c in clients], [(200, b"[0]"), (200, b"[1]")])
        self.assertIn('txgateway_batch_failures_total{kind="failed",route="predict"} 1.0',
                      fixture.service.metrics.render().decode())

    def test_notJSONIsABadRequest(self) -> None:
        fixture = GatewayFixture.fromYAML(BATCH, origins={ORIGIN: Held()})
        got = pending(fixture, b"POST", b"/predict", b"{nope", {b"content-type": [b"application/json"]})
        self.assertEqual(got[0].code, 400)


COALESCE = f"""
upstreams:
  model:
    targets: [{ORIGIN}]
    timeouts: {{response: 30s}}
    retries: false
routes:
  - {{name: predict, match: {{path: /predict}}, upstream: model, coalesce: true, idempotent_post: true}}
"""


class CoalescingTests(SynchronousTestCase):
    def test_identicalPostsGoOnce(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(COALESCE, origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        clients = [pending(fixture, b"POST", b"/predict", b'{"q": 1}') for _ in range(5)]
        other = pending(fixture, b"POST", b"/predict", b'{"q": 2}')
        self.assertEqual(len(origin.seen), 2)
        origin.answer(b'{"a": 1}')
        origin.answer(b'{"a": 2}')
        fixture.flush()
        self.assertEqual({c[0].body for c in clients}, {b'{"a": 1}'})
        self.assertEqual(other[0].body, b'{"a": 2}')
        self.assertEqual(len({c[0].header(b"x-request-id") for c in clients}), 5)
        self.assertIn('txgateway_coalesced_total{route="predict"} 4.0', fixture.service.metrics.render().decode())


class Big(Resource):
    """2.1 MB of body with no Content-Length (chunked), as a stream or a download is."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.waiting: list[Request] = []

    def render(self, request: Request) -> object:
        self.calls += 1
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self) -> None:
        request = self.waiting.pop(0)
        for i in range(3):
            request.write(bytes([65 + i]) * 700_000)
        request.finish()


class CoalescingLimitsTests(SynchronousTestCase):
    def test_aBodyOverTheBoundGoesWholeToItsRequestAndOthersFetchTheirOwn(self) -> None:
        origin = Big()
        fixture = GatewayFixture.fromYAML(COALESCE.replace("model.internal", "big.internal"),
                                          origins={"http://big.internal:8000": origin})
        first = pending(fixture, b"GET", b"/predict")
        second = pending(fixture, b"GET", b"/predict")
        self.assertEqual(origin.calls, 1)  # the second joined the first's flight
        origin.answer()
        fixture.flush()
        expected = b"A" * 700_000 + b"B" * 700_000 + b"C" * 700_000
        self.assertEqual((first[0].code, first[0].body == expected), (200, True))
        self.assertEqual(origin.calls, 2)  # the answer could not be shared: the second fetched its own
        origin.answer()
        fixture.flush()
        self.assertEqual((second[0].code, second[0].body == expected), (200, True))
        lease = fixture.service.gateway.runtime.clusters["model"].endpoints[0]
        self.assertEqual(lease.inFlight, 0)


class StatusTests(SynchronousTestCase):
    def test_upstreamLimitAndQueueOnTheStatusPage(self) -> None:
        """/api/upstreams gives the limit, in flight, queue and sheds; the page says them in one line."""
        extra = "      priority: {classes: [paid, free], route: {paid: paid}}"
        routes = "  - {name: paid, match: {path_prefix: /q}, upstream: model}"
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(extra=extra, queue="{size: 1, max_wait: 10s}", routes=routes),
                                          origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        pending(fixture)
        pending(fixture)
        pending(fixture)
        report = StatusReport(fixture.service, fixture.clock)
        [model] = report.upstreams()
        self.assertEqual(model["concurrency"] | {"queued": None}, {
            "mode": "fixed", "limit": 1, "min": None, "max": None, "in_flight": 1, "queued": None,
            "queue_size": 1, "max_wait_ms": 10000.0, "shed": {"queue_full": 1, "max_wait": 0, "stopped": 0},
            "min_rtt_ms": None, "probing": False, "per_target": None})
        self.assertEqual(model["concurrency"]["queued"], {"paid": 0, "free": 1})
        page = renderBody(report.status())
        self.assertIn("limit 1 (fixed) · in flight 1 · queued 1 (paid 0, free 1) · shed 1 (queue_full 1)", page)


class Status503(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, request: Request) -> bytes:
        self.calls += 1
        request.setResponseCode(503)
        return b"busy"


class Ok(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, request: Request) -> bytes:
        self.calls += 1
        request.setHeader(b"cache-control", b"max-age=60")
        return b"ok"


OTHER = "http://model2.internal:8000"


class OrderingTests(SynchronousTestCase):
    """Where admission sits: after the cache, before the lease, once per request."""

    def controller(self, fixture: GatewayFixture) -> Any:
        return fixture.service.gateway.runtime.clusters["model"].admission

    def test_aRetryKeepsItsPermit(self) -> None:
        yaml = f"""
upstreams:
  model:
    targets: [{ORIGIN}, {OTHER}]
    retries: {{attempts: 1, on: [503], backoff: 0s}}
    concurrency: {{limit: 1, queue: {{size: 0}}}}
routes:
  - {{name: predict, match: {{path_prefix: /p}}, upstream: model}}
"""
        first, second = Status503(), Ok()
        fixture = GatewayFixture.fromYAML(yaml, origins={ORIGIN: first, OTHER: second})
        response = fixture.request(b"GET", b"http://gw.example/p")
        self.assertEqual((response.code, first.calls + second.calls), (200, 2))
        controller = self.controller(fixture)
        self.assertEqual((controller.admitted, controller.inFlight, sum(controller.shed.values())), (1, 0, 0))

    def test_aCacheHitTakesNoPermit(self) -> None:
        yaml = f"""
upstreams:
  model:
    targets: [{ORIGIN}]
    concurrency: {{limit: 1}}
routes:
  - {{name: predict, match: {{path_prefix: /p}}, upstream: model, cache: true}}
"""
        origin = Ok()
        fixture = GatewayFixture.fromYAML(yaml, origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        for _ in range(3):
            self.assertEqual(fixture.request(b"GET", b"http://gw.example/p").body, b"ok")
        self.assertEqual((origin.calls, self.controller(fixture).admitted), (1, 1))

    def test_drainShedsTheQueueAtOnce(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(), origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        pending(fixture)
        queued = pending(fixture)
        fixture.service.stopService()
        fixture.flush()
        self.assertEqual(queued[0].code, 503)
        self.assertEqual(json.loads(queued[0].body)["reason"], "shed_stopped")
        self.assertTrue(queued[0].header(b"retry-after"))

    def test_reloadRemovingTheLimitShedsItsWaiters(self) -> None:
        origin = Held()
        fixture = GatewayFixture.fromYAML(limited(queue="{size: 3, max_wait: 10s}"), origins={ORIGIN: origin})
        self.addCleanup(settle, fixture, origin)
        pending(fixture)
        queued = pending(fixture)
        plain = f"""
upstreams:
  model: {{targets: [{ORIGIN}]}}
routes:
  - {{name: predict, match: {{path_prefix: /p}}, upstream: model}}
"""
        self.assertEqual(fixture.service.reload(parseConfig(plain)), [])
        fixture.flush()
        self.assertEqual(json.loads(queued[0].body)["reason"], "shed_stopped")
        self.assertIsNone(fixture.service.gateway.runtime.clusters["model"].admission)


class ConfigCheckTests(SynchronousTestCase):
    def test_mistakesNameTheirKeyPathAndLine(self) -> None:
        yaml = f"""upstreams:
  model:
    targets: [{ORIGIN}]
    concurrency:
      limit: 0
      queue: {{size: 10, wait: 1s}}
routes:
  - name: predict
    match: {{path: /p, methods: [GET]}}
    upstream: model
    batch: {{target_path: /b}}
"""
        with self.assertRaises(ConfigError) as caught:
            parseConfig(yaml)
        found = {(p.path, p.line) for p in caught.exception.problems}
        self.assertIn(("upstreams.model.concurrency.limit", 5), found)
        self.assertIn(("upstreams.model.concurrency.queue.wait", 6), found)
        self.assertIn(("routes[0](predict).batch", 11), found)
