"""
Per-target concurrency limits (issue 24, C{concurrency.per_target}), in memory:
a target at its limit is passed over while another has room, the queue holds
only what no target can take, a slow replica learns a smaller adaptive limit
than a fast one, and a target's gauge goes when the target goes.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.protecting import Held, pending, settle
from txgateway.admin.page import renderBody
from txgateway.admin.status import StatusReport
from txgateway.config import parseConfig
from txgateway.testing import GatewayFixture

FAST = "http://fast.internal:8000"
SLOW = "http://slow.internal:8000"


def config(concurrency: str, targets: str = f"[{FAST}, {SLOW}]") -> str:
    return f"""
upstreams:
  model:
    targets: {targets}
    balancer: round_robin
    timeouts: {{response: 30s}}
    retries: false
    concurrency: {concurrency}
routes:
  - {{name: predict, match: {{path_prefix: /p}}, upstream: model}}
"""


def targetLimits(fixture: GatewayFixture) -> dict[str, float]:
    """txgateway_target_concurrency_limit by target, as scraped."""
    out = {}
    for line in fixture.service.metrics.render().decode().splitlines():
        if line.startswith("txgateway_target_concurrency_limit{"):
            labels, value = line.rsplit(" ", 1)
            target = labels.split('target="', 1)[1].split('"', 1)[0]
            out[target] = float(value)
    return out


class Workers(Resource):
    """
    A model server on the fixture's clock: C{workers} requests computed at
    once for C{service} seconds each, the rest queued inside, so its latency
    grows with its concurrency past C{workers}.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, workers: int, service: float) -> None:
        super().__init__()
        self.clock = clock
        self.workers = workers
        self.service = service
        self.busy = 0
        self.queue: deque[Request] = deque()
        self.calls = 0

    def render(self, request: Request) -> object:
        self.calls += 1
        self.queue.append(request)
        self._next()
        return NOT_DONE_YET

    def _next(self) -> None:
        while self.busy < self.workers and self.queue:
            self.busy += 1
            self.clock.callLater(self.service, self._done, self.queue.popleft())

    def _done(self, request: Request) -> None:
        self.busy -= 1
        request.write(b"ok")
        request.finish()
        self._next()


class PassOverTests(SynchronousTestCase):
    def test_aTargetAtItsLimitIsPassedOverAndTheQueueHoldsTheRest(self) -> None:
        """limit 1 per target, two targets: two requests go, one to each; the third waits for the first slot."""
        fast, slow = Held(), Held()
        fixture = GatewayFixture.fromYAML(config("{limit: 1, per_target: true, queue: {size: 5, max_wait: 10s}}"),
                                          origins={FAST: fast, SLOW: slow})
        self.addCleanup(settle, fixture, fast, slow)
        first, second, third = pending(fixture), pending(fixture), pending(fixture)
        self.assertEqual((len(fast.seen), len(slow.seen)), (1, 1))  # not two on one while the other is idle
        controller = fixture.service.gateway.runtime.clusters["model"].admission
        self.assertEqual((controller.limit, controller.inFlight, controller.queued), (2, 2, 1))
        self.assertEqual(targetLimits(fixture), {FAST: 1.0, SLOW: 1.0})
        self.assertIn('txgateway_upstream_concurrency_limit{upstream="model"} 2.0',
                      fixture.service.metrics.render().decode())
        slow.answer()
        fixture.flush()
        self.assertEqual((len(fast.seen), len(slow.seen)), (1, 2))  # the waiter took the slot that freed
        fast.answer()
        slow.answer()
        fixture.flush()
        self.assertEqual([r[0].code for r in (first, second, third)], [200, 200, 200])

    def test_statusPageShowsEachTargetsLimit(self) -> None:
        fast, slow = Held(), Held()
        fixture = GatewayFixture.fromYAML(config("{limit: 2, per_target: true}"), origins={FAST: fast, SLOW: slow})
        self.addCleanup(settle, fixture, fast, slow)
        pending(fixture)
        report = StatusReport(fixture.service, fixture.clock)
        [model] = report.upstreams()
        self.assertEqual(model["concurrency"]["per_target"],
                         {FAST: {"limit": 2, "in_flight": 1}, SLOW: {"limit": 2, "in_flight": 0}})
        self.assertIn(f"limit 4 (fixed) · in flight 1 · queued 0 · shed 0 · per target {FAST} 1/2, {SLOW} 0/2",
                      renderBody(report.status()))


