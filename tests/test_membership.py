"""
Targets that come and go at run time (issue 22): a cluster following its
discovery sources and the admin API, on a Clock.

The sources here are real L{SourceBase} services fed by the test (what a
DNS or file source does after each refresh), the clusters are the real
L{Cluster} with real balancers, and time is a L{Clock}.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.support import tempPath
from txgateway import balancing
from txgateway.cluster import Cluster, Endpoint, NoTarget
from txgateway.config import ActiveHealth, HealthConfig, Target, UpstreamConfig, parseConfig
from txgateway.config.schema_discovery import DiscoveryConfig, FileSpec
from txgateway.context import RequestContext
from txgateway.discovery.base import SourceBase
from txgateway.discovery.interfaces import DiscoveredTarget, ITargetSource
from txgateway.discovery.service import DiscoveryService
from txgateway.membership import Membership, describeOverrides
from txgateway.observe import Metrics
from txgateway.testing import GatewayFixture


@implementer(ITargetSource)
class FedSource(SourceBase):
    """A source whose answers the test hands in."""

    kind = "dns"
    description = "a test source"

    def __init__(self, clock: Clock) -> None:
        super().__init__("keep")
        self.clock = clock

    def answer(self, *hosts: str, port: int = 8000, weight: int = 1) -> None:
        self.publish([DiscoveredTarget("http", h, port, weight, "dns") for h in hosts], self.clock.seconds())


def context(key: str) -> RequestContext:
    return RequestContext(None, 0.0, "id", key, key, b"GET", "gw", "/", None)  # type: ignore[arg-type]


def ownersOf(cluster: Cluster, keys: list[str]) -> dict[str, str]:
    """Which target each client key is sent to now."""
    out = {}
    for k in keys:
        lease = cluster.choose(context(k))
        out[k] = lease.endpoint.url
        lease.release()
    return out


class Pool:
    """What the membership asks of a pool: idle connections to take, by key."""

    def __init__(self) -> None:
        self.idle: dict[Any, list[Any]] = {}
        self.closed: list[Any] = []

    def takeIdle(self, key: Any) -> Any:
        connections = self.idle.get(key)
        if not connections:
            return None
        c = connections.pop()
        self.closed.append(key)
        return c


class Transport:
    def loseConnection(self) -> None:
        pass


class Connection:
    transport = Transport()


class MembershipTestBase(SynchronousTestCase):
    def cluster(self, static: tuple[str, ...] = (), balancer: str = "round_robin", slowStart: float = 0.0,
                health: HealthConfig | None = None) -> tuple[Cluster, FedSource, Membership]:
        self.clock = Clock()
        self.clock.advance(1000)
        targets = tuple(Target(u, "http", u.split("//")[1].split(":")[0], int(u.rsplit(":", 1)[1])) for u in static)
        config = UpstreamConfig("api", targets, balancer=balancer, slow_start=slowStart, health=health or HealthConfig())
        self.metrics = Metrics(processMetrics=False)
        endpoints = [Endpoint(t, "api") for t in targets]
        cluster = Cluster(config, self.clock, balancing.makeBalancer(config, random.Random(1)), endpoints,
                          metrics=self.metrics)
        self.pool = Pool()
        source = FedSource(self.clock)
        membership = Membership(cluster, self.clock, self.metrics, pool=self.pool)
        membership.attach([source])
        return cluster, source, membership

    def urls(self, cluster: Cluster) -> list[str]:
        return sorted(e.url for e in cluster.endpoints)


class FollowingSourcesTests(MembershipTestBase):
    def test_targetsThatStayKeepTheirEndpoint(self) -> None:
        """An answer that adds a target keeps the Endpoint (health, in-flight, breaker) of those that stay."""
        cluster, source, _ = self.cluster(static=("http://static:80",))
        source.answer("10.0.0.1", "10.0.0.2")
        self.assertEqual(self.urls(cluster), ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://static:80"])
        kept = {e.url: e for e in cluster.endpoints}
        kept["http://10.0.0.1:8000"].ejectedUntil = 12345.0
        source.answer("10.0.0.1", "10.0.0.2", "10.0.0.3")
        after = {e.url: e for e in cluster.endpoints}
        for url, e in kept.items():
            self.assertIs(after[url], e)
        self.assertEqual(after["http://10.0.0.1:8000"].ejectedUntil, 12345.0)
        self.assertEqual({e.url: e.source for e in cluster.endpoints}["http://static:80"], "static")
        self.assertEqual(after["http://10.0.0.3:8000"].source, "dns")

    def test_removedTargetFinishesInFlightThenItsConnectionsClose(self) -> None:
        """A removed target is never chosen again; its lease still ends normally; then its idle pool closes."""
        cluster, source, membership = self.cluster()
        source.answer("10.0.0.1", "10.0.0.2")
        gone = {e.url: e for e in cluster.endpoints}["http://10.0.0.2:8000"]
        lease = None
        while lease is None or lease.endpoint is not gone:
            lease = cluster.choose(context("x"))
            if lease.endpoint is not gone:
                lease.release()
        self.pool.idle[(b"http", b"10.0.0.2", 8000)] = [Connection()]
        source.answer("10.0.0.1")
        self.assertEqual(self.urls(cluster), ["http://10.0.0.1:8000"])
        self.assertEqual([t["state"] for t in membership.report() if t["url"] == gone.url], ["retiring"])
        for _ in range(10):
            other = cluster.choose(context("y"))
            self.assertIsNot(other.endpoint, gone)
            other.release()
        self.clock.advance(0)
        self.assertEqual(self.pool.closed, [], "closed while a request was still in flight")
        lease.finish(True)
        self.clock.advance(0)
        self.assertEqual(self.pool.closed, [(b"http", b"10.0.0.2", 8000)])
        self.assertEqual(membership.retiring, {})

    def test_targetComingBackWhileRetiringIsRevived(self) -> None:
        cluster, source, _ = self.cluster()
        source.answer("10.0.0.1", "10.0.0.2")
        e = {e.url: e for e in cluster.endpoints}["http://10.0.0.2:8000"]
        lease = cluster.choose(context("a"))
        while lease.endpoint is not e:
            lease.release()
            lease = cluster.choose(context("a"))
        source.answer("10.0.0.1")
        source.answer("10.0.0.1", "10.0.0.2")
        self.assertIs({x.url: x for x in cluster.endpoints}["http://10.0.0.2:8000"], e)
        self.assertEqual(e.state, "active")
        lease.release()

    def test_noTargetYetIsA503WithRetryAfter(self) -> None:
        """An upstream whose sources found nothing yet answers 503 with Retry-After: 1."""
        cluster, source, _ = self.cluster()
        with self.assertRaises(NoTarget) as caught:
            cluster.choose(context("x"))
        self.assertEqual(caught.exception.retryAfter, 1.0)
        source.answer("10.0.0.1")
        cluster.choose(context("x")).release()

    def test_consistentHashMovesOnlyTheChangedTargetsKeys(self) -> None:
        """Adding a target moves keys only to it; removing one moves only its keys."""
        cluster, source, _ = self.cluster(balancer="consistent_hash")
        source.answer(*(f"10.0.0.{i}" for i in range(1, 6)))
        keys = [f"client-{i}" for i in range(2000)]

        def owners() -> dict[str, str]:
            return ownersOf(cluster, keys)

        before = owners()
        source.answer(*(f"10.0.0.{i}" for i in range(1, 7)))
        added = owners()
        moved = [k for k in keys if added[k] != before[k]]
        self.assertTrue(moved)
        self.assertEqual({added[k] for k in moved}, {"http://10.0.0.6:8000"})
        source.answer(*(f"10.0.0.{i}" for i in range(2, 7)))
        removed = owners()
        self.assertEqual({k for k in keys if removed[k] != added[k]},
                         {k for k in keys if added[k] == "http://10.0.0.1:8000"})

    def test_metricsCountTargetsByState(self) -> None:
        cluster, source, membership = self.cluster()
        source.answer("10.0.0.1", "10.0.0.2")
        membership.setState(cluster.endpoints[0], "draining")
        value = self.metrics.registry.get_sample_value
        self.assertEqual(value("txgateway_upstream_targets", {"upstream": "api", "state": "active"}), 1)
        self.assertEqual(value("txgateway_upstream_targets", {"upstream": "api", "state": "draining"}), 1)


class NewTargetTests(MembershipTestBase):
    def test_slowStartRampsANewTargetsShare(self) -> None:
        """With slow_start 30s a target added at run time starts at a tenth of its share and reaches it."""
        cluster, source, _ = self.cluster(balancer="weighted_round_robin", slowStart=30.0)
        source.answer("10.0.0.1")
        self.assertEqual(cluster.endpoints[0].weight, 1, "targets of the first answer are not ramped")
        source.answer("10.0.0.1", "10.0.0.2")

        def share() -> float:
            seen = Counter()
            for _ in range(200):
                lease = cluster.choose(context("k"))
                seen[lease.endpoint.url] += 1
                lease.release()
            return seen["http://10.0.0.2:8000"] / 200

        self.assertLess(abs(share() - 1 / 11), 0.01)  # weights 10 and 1
        self.clock.pump([1.0] * 15)
        self.assertLess(abs(share() - 6 / 16), 0.01)  # half way: 10 and round(10 * 0.55)
        self.clock.pump([1.0] * 16)
        self.assertLess(abs(share() - 0.5), 0.03)  # (smooth WRR carries its current weights over)
        self.assertEqual([e.weight for e in cluster.endpoints], [1, 1])

    def test_newTargetWaitsForTheActiveCheck(self) -> None:
        """With health.active a target added at run time takes traffic only once probes pass."""
        health = HealthConfig(active=ActiveHealth(healthy_after=2))
        cluster, source, _ = self.cluster(health=health)
        probed: list[int] = []
        cluster.onTargetsChanged.append(lambda: probed.append(len(cluster.endpoints)))
        source.answer("10.0.0.1")
        self.assertTrue(cluster.endpoints[0].activeHealthy, "the first targets start healthy")
        source.answer("10.0.0.1", "10.0.0.2")
        new = {e.url: e for e in cluster.endpoints}["http://10.0.0.2:8000"]
        self.assertFalse(new.activeHealthy)
        self.assertEqual(probed, [1, 2], "the checker hears of every change")
        for _ in range(10):
            lease = cluster.choose(context("k"))
            self.assertIsNot(lease.endpoint, new)
            lease.release()


class RuntimeControlTests(MembershipTestBase):
    def test_drainSurvivesRediscoveryUntilReload(self) -> None:
        """A drained target stays drained when discovery delivers it again; describeOverrides names it."""
        cluster, source, membership = self.cluster(static=("http://static:80",))
        source.answer("10.0.0.1")
        (e,) = membership.find("10.0.0.1:8000")
        membership.setState(e, "draining")
        self.assertEqual(self.urls(cluster), ["http://static:80"])
        source.answer("10.0.0.1", "10.0.0.2")
        self.assertEqual(e.state, "draining")
        self.assertEqual(self.urls(cluster), ["http://10.0.0.2:8000", "http://static:80"])
        membership.setWeight(e, 5)
        self.assertEqual(describeOverrides({"api": cluster}), ["api 10.0.0.1:8000 draining weight 5"])
        membership.setState(e, "active")
        self.assertEqual(e.weight, 5)
        self.assertIn(e, cluster.endpoints)


class ReloadTests(SynchronousTestCase):
    YAML = """
