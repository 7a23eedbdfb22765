"""`server.workers`: several processes serve one port, supervised, with one view of metrics."""

from __future__ import annotations

import os
import re
import signal
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, request, simpleConfig, waitFor


def workersSeen(gw: GatewayProcess, want: int, tries: int = 400) -> dict[int, int]:
    """worker id -> pid, from /ready over fresh connections (the kernel spreads them)."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        body = gw.request("GET", "/ready").json()
        seen[body["worker"]] = body["pid"]
        if len(seen) >= want:
            break
    return seen


class WorkerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = Backend("wb").start()
        self.addCleanup(self.backend.stop)
        config = simpleConfig([self.backend.url]).replace("  timeouts: {drain: 10s}", "  timeouts: {drain: 10s}\n  workers: 2")
        self.gw = GatewayProcess(config).start()
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)

    def test_twoWorkersServeOnePort(self) -> None:
        """Both workers answer on the one listening port, each a process of its own."""
        seen = workersSeen(self.gw, 2)
        self.assertEqual(sorted(seen), [0, 1])
        self.assertEqual(len(set(seen.values())), 2)

    def test_metricsAddUpOverWorkers(self) -> None:
        """/metrics from whichever worker answers counts the requests of both."""
        workersSeen(self.gw, 2)
        for _ in range(40):
            self.assertEqual(self.gw.request("GET", "/echo").status, 200)
        text = self.gw.request("GET", "/metrics").body.decode()
        total = sum(float(v) for v in re.findall(r'txgateway_http_requests_total\{[^}]*route="all"[^}]*\} ([\d.e+]+)', text))
        self.assertEqual(total, 40.0)

    def test_aKilledWorkerIsReplacedAndNoRequestFails(self) -> None:
        """After one worker is killed every request still succeeds, and a new worker takes its place."""
        seen = workersSeen(self.gw, 2)
        os.kill(seen[0], signal.SIGKILL)
        for _ in range(60):
            self.assertEqual(self.gw.request("GET", "/echo", timeout=15).status, 200)
        replaced = waitFor(lambda: (s := workersSeen(self.gw, 2, tries=50)).get(0) not in (None, seen[0]) and s,
                           what="worker 0 to be restarted")
        self.assertNotEqual(replaced[0], seen[0])

    def test_sigtermDrainsEveryWorker(self) -> None:
        """SIGTERM to the supervisor lets in-flight requests on the workers finish, then exits 0."""
        workersSeen(self.gw, 2)
        results: list[Any] = []

        def slow() -> None:
            results.append(self.gw.request("GET", "/slow?ms=1200", timeout=20))

        before = self.backend.count()
        threads = [threading.Thread(target=slow) for _ in range(4)]
        for t in threads:
            t.start()
        waitFor(lambda: self.backend.count() >= before + 5, what="slow requests to reach the backend")
        self.gw.signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        self.assertEqual([r.status for r in results], [200] * 4)
        self.assertEqual(self.gw.stop(), 0)


class WorkerReloadTests(SynchronousTestCase):
    def test_adminReloadReachesEveryWorker(self) -> None:
        """POST /api/config/reload on the admin listener, answered by one worker, reloads them all."""
        backend = Backend("wr").start()
        self.addCleanup(backend.stop)
        base = simpleConfig([backend.url]).replace("  timeouts: {drain: 10s}",
                                                   "  timeouts: {drain: 10s}\n  workers: 2\n  watch_config: false")
        base += 'admin:\n  listen: "tcp:0:interface=127.0.0.1"\n'
        gw = GatewayProcess(base.replace("match: {path_prefix: /}", "match: {path_prefix: /old}")).start()
        adminPort = gw.adminPort
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        workersSeen(gw, 2)
        self.assertEqual(gw.request("GET", "/new/echo").status, 404)
        gw.configPath.write_text(gw.config.replace("match: {path_prefix: /old}", "match: {path_prefix: /new}"))
        self.assertEqual(request(adminPort, "POST", "/api/config/reload").status, 200)
        waitFor(lambda: all(gw.request("GET", "/new/echo").status == 200 for _ in range(40)),
                what="every worker to serve the new route")


class OrphanTests(SynchronousTestCase):
    def test_workersStopWhenTheSupervisorIsKilled(self) -> None:
        """A supervisor killed with SIGKILL takes its workers with it: nothing keeps serving unsupervised."""
        backend = Backend("wo").start()
        self.addCleanup(backend.stop)
        config = simpleConfig([backend.url]).replace("  timeouts: {drain: 10s}", "  timeouts: {drain: 2s}\n  workers: 2")
        gw = GatewayProcess(config).start()
        self.addCleanup(gw.cleanup)
        pids = set(workersSeen(gw, 2).values())
        gw.signal(signal.SIGKILL)

        def gone() -> bool:
            return not any(os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid) for pid in pids)

        waitFor(gone, what="the workers to stop after their supervisor died")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((line for line in f if line.startswith("State:")), "").lower()
    except OSError:
        return "zombie"