class AdaptivePerTargetTests(SynchronousTestCase):
    def test_aSlowReplicaLearnsASmallerLimit(self) -> None:
        """
        Two replicas behind one upstream, one with 8 workers and one with 2:
        under a steady 16 requests at once, each target's adaptive limit
        follows its own latency, and the slow one ends with the smaller limit
        (and so the smaller share of the requests).  The slow replica is
        loaded from the first request, so the latency it shows unloaded is
        first measured by the probe (probe_interval) that lowers each limit
        to min for one window.
        """
        clock = MemoryReactorClock()
        fast = Workers(clock, workers=8, service=0.1)
        slow = Workers(clock, workers=2, service=0.1)
        fixture = GatewayFixture.fromYAML(config("{adaptive: true, per_target: true, probe_interval: 20s}"),
                                          origins={FAST: fast, SLOW: slow}, clock=clock)
        answered: list[Any] = []

        def client(_: Any = None) -> None:
            if fixture.clock.seconds() < 40:
                fixture.requestDeferred(b"GET", b"http://gw.example/p").addBoth(answered.append).addBoth(client)

        for _ in range(16):
            client()
        while fixture.clock.getDelayedCalls() and fixture.clock.seconds() < 60:
            fixture.clock.advance(0.01)
            fixture.flush()
        cluster = fixture.service.gateway.runtime.clusters["model"]
        limits = {e.url: cluster.targetLimits.limitOf(e).limit for e in cluster.endpoints}
        self.assertLess(limits[SLOW], limits[FAST], limits)
        self.assertLessEqual(limits[SLOW], 4, limits)  # near its 2 workers, far below the 10 it started with
        self.assertGreater(fast.calls, 2 * slow.calls)
        self.assertEqual({r.code for r in answered}, {200})
        self.assertEqual(targetLimits(fixture), {k: float(v) for k, v in limits.items()})


class SeriesTests(SynchronousTestCase):
    def test_aRemovedTargetsSeriesGoes(self) -> None:
        """A reload that drops a target drops its gauge; one that drops per_target drops them all."""
        fast, slow = Held(), Held()
        fixture = GatewayFixture.fromYAML(config("{limit: 3, per_target: true}"), origins={FAST: fast, SLOW: slow})
        self.addCleanup(settle, fixture, fast, slow)
        pending(fixture)
        self.assertEqual(set(targetLimits(fixture)), {FAST, SLOW})
        service = fixture.service
        self.assertEqual(service.reload(parseConfig(config("{limit: 3, per_target: true}", targets=f"[{FAST}]"))), [])
        self.assertEqual(set(targetLimits(fixture)), {FAST})
        self.assertEqual(service.reload(parseConfig(config("{limit: 3}", targets=f"[{FAST}]"))), [])
        self.assertEqual(targetLimits(fixture), {})
        self.assertIsNone(service.gateway.runtime.clusters["model"].targetLimits)

    def test_aDisabledTargetsSeriesGoes(self) -> None:
        """Taken out of rotation at run time (the admin API's disable), a target's gauge goes; back, it returns."""
        fast, slow = Held(), Held()
        fixture = GatewayFixture.fromYAML(config("{limit: 3, per_target: true}"), origins={FAST: fast, SLOW: slow})
        self.addCleanup(settle, fixture, fast, slow)
        pending(fixture)
        membership = fixture.service.gateway.runtime.clusters["model"].membership
        [endpoint] = [e for e in membership.members.values() if e.url == SLOW]
        membership.setState(endpoint, "disabled")
        fixture.flush()
        self.assertEqual(set(targetLimits(fixture)), {FAST})
        membership.setState(endpoint, "active")
        pending(fixture)
        self.assertEqual(set(targetLimits(fixture)), {FAST, SLOW})
