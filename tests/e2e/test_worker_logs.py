"""
Workers' log lines whole and complete in the `--logfile` file, across SIGUSR1 rotation; crashed workers
restarted and counted (issue 26).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, childEnv, simpleConfig, waitFor

HERE = Path(__file__).resolve().parent


def workersConfig(backend: Backend, n: int = 2, logging: str = "") -> str:
    """simpleConfig with C{n} workers and C{logging} lines added to its logging section."""
    config = simpleConfig([backend.url]).replace("  timeouts: {drain: 10s}", f"  timeouts: {{drain: 10s}}\n  workers: {n}")
    return config.replace("logging:\n  level: info\n", "logging:\n  level: info\n" + logging)


def linesOf(directory: Path, prefix: str) -> list[str]:
    """
    Every line of every file whose name starts with C{prefix}: the file, its rotations (twistd's
    C{--logfile} rotates at 1 MB by itself), what was moved away.  C{"gw.log$"} is that file alone.
    """
    lines: list[str] = []
    paths = [directory / prefix[:-1]] if prefix.endswith("$") else sorted(directory.glob(prefix + "*"))
    for path in paths:
        text = path.read_text()
        lines += text[:text.rfind("\n") + 1].splitlines()  # a last line still being written is not one yet
    return lines


def accessLines(directory: Path, prefix: str) -> list[dict[str, Any]]:
    """The access-log lines among them; every line must be valid JSON."""
    parsed = [json.loads(line) for line in linesOf(directory, prefix)]  # a torn line fails here
    return [x for x in parsed if "duration_ms" in x]


def startLoad(port: int, rate: int, seconds: float) -> subprocess.Popen[str]:
    """tests/e2e/loadgen.py: rate x seconds POSTs, each on its own connection (concurrency bounded by the rate)."""
    return subprocess.Popen([sys.executable, str(HERE / "loadgen.py"), str(port), "/echo", str(rate), str(seconds), "0"],
                            env=childEnv(), stdout=subprocess.PIPE, text=True)


class WorkerLogFileTests(SynchronousTestCase):
    def assertEveryRequestLoggedOnce(self, workers: int, requests: int, rate: int) -> None:
        """
        C{requests} POSTs at C{rate}/s to C{workers} workers, the log moved away and SIGUSR1 sent mid-run:
        exactly one access line per request, every line of every file valid JSON, each access line naming
        its worker, the lines split between the moved file and the new one.
        """
        backend = Backend("wl").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(workersConfig(backend, workers), logFile="gw.log").start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        load = startLoad(gw.port, rate, requests / rate)
        self.addCleanup(lambda: load.poll() is None and load.kill())
        waitFor(lambda: len(accessLines(gw.dir, "gw.log")) >= requests // 4, timeout=60, what="a quarter logged")
        os.rename(gw.dir / "gw.log", gw.dir / "gw.log.moved")  # what logrotate does, then its postrotate:
        gw.signal(signal.SIGUSR1)
        out, _ = load.communicate(timeout=120)
        self.assertEqual(json.loads(out)["statuses"], {"200": requests})

        def echoed() -> list[dict[str, Any]]:
            return [x for x in accessLines(gw.dir, "gw.log") if x["path"] == "/echo"]  # not the harness's /ready

        lines = waitFor(lambda: len(x := echoed()) >= requests and x, timeout=30, what="every access line")
        self.assertEqual(len(lines), requests)
        self.assertEqual(len({x["request_id"] for x in lines}), requests)
        self.assertEqual({x["worker"] for x in lines}, set(range(workers)))
        moved = [x for x in accessLines(gw.dir, "gw.log.moved") if x["path"] == "/echo"]
        self.assertTrue(0 < len(moved) < requests, len(moved))
        self.assertTrue(any(x["path"] == "/echo" for x in accessLines(gw.dir, "gw.log$")))
        # twistd's own lines and the gateway's, from workers and supervisor alike, are JSON too.
        listening = [json.loads(x) for x in linesOf(gw.dir, "gw.log") if "txgateway listening" in x]
        self.assertEqual(sorted(x["worker"] for x in listening), list(range(workers)))

    def test_twoThousandRequestsTwoWorkers(self) -> None:
        """2,000 requests to 2 workers under load, rotated mid-run: exactly 2,000 whole access lines."""
        self.assertEveryRequestLoggedOnce(2, 2000, 250)

    def test_fourWorkers(self) -> None:
        """The same with 4 workers (1,000 requests)."""
        self.assertEveryRequestLoggedOnce(4, 1000, 250)

    def test_accessLogFileWrittenByTheSupervisorAlone(self) -> None:
        """With logging.access_log_file, the workers' lines reach it whole through the supervisor, and SIGUSR1 reopens it."""
        backend = Backend("wa").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(workersConfig(backend, logging="  access_log_file: access.log\n"),
                            logFile="gw.log").start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        for _ in range(100):
            self.assertEqual(gw.request("GET", "/echo").status, 200)
        waitFor(lambda: len(accessLines(gw.dir, "access.log")) >= 101, what="the first lines")  # and the /ready
        os.rename(gw.dir / "access.log", gw.dir / "access.log.1")
        gw.signal(signal.SIGUSR1)
        waitFor(lambda: (gw.dir / "access.log").exists(), what="the access log reopened")
        for _ in range(100):
            self.assertEqual(gw.request("GET", "/echo").status, 200)
        waitFor(lambda: len(accessLines(gw.dir, "access.log$")) >= 100, what="every line")
        self.assertEqual(len(accessLines(gw.dir, "access.log.1")), 101)
        self.assertEqual(len(accessLines(gw.dir, "access.log$")), 100)
        self.assertEqual({x["worker"] for x in accessLines(gw.dir, "access.log")}, {0, 1})
        self.assertEqual(accessLines(gw.dir, "gw.log"), [])  # access lines go to their own file only