upstreams:
  app:
    balancer: weighted_round_robin
    targets:
      - http://app:8000
      - {file: %s, watch: 1s}
routes:
  - {name: all, match: {path_prefix: /}, upstream: app}
"""

    def test_reloadKeepsAnUnchangedSourceAndDropsRuntimeChanges(self) -> None:
        """A reload with the same file item keeps its source running; admin changes are dropped and named."""
        path = Path(tempPath(self))
        path.write_text("- http://other:8000\n")
        fixture = GatewayFixture.fromYAML(self.YAML % path)
        service = fixture.service
        service.startService()
        self.addCleanup(service.stopService)
        (source,) = service.discovery.service.sources.values()
        cluster = service.gateway.runtime.clusters["app"]
        self.assertEqual(sorted(e.url for e in cluster.endpoints), ["http://app:8000", "http://other:8000"])
        (e,) = cluster.membership.find("other:8000")
        cluster.membership.setState(e, "disabled")
        problems = service.reload(parseConfig(self.YAML % path))
        self.assertEqual(problems, [])
        self.assertEqual(service.gateway.history[-1]["dropped_runtime_changes"], ["app other:8000 disabled"])
        (kept,) = service.discovery.service.sources.values()
        self.assertIs(kept, source)
        newCluster = service.gateway.runtime.clusters["app"]
        self.assertEqual(sorted(x.url for x in newCluster.endpoints), ["http://app:8000", "http://other:8000"])
        self.assertEqual({x.url: x for x in newCluster.endpoints}["http://other:8000"].state, "active")


class DiscoveryServiceTests(SynchronousTestCase):
    def test_syncKeepsUnchangedSourcesAndStopsGoneOnes(self) -> None:
        clock = Clock()
        service = DiscoveryService(None, clock)
        a, b = FileSpec(Path("/nonexistent/a.yaml")), FileSpec(Path("/nonexistent/b.yaml"))
        first = service.sync(DiscoveryConfig(), {"api": [a]})
        second = service.sync(DiscoveryConfig(), {"api": [a, b]})
        self.assertIs(second[("api", 0, a)], first[("api", 0, a)])
        third = service.sync(DiscoveryConfig(), {"api": [b]})
        self.assertEqual(list(third), [("api", 0, b)])
        self.assertIsNone(first[("api", 0, a)].parent)


class ProbedTargetsTests(MembershipTestBase):
    def test_drainedTargetsAreStillProbedDisabledOnesNot(self) -> None:
        cluster, source, membership = self.cluster()
        source.answer("10.0.0.1", "10.0.0.2", "10.0.0.3")
        one, two, three = sorted(cluster.endpoints, key=lambda e: e.url)
        membership.setState(one, "draining")
        membership.setState(two, "disabled")
        self.assertEqual(sorted(e.url for e in membership.probed()), [one.url, three.url])


class StartUpTests(MembershipTestBase):
    def test_aSourcesFirstAnswerAtStartIsNotRamped(self) -> None:
        """Static targets and a source's first answer at start-up are the starting set: neither gated nor ramped."""
        health = HealthConfig(active=ActiveHealth(healthy_after=2))
        cluster, source, _ = self.cluster(static=("http://static:80",), balancer="weighted_round_robin",
                                          slowStart=30.0, health=health)
        source.answer("10.0.0.1")
        self.assertTrue(all(e.activeHealthy for e in cluster.endpoints))
        self.assertEqual([e.weight for e in cluster.endpoints], [1, 1])
        source.answer("10.0.0.1", "10.0.0.2")
        new = {e.url: e for e in cluster.endpoints}["http://10.0.0.2:8000"]
        self.assertFalse(new.activeHealthy)
        self.assertEqual(new.weight, 1)  # a tenth of 10, while the others count 10
        self.assertEqual({e.weight for e in cluster.endpoints if e is not new}, {10})


