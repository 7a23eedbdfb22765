"""
C{LOG_LEVEL=debug} on the real twistd process (#18 item 11): each request's
routing and target decisions are JSON log lines carrying its request id,
route, upstream and target.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, deadPort, simpleConfig


class DebugLogTests(SynchronousTestCase):
    def test_routingAndTargetDecisions(self) -> None:
        backend = Backend("dbg").start()
        self.addCleanup(backend.stop)
        dead = f"http://127.0.0.1:{deadPort()}"
        config = simpleConfig([dead, backend.url], upstreamExtra="    balancer: round_robin\n"
                              "    retries: {attempts: 1, backoff: 0s}")
        config = config.replace("  level: info", "  level: info\n  format: json")
        gw = GatewayProcess(config, env={"LOG_LEVEL": "debug"})
        self.addCleanup(gw.cleanup)
        gw.start()
        # Round robin over two targets: one of two requests is first sent to the dead one.
        for n in (1, 2):
            self.assertEqual(gw.request("GET", f"/echo/{n}", {"X-Request-ID": f"dbg-{n}"}).status, 200)
        self.assertEqual(gw.request("GET", "/echo/3", {"X-Request-ID": "dbg-3"}).status, 200)
        gw.stop()
        events: list[dict[str, Any]] = []
        for line in gw.log().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("level") == "debug" and str(event.get("request_id", "")).startswith("dbg-"):
                    events.append(event)
        messages = [e["message"] for e in events]
        for n in (1, 2, 3):
            mine = [e for e in events if e["request_id"] == f"dbg-{n}"]
            self.assertIn("route all (path_prefix=/) to upstream app", mine[0]["message"], messages)
            chosen = [e for e in mine if "chosen by round_robin" in e["message"]]
            self.assertTrue(chosen, messages)
            self.assertEqual({(e["route"], e["upstream"]) for e in mine}, {("all", "app")})
            self.assertEqual(chosen[-1]["target"], backend.url)
        retried = [e for e in events if "failed: connect_failure; retrying" in e["message"]]
        self.assertTrue(retried, messages)
        self.assertEqual(retried[0]["target"], dead)