class WorkerRestartTests(SynchronousTestCase):
    def test_aKilledWorkerIsRestartedLoggedAndCounted(self) -> None:
        """kill -9 of a worker: the others keep serving, it is back, the log says so and /metrics counts it."""
        backend = Backend("wk").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(workersConfig(backend), logFile="gw.log").start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        pids = {}
        waitFor(lambda: pids.update({(b := gw.request("GET", "/ready").json())["worker"]: b["pid"]}) or len(pids) == 2,
                what="both workers")
        os.kill(pids[0], signal.SIGKILL)
        for _ in range(40):
            self.assertEqual(gw.request("GET", "/echo", timeout=15).status, 200)
        restarted = re.compile(r'"message":"worker 0 restarted \(pid (\d+)\)"')
        newPid = int(waitFor(lambda: restarted.search(gw.log()), what="the restart logged").group(1))
        self.assertNotEqual(newPid, pids[0])

        def counted() -> bool:
            text = gw.request("GET", "/metrics").body.decode()
            return 'txgateway_worker_restarts_total{worker="0"} 1.0' in text

        waitFor(counted, what="the restart counted on /metrics")


class SingleGatewayRotationTests(SynchronousTestCase):
    def test_sigusr1ReopensBothLogsOfOneProcess(self) -> None:
        """Without workers, SIGUSR1 after a move starts new --logfile and access_log_file files; nothing lost."""
        backend = Backend("ws").start()
        self.addCleanup(backend.stop)
        config = simpleConfig([backend.url]).replace("logging:\n  level: info\n",
                                                     "logging:\n  level: info\n  access_log_file: access.log\n")
        gw = GatewayProcess(config, logFile="gw.log").start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        for _ in range(20):
            self.assertEqual(gw.request("GET", "/echo").status, 200)
        os.rename(gw.dir / "gw.log", gw.dir / "gw.log.moved")
        os.rename(gw.dir / "access.log", gw.dir / "access.log.moved")
        gw.signal(signal.SIGUSR1)
        waitFor(lambda: (gw.dir / "access.log").exists() and (gw.dir / "gw.log").exists(), what="both reopened")
        for _ in range(20):
            self.assertEqual(gw.request("GET", "/echo").status, 200)
        self.assertEqual(gw.stop(), 0)
        moved, new = accessLines(gw.dir, "access.log.moved"), accessLines(gw.dir, "access.log$")
        self.assertEqual(len(moved) + len(new), 41)  # and the harness's /ready
        self.assertEqual(len([x for x in new if x["path"] == "/echo"]), 20)
        self.assertIn("draining", (gw.dir / "gw.log").read_text())
        self.assertNotIn("draining", (gw.dir / "gw.log.moved").read_text())
