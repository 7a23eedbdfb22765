"""Health checks: active thresholds without flapping, passive ejection and re-admission, reloads."""

from __future__ import annotations

import math
import random
from typing import Any

from treq.testing import StubTreq
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from txgateway.balancing import RoundRobin
from txgateway.building import buildRuntime
from txgateway.cluster import Cluster, Endpoint
from txgateway.config import ActiveHealth, HealthConfig, PassiveHealth, Target, UpstreamConfig, parseConfig
from txgateway.context import RequestContext
from txgateway.health import PassiveHealthCheck, passiveFor
from txgateway.interfaces import IHealthCheck, IPassiveHealth
from txgateway.observe import Metrics
from txgateway.probing import ActiveHealthChecker, checkerFor
from txgateway.service import GatewayService

ACTIVE = ActiveHealth(path="/health", interval=5.0, timeout=2.0, healthy_after=2, unhealthy_after=3)
PASSIVE = PassiveHealth(window=10.0, min_requests=10, max_error_rate=0.5, eject_for=30.0)

def chosen(cluster: Cluster, context: Any, tried: Any = ()) -> Endpoint:
    """The target C{cluster.choose} leases, its in-flight slot given back at once."""
    lease = cluster.choose(context, tried)
    lease.release()
    return lease.endpoint



def target(port: int) -> Target:
    return Target(url=f"http://127.0.0.1:{port}", scheme="http", host="127.0.0.1", port=port)


def makeCluster(clock: Clock, active: ActiveHealth | None = ACTIVE, passive: PassiveHealth | None = None,
                ports: tuple[int, ...] = (9001, 9002), endpoints: list[Endpoint] | None = None) -> Cluster:
    targets = tuple(target(p) for p in ports)
    config = UpstreamConfig(name="app", targets=targets, health=HealthConfig(active=active, passive=passive))
    eps = endpoints if endpoints is not None else [Endpoint(t, "app") for t in targets]
    return Cluster(config, clock, RoundRobin(), eps)


def ctx() -> RequestContext:
    request: Any = object()  # round robin never reads the request
    return RequestContext(request, 0.0, "rid", "192.0.2.1", "192.0.2.1", b"GET", "h", "/", None)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class FakeClient:
    """Stands for treq's HTTPClient: each request waits for the test to answer it."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, Deferred[Any]]] = []
        self.calls: list[tuple[str, bytes, dict[str, Any]]] = []

    def request(self, method: str, url: bytes, **kwargs: Any) -> Deferred[Any]:
        self.calls.append((method, url, kwargs))
        d: Deferred[Any] = Deferred()
        self.pending.append((url, d))
        return d

    def answer(self, url: bytes, code: int) -> None:
        for i, (u, d) in enumerate(self.pending):
            if u == url:
                del self.pending[i]
                d.callback(_FakeResponse(code))
                return
        raise AssertionError(f"no pending probe of {url!r}")

    def fail(self, url: bytes, exc: Exception) -> None:
        for i, (u, d) in enumerate(self.pending):
            if u == url:
                del self.pending[i]
                d.errback(exc)
                return
        raise AssertionError(f"no pending probe of {url!r}")


class _FakeResponse:
    def __init__(self, code: int) -> None:
        self.code = code
        self.length = 2

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(b"ok")
        protocol.connectionLost(Failure(ResponseDone()))


class _Origins(Resource):
    """In-memory origins for StubTreq: the status of /health per Host."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[bytes, int] = {}
        self.seen: list[bytes] = []

    def render(self, request: Request) -> bytes:
        host = request.getHeader(b"host") or b""
        self.seen.append(host + request.uri)
        request.setResponseCode(self.status.get(host, 200))
        return b"fine"


