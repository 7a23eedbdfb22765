"""
Health checking end to end: real backends die, fail their health check and come back.

The processes run in real time (probes every 100ms); the test only polls
with deadlines.  Traffic comes from a background thread, one request after
another, so "under steady traffic" means the gateway is always busy while a
backend dies and returns.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, Traffic, request, simpleConfig, waitFor

UPSTREAM = """\
    balancer: round_robin
    timeouts: {connect: 1s, response: 5s}
    health:
      active: {path: /health, interval: 100ms, timeout: 500ms, healthy_after: 2, unhealthy_after: 2}
      when_all_unhealthy: fail_open
    retries: {attempts: 2, on: [connect_failure, reset, 502, 503], backoff: 1ms, budget: 100%}"""


def targetHealth(gw: GatewayProcess) -> dict[str, bool]:
    report = gw.request("GET", "/health", timeout=2).json()
    return {t["url"]: t["healthy"] for t in report["upstreams"]["app"]["targets"]}


class HealthEndToEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backends = [Backend(f"b{i}").start() for i in (1, 2, 3)]
        for b in self.backends:
            self.addCleanup(b.stop)
        self.gw = GatewayProcess(simpleConfig([b.url for b in self.backends], upstreamExtra=UPSTREAM))
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start()

    def traffic(self) -> Traffic:
        traffic = Traffic(self.gw.port).start()
        self.addCleanup(traffic.stop)
        waitFor(lambda: {b for _, b in traffic.results} >= {"b1", "b2", "b3"}, what="traffic reaching all three")
        return traffic

    def assertNoneFailed(self, traffic: Traffic) -> None:
        failed = [r for r in traffic.results if r[0] != 200]
        lines = [line for line in self.gw.log().splitlines() if '"status":5' in line]
        self.assertEqual(failed, [], f"{len(failed)} of {len(traffic.results)} failed: {traffic.errors[:3]}\n"
                                     + "\n".join(lines[:5]))

    def test_killedBackendIsTakenOutAndRejoinsOnRestart(self) -> None:
        """Kill one of three under traffic: nothing fails, it gets no attempts once unhealthy, and it rejoins."""
        traffic = self.traffic()
        dead = self.backends[0]
        dead.stop()
        waitFor(lambda: targetHealth(self.gw)[dead.url] is False, what="b1 marked unhealthy")
        mark = traffic.settled()
        attemptsAtDetection = self.attempts(dead.url)
        waitFor(lambda: len(traffic.since(mark)) >= 60, what="traffic after the health check gave up on b1")
        after = traffic.since(mark)
        self.assertEqual({b for _, b in after}, {"b2", "b3"})
        # No attempt at all went to b1 any more: not even one that was retried elsewhere.
        self.assertEqual(self.attempts(dead.url), attemptsAtDetection)

        revived = Backend("b1", port=dead.port).start()
        self.addCleanup(revived.stop)
        waitFor(lambda: targetHealth(self.gw)[dead.url] is True, what="b1 healthy again")
        mark = traffic.mark()
        waitFor(lambda: any(b == "b1" for _, b in traffic.since(mark)), what="traffic reaching b1 again")
        traffic.stop()
        self.assertNoneFailed(traffic)
        log = self.gw.log()
        self.assertEqual(log.count(f"target {dead.url} of app is unhealthy"), 1, log[-3000:])
        self.assertEqual(log.count(f"target {dead.url} of app is healthy again"), 1, log[-3000:])

    def test_backendFailingItsHealthCheckIsTakenOut(self) -> None:
        """A backend whose /health answers 503 gets no traffic until it answers 200 again."""
        traffic = self.traffic()
        sick = self.backends[1]
        self.assertEqual(request(sick.port, "POST", "/control/health?ok=0").status, 200)
        waitFor(lambda: targetHealth(self.gw)[sick.url] is False, what="b2 marked unhealthy")
        mark = traffic.settled()
        waitFor(lambda: len(traffic.since(mark)) >= 60, what="traffic after b2 was taken out")
        self.assertEqual({b for _, b in traffic.since(mark)}, {"b1", "b3"})
        self.assertEqual(request(sick.port, "POST", "/control/health?ok=1").status, 200)
        waitFor(lambda: targetHealth(self.gw)[sick.url] is True, what="b2 healthy again")
        mark = traffic.mark()
        waitFor(lambda: any(b == "b2" for _, b in traffic.since(mark)), what="traffic reaching b2 again")
        traffic.stop()
        self.assertNoneFailed(traffic)
        metrics = self.gw.request("GET", "/metrics").body.decode()
        self.assertIn(f'txgateway_target_health_transitions_total{{target="{sick.url}",to="unhealthy",upstream="app"}} 1.0',
                      metrics)

    def attempts(self, url: str) -> float:
        """Attempts the gateway sent to C{url}, over every outcome, from its /metrics."""
        total = 0.0
        for line in self.gw.request("GET", "/metrics").body.decode().splitlines():
            if line.startswith("txgateway_upstream_requests_total{") and f'target="{url}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

