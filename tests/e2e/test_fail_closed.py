"""
fail_closed end to end (issue 18, item 10): with every target unhealthy the
real gateway answers 503 at once, and the 503 says when to come back.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import GatewayProcess, deadPort, simpleConfig, waitFor

UPSTREAM = """\
    health:
      active: {path: /health, interval: 2s, timeout: 200ms, healthy_after: 2, unhealthy_after: 1}
      when_all_unhealthy: fail_closed"""


class FailClosedTests(SynchronousTestCase):
    def test_503CarriesRetryAfter(self) -> None:
        """Every target failing its check: 503 with Retry-After = the checks needed to pass again (2 x 2s)."""
        gw = GatewayProcess(simpleConfig([f"http://127.0.0.1:{deadPort()}"], upstreamExtra=UPSTREAM))
        self.addCleanup(gw.cleanup)
        gw.start()
        refused = waitFor(lambda: (lambda r: r if r.status == 503 else None)(gw.request("GET", "/echo")), 10,
                          "the 503 of fail_closed")
        self.assertEqual(refused.header("Retry-After"), "4")
        self.assertIn("fail_closed", refused.json()["reason"])