class LogCapture:
    def __init__(self, test: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def about(self, fragment: str) -> list[dict[str, Any]]:
        return [e for e in self.events if fragment in e.get("log_format", "")]


URL1 = b"http://127.0.0.1:9001/health"
URL2 = b"http://127.0.0.1:9002/health"


class ActiveCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(processMetrics=False)
        self.cluster = makeCluster(self.clock)
        self.client = FakeClient()
        self.checker = ActiveHealthChecker(self.cluster, self.clock, self.metrics, client=self.client)
        self.checker.startService()
        self.addCleanup(self.stop)
        self.e1, self.e2 = self.cluster.endpoints

    def stop(self) -> None:
        if self.checker.running:
            self.successResultOf(self.checker.stopService())

    def tick(self, code1: int | Exception, code2: int | Exception = 200) -> None:
        """Answer this round's probes, then advance to the next round."""
        for url, code in ((URL1, code1), (URL2, code2)):
            if isinstance(code, Exception):
                self.client.fail(url, code)
            else:
                self.client.answer(url, code)
        self.clock.advance(ACTIVE.interval)

    def test_providesInterfaces(self) -> None:
        """The checker is an IService and an IHealthCheck."""
        self.assertTrue(verifyObject(IService, self.checker))
        self.assertTrue(verifyObject(IHealthCheck, self.checker))

    def test_probesEveryTargetAtOnceThenEveryInterval(self) -> None:
        """A probe of target + path goes out on start and then once per interval, per target."""
        self.assertEqual(sorted(u for _, u, _ in self.client.calls), [URL1, URL2])
        method, _, kwargs = self.client.calls[0]
        self.assertEqual(method, "GET")
        self.assertFalse(kwargs["allow_redirects"])
        self.tick(200)
        self.assertEqual(len(self.client.calls), 4)

    def test_unhealthyOnlyAfterConsecutiveFailures(self) -> None:
        """Two failures then a success keep the target healthy; three in a row make it unhealthy."""
        logs = LogCapture(self)
        self.tick(503)
        self.tick(ConnectionRefusedError())
        self.tick(200)
        self.tick(500)
        self.tick(500)
        self.assertTrue(self.e1.activeHealthy)
        self.tick(500)
        self.assertFalse(self.e1.activeHealthy)
        self.assertTrue(self.e2.activeHealthy)
        self.tick(500)
        self.tick(500)
        self.assertEqual(len(logs.about("is unhealthy")), 1)
        self.assertEqual(sample(self.metrics, "txgateway_target_health_transitions_total", upstream="app",
                                target="http://127.0.0.1:9001", to="unhealthy"), 1)
        self.assertEqual(sample(self.metrics, "txgateway_target_healthy", upstream="app",
                                target="http://127.0.0.1:9001"), 0)

    def test_healthyAgainOnlyAfterConsecutiveSuccesses(self) -> None:
        """An unhealthy target needs healthy_after good probes in a row; one blip restarts the count."""
        logs = LogCapture(self)
        for _ in range(3):
            self.tick(503)
        self.assertFalse(self.e1.activeHealthy)
        self.tick(200)
        self.tick(503)
        self.tick(200)
        self.assertFalse(self.e1.activeHealthy)
        self.tick(200)
        self.assertTrue(self.e1.activeHealthy)
        self.assertEqual(len(logs.about("is healthy again")), 1)
        self.assertEqual(sample(self.metrics, "txgateway_target_healthy", upstream="app",
                                target="http://127.0.0.1:9001"), 1)
        self.assertEqual(sample(self.metrics, "txgateway_target_health_transitions_total", upstream="app",
                                target="http://127.0.0.1:9001", to="healthy"), 1)

    def test_hangingProbeTimesOutAndCountsAsFailure(self) -> None:
        """A probe that never answers fails after timeout, and the loop goes on."""
        for _ in range(3):
            self.client.answer(URL2, 200)
            self.clock.advance(ACTIVE.timeout)  # probe of 9001 times out
            self.clock.advance(ACTIVE.interval - ACTIVE.timeout)
        self.assertFalse(self.e1.activeHealthy)
        self.assertEqual(self.checker.streaks(self.e1), (0, 3))
        self.assertEqual(sum(1 for _, u, _ in self.client.calls if u == URL1), 4)

    def test_clientRaisingCountsAsFailure(self) -> None:
        """A client that raises instead of returning a Deferred is a failed probe, not a dead loop."""

        class Raising:
            def request(self, *a: Any, **k: Any) -> Deferred[Any]:
                raise ValueError("bad url")

        clock = Clock()
        cluster = makeCluster(clock, ports=(9001,))
        checker = ActiveHealthChecker(cluster, clock, self.metrics, client=Raising())
        checker.startService()
        for _ in range(3):
            clock.advance(ACTIVE.interval)
        self.assertFalse(cluster.endpoints[0].activeHealthy)
        self.successResultOf(checker.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopLeavesNoTimersAndNoVerdict(self) -> None:
        """Stopping cancels probes in flight (without counting them) and every timer."""
        self.successResultOf(self.checker.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.checker.streaks(self.e1), (0, 0))
        self.assertTrue(self.e1.activeHealthy)

    def test_clusterSwapKeepsLoopsAndStreaks(self) -> None:
        """Swapping in a reloaded cluster with the same endpoints keeps streaks; a new target starts probing."""
        self.tick(503)
        self.assertEqual(self.checker.streaks(self.e1), (0, 1))
        e3 = Endpoint(target(9003), "app")
        self.checker.cluster = makeCluster(self.clock, ports=(9001, 9002, 9003), endpoints=[self.e1, self.e2, e3])
        self.assertEqual(self.checker.streaks(self.e1), (0, 1))
        self.assertIn(b"http://127.0.0.1:9003/health", [u for _, u, _ in self.client.calls])
        self.checker.cluster = makeCluster(self.clock, ports=(9001,), endpoints=[self.e1])
        self.assertEqual(self.checker.streaks(self.e2), (0, 0))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class ActiveOverHTTPTests(SynchronousTestCase):
    """The same checker through treq's StubTreq: real requests into an in-memory origin."""

    def test_statusDecidesAndRedirectsAreNotFollowed(self) -> None:
        """2xx is healthy; 503 and a 302 are failures; the probe path is target URL + health path."""
        clock = Clock()
        origins = _Origins()
        origins.status[b"127.0.0.1:9002"] = 302
        cluster = makeCluster(clock, active=ActiveHealth(path="/healthz", interval=1.0, timeout=0.5,
                                                         healthy_after=1, unhealthy_after=2))
        checker = ActiveHealthChecker(cluster, clock, Metrics(processMetrics=False), client=StubTreq(origins))
        checker.startService()
        clock.advance(1.0)
        e1, e2 = cluster.endpoints
        self.assertTrue(e1.activeHealthy)
        self.assertFalse(e2.activeHealthy)
        self.assertIn(b"127.0.0.1:9001/healthz", origins.seen)
        origins.status[b"127.0.0.1:9001"] = 503
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertFalse(e1.activeHealthy)
        origins.status[b"127.0.0.1:9001"] = 204
        clock.advance(1.0)
        self.assertTrue(e1.activeHealthy)
        self.successResultOf(checker.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ownPoolIsBuiltAndClosed(self) -> None:
        """Without an injected client the checker builds its own pool, and closes it on stop."""
        reactor = MemoryReactorClock()
        cluster = makeCluster(reactor)  # type: ignore[arg-type]
        checker = checkerFor(cluster, reactor, reactor, Metrics(processMetrics=False))
        assert isinstance(checker, ActiveHealthChecker)
        checker.startService()
        pool = checker._pool
        self.assertIsNotNone(pool)
        self.assertIsNot(pool, getattr(cluster, "pool", None))
        self.assertEqual(len(reactor.tcpClients), 2)
        self.assertEqual({c[1] for c in reactor.tcpClients}, {9001, 9002})
        reactor.advance(ACTIVE.timeout)  # nobody answers: both probes time out
        self.assertEqual(checker.streaks(cluster.endpoints[0]), (0, 1))
        self.successResultOf(checker.stopService())
        self.assertIsNone(checker._pool)


class CheckerForTests(SynchronousTestCase):
    def test_noneWithoutActiveConfig(self) -> None:
        """No health.active: no service, and a stale 'unhealthy' from an earlier config is dropped."""
        clock = Clock()
        cluster = makeCluster(clock, active=None)
        cluster.endpoints[0].activeHealthy = False
        self.assertIsNone(checkerFor(cluster, None, clock, Metrics(processMetrics=False)))
        self.assertTrue(cluster.endpoints[0].activeHealthy)

    def test_serviceWithActiveConfig(self) -> None:
        """health.active set: an ActiveHealthChecker with a writable cluster attribute."""
        clock = Clock()
        cluster = makeCluster(clock)
        checker = checkerFor(cluster, MemoryReactorClock(), clock, Metrics(processMetrics=False))
        assert isinstance(checker, ActiveHealthChecker)
        self.assertIs(checker.cluster, cluster)


class PassiveCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics(processMetrics=False)
        self.cluster = makeCluster(self.clock, active=None, passive=PASSIVE)
        passive = passiveFor(self.cluster, self.clock, self.metrics)
        assert isinstance(passive, PassiveHealthCheck)
        self.passive = passive
        self.cluster.passive = passive
        self.e1, self.e2 = self.cluster.endpoints

    def feed(self, endpoint: Endpoint, ok: int, bad: int) -> None:
        for _ in range(ok):
            self.passive.record(endpoint, True)
        for _ in range(bad):
            self.passive.record(endpoint, False)

    def test_providesInterface(self) -> None:
        """The passive check is an IPassiveHealth."""
        self.assertTrue(verifyObject(IPassiveHealth, self.passive))

    def test_noneWithoutPassiveConfig(self) -> None:
        """No health.passive: no checker, and a leftover ejection ends."""
        clock = Clock()
        cluster = makeCluster(clock, active=None, passive=None)
        cluster.endpoints[0].ejectedUntil = 50.0
        self.assertIsNone(passiveFor(cluster, clock, self.metrics))
        self.assertEqual(cluster.endpoints[0].ejectedUntil, 0.0)

    def test_notEjectedBelowMinRequests(self) -> None:
        """Nine failures out of nine is below min_requests: still in."""
        self.feed(self.e1, 0, 9)
        self.assertTrue(self.passive.isHealthy(self.e1))

    def test_notEjectedAtExactlyTheMaxRate(self) -> None:
        """An error rate equal to max_error_rate does not eject; above it does."""
        self.feed(self.e1, 5, 5)
        self.assertTrue(self.passive.isHealthy(self.e1))
        self.feed(self.e1, 0, 1)
        self.assertFalse(self.passive.isHealthy(self.e1))
        self.assertTrue(self.passive.isHealthy(self.e2))

    def test_ejectionIsTimedWithoutActiveCheck(self) -> None:
        """Ejected for eject_for, then back by the clock alone; logged and counted once each way."""
        logs = LogCapture(self)
        self.feed(self.e1, 0, 10)
        self.assertEqual(self.e1.ejectedUntil, 1000 + PASSIVE.eject_for)
        self.assertFalse(self.e1.healthy(self.clock.seconds()))
        self.feed(self.e1, 0, 20)  # late answers while out change nothing
        self.clock.advance(PASSIVE.eject_for - 0.5)
        self.assertFalse(self.passive.isHealthy(self.e1))
        self.clock.advance(0.5)
        self.assertTrue(self.e1.healthy(self.clock.seconds()))
        self.assertTrue(self.passive.isHealthy(self.e1))
        self.passive.record(self.e1, True)
        self.assertEqual(len(logs.about("ejecting target")), 1)
        self.assertEqual(len(logs.about("re-admitted")), 1)
        labels = {"upstream": "app", "target": "http://127.0.0.1:9001"}
        self.assertEqual(sample(self.metrics, "txgateway_target_health_transitions_total", to="ejected", **labels), 1)
        self.assertEqual(sample(self.metrics, "txgateway_target_health_transitions_total", to="readmitted", **labels), 1)
        self.assertEqual(sample(self.metrics, "txgateway_target_healthy", **labels), 1)

    def test_readmittedTargetStartsWithACleanWindow(self) -> None:
        """After re-admission the old failures are forgotten: one more error does not eject again."""
        self.feed(self.e1, 0, 10)
        self.clock.advance(PASSIVE.eject_for)
        self.feed(self.e1, 9, 1)
        self.assertTrue(self.passive.isHealthy(self.e1))

    def test_windowSlides(self) -> None:
        """Failures older than the window no longer count."""
        self.feed(self.e1, 0, 5)
        self.clock.advance(PASSIVE.window + 1)
        self.feed(self.e1, 5, 1)
        self.assertEqual(self.passive.counts(self.e1), (6, 1))
        self.assertTrue(self.passive.isHealthy(self.e1))

    def test_ejectedTargetIsNotChosen(self) -> None:
        """Cluster.choose skips the ejected target until it is back."""
        self.feed(self.e1, 0, 10)
        self.assertEqual({chosen(self.cluster, ctx()).url for _ in range(4)}, {self.e2.url})
        self.clock.advance(PASSIVE.eject_for)
        self.assertEqual({chosen(self.cluster, ctx()).url for _ in range(4)}, {self.e1.url, self.e2.url})


class PassiveWithActiveTests(SynchronousTestCase):
    """With both checks, an ejection lasts until the active check vouches for the target again."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(processMetrics=False)
        self.cluster = makeCluster(self.clock, active=ACTIVE, passive=PASSIVE, ports=(9001,))
        passive = passiveFor(self.cluster, self.clock, self.metrics)
        assert isinstance(passive, PassiveHealthCheck)
        self.cluster.passive = self.passive = passive
        self.client = FakeClient()
        self.checker = ActiveHealthChecker(self.cluster, self.clock, self.metrics, client=self.client)
        self.checker.startService()
        self.addCleanup(lambda: self.successResultOf(self.checker.stopService()))
        self.e1 = self.cluster.endpoints[0]

    def test_ejectionEndsAfterFreshActiveSuccesses(self) -> None:
        """Good probes from before the ejection do not count; healthy_after good ones after it end it."""
        logs = LogCapture(self)
        self.client.answer(URL1, 200)
        self.clock.advance(ACTIVE.interval)
        for _ in range(10):
            self.passive.record(self.e1, False)
        self.assertEqual(self.e1.ejectedUntil, math.inf)  # no timed return with an active check
        self.assertFalse(self.e1.healthy(self.clock.seconds()))
        self.client.answer(URL1, 200)
        self.assertFalse(self.e1.healthy(self.clock.seconds()))
        self.clock.advance(ACTIVE.interval)
        self.client.answer(URL1, 200)
        self.assertTrue(self.e1.healthy(self.clock.seconds()))
        self.assertEqual(len(logs.about("re-admitted")), 1)

    def test_failingProbesKeepItOut(self) -> None:
        """Failed probes restart the count: the target stays ejected."""
        for _ in range(10):
            self.passive.record(self.e1, False)
        self.client.answer(URL1, 200)
        self.clock.advance(ACTIVE.interval)
        self.client.answer(URL1, 503)
        self.clock.advance(ACTIVE.interval)
        self.client.answer(URL1, 200)
        self.assertEqual(self.e1.ejectedUntil, math.inf)

    def test_reloadDroppingActiveMakesTheEjectionTimed(self) -> None:
        """When the active check goes away on reload, an open-ended ejection becomes eject_for long."""
        self.e1.ejectedUntil = math.inf
        cluster = makeCluster(self.clock, active=None, passive=PASSIVE, ports=(9001,), endpoints=[self.e1])
        passiveFor(cluster, self.clock, self.metrics)
        self.assertEqual(self.e1.ejectedUntil, self.clock.seconds() + PASSIVE.eject_for)


CONFIG = """\
server: {{listen: "tcp:0:interface=127.0.0.1"}}
upstreams:
  app:
    balancer: round_robin
    targets: [{targets}]
    health:
      active: {{path: /health, interval: 5s, timeout: 1s, healthy_after: 2, unhealthy_after: 2}}
{passive}
routes:
  - match: {{path_prefix: /}}
    upstream: app
"""


def gwConfig(targets: str = "http://127.0.0.1:9001, http://127.0.0.1:9002", passive: str = "") -> Any:
    return parseConfig(CONFIG.format(targets=targets, passive=passive))


class ReloadTests(SynchronousTestCase):
    """Reload keeps health state for the targets that stay (through the real service)."""

    def service(self) -> GatewayService:
        reactor = MemoryReactorClock()
        svc = GatewayService(gwConfig(), reactor, clock=reactor, metrics=Metrics(processMetrics=False),
                             rng=random.Random(0))
        return svc

    def test_sameHealthConfigKeepsTheCheckerAndTheVerdicts(self) -> None:
        """An unrelated change: same checker object, new cluster, same endpoints, same verdicts."""
        svc = self.service()
        checker = svc._checkers["app"]
        old = svc.gateway.runtime.clusters["app"]
        old.endpoints[0].activeHealthy = False
        self.assertEqual(svc.reload(parseConfig(CONFIG.format(
            targets="http://127.0.0.1:9001, http://127.0.0.1:9002", passive="").replace("round_robin", "p2c"))), [])
        new = svc.gateway.runtime.clusters["app"]
        self.assertIsNot(new, old)
        self.assertIs(svc._checkers["app"], checker)
        self.assertIs(checker.cluster, new)
        self.assertEqual(new.endpoints, old.endpoints)
        self.assertFalse(new.endpoints[0].activeHealthy)

    def test_changedTargetsKeepVerdictsOfThoseThatStay(self) -> None:
        """A target added: a new checker, but the staying target is still unhealthy and ejected."""
        svc = self.service()
        old = svc.gateway.runtime.clusters["app"]
        stay = old.endpoints[0]
        stay.activeHealthy = False
        stay.ejectedUntil = 10_000.0
        passive = "      passive: {window: 10s, min_requests: 5, max_error_rate: 0.5, eject_for: 30s}"
        self.assertEqual(svc.reload(gwConfig("http://127.0.0.1:9001, http://127.0.0.1:9003", passive)), [])
        new = svc.gateway.runtime.clusters["app"]
        self.assertIs(new.endpoints[0], stay)
        self.assertFalse(stay.activeHealthy)
        self.assertEqual(stay.ejectedUntil, 10_000.0)
        self.assertTrue(new.endpoints[1].activeHealthy)
        self.assertIs(svc._checkers["app"].cluster, new)

    def test_buildRuntimeReusesEndpoints(self) -> None:
        """buildRuntime hands the same Endpoint objects to the next runtime."""
        clock = Clock()
        kw: dict[str, Any] = {"reactor": MemoryReactorClock(), "clock": clock,
                              "metrics": Metrics(processMetrics=False)}
        first = buildRuntime(gwConfig(), **kw)
        second = buildRuntime(gwConfig("http://127.0.0.1:9002"), previous=first, **kw)
        self.assertIs(second.clusters["app"].endpoints[0], first.clusters["app"].endpoints[1])

    def test_serviceStopsCheckersCleanly(self) -> None:
        """The checker runs under the service and its stop leaves no probe timers."""
        reactor = MemoryReactorClock()
        svc = GatewayService(gwConfig(), reactor, clock=reactor, metrics=Metrics(processMetrics=False))
        svc.startService()
        self.assertTrue(svc._checkers["app"].running)
        d = svc.stopService()
        reactor.advance(0)
        self.successResultOf(d)
        self.assertFalse(svc._checkers["app"].running)
        self.assertEqual([c for c in reactor.getDelayedCalls() if "LoopingCall" in repr(c.func)], [])

