"""
Workers sharing breakers and health through the hub (issue 26), in memory:
real gateway services joined to a real hub (see tests/fleetsupport.py).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txgateway.fleet.sharing import SharedBreaker, verdictOf

from .fleetsupport import CONFIG, Fleet


class BreakerSharingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fleet = Fleet(CONFIG.format(upstream="    circuit_breaker: {failures: 3, open_for: 10s}", route=""))

    def test_failuresInEitherWorkerOpenEveryBreaker(self) -> None:
        """Two failures in worker 0 and one in worker 1 open the target's breaker in both: one gateway's count."""
        fleet = self.fleet
        fleet.request(0, b"/x?status=500")  # a round robin: a, b, a, b...
        fleet.request(0, b"/x?status=500")
        fleet.request(0, b"/x?status=500")
        self.assertEqual([fleet.endpoint(i).breaker.state for i in (0, 1)], ["closed", "closed"])
        fleet.request(1, b"/x?status=500")
        self.assertEqual([fleet.endpoint(i).breaker.state for i in (0, 1)], ["open", "open"])

    def test_onlyTheProberHoldsTheHalfOpenProbe(self) -> None:
        """Once open_for has passed, the prober (worker 0) may send the one probe; worker 1 may not."""
        fleet = self.fleet
        for _ in range(6):
            fleet.request(1, b"/x?status=500")
        fleet.advance(10)
        breakers = [fleet.endpoint(i).breaker for i in (0, 1)]
        self.assertEqual([b.state for b in breakers], ["half_open", "half_open"])
        self.assertFalse(breakers[1].allow())
        self.assertTrue(breakers[0].allow())
        breakers[0].recordSuccess()
        fleet.settle()
        self.assertEqual([b.state for b in breakers], ["closed", "closed"])

    def test_anAdoptedStateIsNotAnnouncedAgain(self) -> None:
        """A worker taking another's open breaker says nothing back: no echo between workers."""
        fleet = self.fleet
        breaker = fleet.endpoint(1).breaker
        self.assertIsInstance(breaker, SharedBreaker)
        breaker.adopt("open")
        self.assertEqual(fleet.links[1].toHub.value(), b"")


class HealthSharingTests(SynchronousTestCase):
    def test_aPassiveEjectionCountsEveryWorkersFailures(self) -> None:
        """min_requests 4: two failures seen by each worker eject the target in both."""
        fleet = Fleet(CONFIG.format(
            upstream="    health: {passive: {window: 60s, min_requests: 4, max_error_rate: 0.5, eject_for: 30s}}",
            route=""))
        for worker in (0, 0, 0, 0, 1, 1):
            fleet.request(worker, b"/x?status=500")  # each worker alternates a, b
        self.assertEqual([fleet.endpoint(i).ejectedUntil > 0 for i in (0, 1)], [False, False])  # 3 failures
        fleet.request(1, b"/x?status=500")
        # a's fourth failure: two seen by each worker, and both eject it.
        self.assertEqual([fleet.endpoint(i).ejectedUntil > 0 for i in (0, 1)], [True, True])

    def test_theProbersVerdictIsEveryWorkers(self) -> None:
        """The prober's verdict on a target, sent through the hub, is taken by every other worker."""
        fleet = Fleet(CONFIG.format(upstream="", route=""), n=3)
        prober = fleet.workers[0].service
        cluster = prober.gateway.runtime.clusters["app"]
        endpoint = fleet.endpoint(0)
        endpoint.activeHealthy = False
        fleet.members[0].send(verdictOf(cluster, endpoint, 0.0))
        fleet.settle()
        self.assertEqual([fleet.endpoint(i).activeHealthy for i in (1, 2)], [False, False])

    def test_theProberRoleMovesWhenTheProberLeaves(self) -> None:
        fleet = Fleet(CONFIG.format(upstream="", route=""))
        self.assertEqual([m.isProber for m in fleet.members], [True, False])
        fleet.links[0].cut()
        fleet.settle()
        self.assertTrue(fleet.members[1].isProber)


class ProberTests(SynchronousTestCase):
    """Active checks run in the prober only; its verdicts (here: probes nobody answers) reach the others."""

    def setUp(self) -> None:
        self.fleet = Fleet(CONFIG.format(route="", upstream=(
            "    health: {active: {path: /health, interval: 1s, timeout: 500ms, unhealthy_after: 1}}")))
        for fixture in self.fleet.workers:
            fixture.service.startService()
            self.addCleanup(fixture.service.stopService)
        self.fleet.settle()

    def test_onlyTheProberProbes(self) -> None:
        connects = [len(fixture.clock.tcpClients) for fixture in self.fleet.workers]
        self.assertEqual(connects, [2, 0])  # one probe per target, from worker 0 alone

    def test_theProbersVerdictReachesTheOthers(self) -> None:
        self.fleet.advance(0.5)  # the probes' timeout: no answer, unhealthy after one
        self.assertEqual([self.fleet.endpoint(i).activeHealthy for i in (0, 1)], [False, False])
