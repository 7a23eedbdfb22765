"""`make run`'s demo: the bundled example config with its local demo backends works out of the box."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from .harness import REPO, childEnv, request, waitFor


class DemoTests(SynchronousTestCase):
    def test_bundledExampleServesThroughTheDemoBackends(self) -> None:
        """The example gateway answers /health, forwards /predict, and stops cleanly on SIGTERM."""
        proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "run_demo.py")], env=childEnv(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout:
                proc.stdout.close()

        self.addCleanup(stop)
        waitFor(lambda: request(8080, "GET", "/ready", timeout=1).status == 200, timeout=30, what="the demo gateway")
        health = request(8080, "GET", "/health")
        self.assertEqual(health.status, 200)
        self.assertEqual(sorted(health.json()["upstreams"]), ["inference", "sessions", "users"])
        resp = request(8080, "POST", "/predict", {"Content-Type": "application/json"}, body=b'{"text":"fast!"}')
        self.assertEqual(resp.status, 200)
        self.assertEqual(json.loads(resp.body)["label"], "positive")
        users = request(8080, "GET", "/api/v1/users", {"Host": "users.example.com"})
        self.assertEqual(users.status, 200)
        self.assertIn(json.loads(users.body)["backend"], ("users-a", "users-b"))