class ConsistentHashSlowStartTests(MembershipTestBase):
    def test_aRampingTargetTakesAGrowingShareOfItsKeys(self) -> None:
        """Under consistent_hash a new target takes its keys gradually; other keys never move."""
        cluster, source, _ = self.cluster(balancer="consistent_hash", slowStart=30.0)
        source.answer("10.0.0.1", "10.0.0.2", "10.0.0.3")
        keys = [f"client-{i}" for i in range(3000)]

        def owners() -> dict[str, str]:
            return ownersOf(cluster, keys)

        before = owners()
        source.answer("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
        new = "http://10.0.0.4:8000"
        counts = []
        for _ in range(4):
            now = owners()
            self.assertEqual({now[k] for k in keys if now[k] != before[k]} - {new}, set())
            counts.append(sum(1 for k in keys if now[k] == new))
            self.clock.pump([1.0] * 10)
        final = owners()
        self.assertEqual(counts, sorted(counts))
        self.assertLess(counts[0], counts[-1] / 5)
        self.assertGreater(sum(1 for k in keys if final[k] == new), 3000 / 4 * 0.7)


class ReadyTests(SynchronousTestCase):
    def test_readyWaitsForTheSourcesFirstAnswerBounded(self) -> None:
        """/ready waits for every source's first refresh, but never longer than READY_WITHIN."""
        from twisted.application.service import MultiService

        from txgateway.discovering import READY_WITHIN, Discovery

        clock = Clock()
        parent = MultiService()
        discovery = Discovery(parent, None, clock, Metrics(processMetrics=False), None)  # type: ignore[arg-type]
        self.assertTrue(discovery.whenReady().called, "no source: ready at once")
        source = FedSource(clock)
        discovery.service.sources[("api", 0, FileSpec(Path("/x")))] = source  # as sync() does
        d = discovery.whenReady()
        self.assertFalse(d.called)
        source.answer("10.0.0.1")
        self.assertTrue(d.called)
        silent = FedSource(clock)
        discovery.service.sources[("api", 1, FileSpec(Path("/y")))] = silent
        d = discovery.whenReady()
        clock.advance(READY_WITHIN - 0.1)
        self.assertFalse(d.called)
        clock.advance(0.1)
        self.assertTrue(d.called)


class FakeRequest:
    def __init__(self, method: bytes, path: bytes, body: bytes = b"") -> None:
        import io

        self.method = method
        self.path = path
        self.content = io.BytesIO(body)


class TargetControlTests(MembershipTestBase):
    def control(self, cluster: Cluster, method: bytes, path: bytes, body: bytes = b"") -> tuple[int, Any]:
        from txgateway.admin.targets import targetControl

        code, doc, _ = targetControl({"api": cluster}, FakeRequest(method, path, body))
        return code, doc

    def test_answers(self) -> None:
        """200 with the target; 404 unknown; 405 wrong method; 400 bad weight; 409 for http and https alike."""
        cluster, source, membership = self.cluster(static=("http://a:80",))
        code, doc = self.control(cluster, b"POST", b"/api/upstreams/api/targets/a:80/drain")
        self.assertEqual((code, doc["target"]["state"], doc["target"]["source"]), (200, "draining", "static"))
        self.assertEqual(self.control(cluster, b"POST", b"/api/upstreams/nope/targets/a:80/drain")[0], 404)
        self.assertEqual(self.control(cluster, b"POST", b"/api/upstreams/api/targets/b:80/drain")[0], 404)
        self.assertEqual(self.control(cluster, b"POST", b"/api/upstreams/api/targets/a:80/explode")[0], 404)
        self.assertEqual(self.control(cluster, b"GET", b"/api/upstreams/api/targets/a:80/enable")[0], 405)
        self.assertEqual(self.control(cluster, b"POST", b"/api/upstreams/api/targets/a:80/weight")[0], 405)
        for body in (b'{"weight": 0}', b'{"weight": "2"}', b'{"weight": true}', b"[]", b"{"):
            self.assertEqual(self.control(cluster, b"PUT", b"/api/upstreams/api/targets/a:80/weight", body)[0], 400,
                             body)
        code, doc = self.control(cluster, b"PUT", b"/api/upstreams/api/targets/a:80/weight", b'{"weight": 4}')
        self.assertEqual((code, doc["target"]["weight"]), (200, 4))
        source.publish([DiscoveredTarget("https", "a", 80, 1, "dns")], self.clock.seconds())
        self.assertEqual(self.control(cluster, b"POST", b"/api/upstreams/api/targets/a:80/enable")[0], 409)

    def test_ipv6HostInBrackets(self) -> None:
        cluster, source, membership = self.cluster()
        source.publish([DiscoveredTarget("http", "fd00::5", 8000, 1, "dns")], self.clock.seconds())
        code, doc = self.control(cluster, b"POST", b"/api/upstreams/api/targets/%5Bfd00::5%5D:8000/disable")
        self.assertEqual((code, doc["target"]["url"], doc["target"]["state"]), (200, "http://[fd00::5]:8000", "disabled"))
