"""The worker supervisor: restarts with backoff on an injected clock, its pipes, and how little it imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txgateway.logrelay import ACCESS_FD, WorkerOutput
from txgateway.observe.logging import jsonFormatter
from txgateway.restarting import RestartBackoff
from txgateway.workers import WorkerSupervisor

SRC = Path(__file__).resolve().parent.parent / "src"


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class SpawningReactor:
    """Records spawnProcess calls; the test plays the processes' part."""

    def __init__(self) -> None:
        self.spawned: list[tuple[Any, list[str], dict[int, Any], dict[str, str]]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: dict[str, str],
                     childFDs: dict[int, Any]) -> FakeProcess:
        self.spawned.append((proto, args, childFDs, env))
        return FakeProcess(1000 + len(self.spawned))


def crash(proto: Any) -> None:
    proto.processEnded(Failure(ProcessTerminated(signal=9)))


class BackoffTests(SynchronousTestCase):
    def test_waitDoublesWithEachCrashInARowUpToTheCap(self) -> None:
        """0.1 s after a first crash, then 0.2, 0.4 ... never more than 30 s."""
        clock = Clock()
        backoff = RestartBackoff(clock)
        delays = []
        for _ in range(12):
            backoff.started(0)
            clock.advance(1)
            delays.append(backoff.delayAfterExit(0))
        self.assertEqual(delays[:4], [0.1, 0.2, 0.4, 0.8])
        self.assertEqual(delays[-1], 30.0)

    def test_aWorkerThatStayedUpStartsOverAtTheFirstStep(self) -> None:
        """After running a while, a crash is a first crash again; each worker keeps its own count."""
        clock = Clock()
        backoff = RestartBackoff(clock, stable=10.0)
        for _ in range(3):
            backoff.started(0)
            backoff.delayAfterExit(0)
        backoff.started(1)
        self.assertEqual(backoff.delayAfterExit(1), 0.1)
        backoff.started(0)
        clock.advance(10)
        self.assertEqual(backoff.delayAfterExit(0), 0.1)


class SupervisorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reactor = SpawningReactor()
        self.lines: list[str] = []
        self.access: list[str] = []
        fmts = {i: jsonFormatter("info", i) for i in range(2)}
        output = WorkerOutput(self.lines.append, fmts.__getitem__, "json", self.access.append)
        self.registry = CollectorRegistry()
        self.restarts = Counter("txgateway_worker_restarts", "restarts", ["worker"], registry=self.registry)
        metricsDir = tempfile.mkdtemp(prefix="txgw-test-")
        self.addCleanup(shutil.rmtree, metricsDir, True)
        self.supervisor = WorkerSupervisor(self.reactor, self.clock, 2, "tcp:0:interface=127.0.0.1", ["txgateway"],
                                           executable="/bin/true", environ={}, output=output,
                                           metricsDir=metricsDir, restarts=self.restarts)
        self.supervisor.startService()
        self.addCleanup(self.stop)

    def stop(self) -> None:
        if self.supervisor.running:
            d = self.supervisor.stopService()
            for proto, *_ in self.reactor.spawned:
                if not proto.ended.called:
                    crash(proto)
            self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def restartCount(self, worker: str) -> float:
        return self.registry.get_sample_value("txgateway_worker_restarts_total", {"worker": worker}) or 0.0

    def test_workersWriteToPipesTheSupervisorReads(self) -> None:
        """stdout, stderr and the access-log pipe of every worker are read by the supervisor, not inherited."""
        self.assertEqual(len(self.reactor.spawned), 2)
        for _, args, childFDs, _ in self.reactor.spawned:
            self.assertEqual((childFDs[1], childFDs[2], childFDs[ACCESS_FD]), ("r", "r", "r"))
            self.assertEqual(args[args.index("--access-log-fd") + 1], str(ACCESS_FD))

    def test_linesOfEachPipeGoToTheirFile(self) -> None:
        """A worker's log lines go to the log, its access lines to the access file, each whole."""
        proto = self.reactor.spawned[1][0]
        proto.childDataReceived(1, b'{"message":"hello","worker":1}\n{"mess')
        proto.childDataReceived(ACCESS_FD, b'{"status":200,"worker":1}\n')
        proto.childDataReceived(1, b'age":"again","worker":1}\n')
        self.assertEqual(self.lines, ['{"message":"hello","worker":1}\n', '{"message":"again","worker":1}\n'])
        self.assertEqual(self.access, ['{"status":200,"worker":1}\n'])

    def test_aCrashedWorkerIsRestartedAfterTheBackoffAndCounted(self) -> None:
        """A killed worker is started again 0.1 s later (then 0.2 s), its restarts counted per worker."""
        crash(self.reactor.spawned[0][0])
        self.assertEqual(len(self.reactor.spawned), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertIn("--worker-id", self.reactor.spawned[2][1])
        self.assertEqual(self.reactor.spawned[2][1][self.reactor.spawned[2][1].index("--worker-id") + 1], "0")
        crash(self.reactor.spawned[2][0])
        self.clock.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.clock.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.assertEqual((self.restartCount("0"), self.restartCount("1")), (2.0, 0.0))

    def test_stoppingCancelsAPendingRestart(self) -> None:
        """A worker that died just before the stop is not started again, and no timer is left behind."""
        crash(self.reactor.spawned[0][0])
        self.stop()
        self.clock.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_aWorkerDyingMidLineLeavesNoTornLine(self) -> None:
        """What a dying worker had half written is flushed as a whole line naming it."""
        proto = self.reactor.spawned[0][0]
        proto.childDataReceived(1, b'{"message":"cut sh')
        crash(proto)
        self.assertEqual(json.loads(self.lines[-1])["worker"], 0)
        self.assertEqual(json.loads(self.lines[-1])["message"], '{"message":"cut sh')


# Builds the supervisor exactly as twistd's plugin does (minus running the
# reactor) and prints what it imported.
SCRIPT = """
import json, sys
from txgateway import tap
options = tap.Options()
options.parseOptions(["--config", sys.argv[1]])
service = tap.makeService(options)
print(json.dumps([type(service).__name__, sorted(sys.modules)]))
"""

# The request path and its libraries: what a worker needs and a supervisor must not carry.
HEAVY = ("txgateway.service", "txgateway.gateway", "txgateway.building", "txgateway.caching", "txgateway.forwarding",
         "txgateway.cluster", "txgateway.attempts", "txgateway.admin", "txgateway.http.client", "txgateway.http.site",
         "txgateway.http.h2channel", "txgateway.limiting", "txgateway.auth", "h2", "treq")


class FootprintTests(SynchronousTestCase):
    def test_supervisorImportsNoneOfTheRequestPath(self) -> None:
        """With server.workers: 2 the process twistd starts supervises, and loads none of the gateway's request path."""
        directory = tempfile.mkdtemp(prefix="txgw-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        config = os.path.join(directory, "gw.yaml")
        with open(config, "w") as f:
            f.write('server: {listen: "tcp:0:interface=127.0.0.1", workers: 2}\n'
                    "upstreams: {app: {targets: [http://127.0.0.1:9101]}}\n"
                    "routes: [{name: all, match: {path_prefix: /}, upstream: app}]\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        out = subprocess.run([sys.executable, "-c", SCRIPT, config], capture_output=True, text=True, env=env,
                             timeout=60, check=True, cwd=directory)
        kind, modules = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(kind, "FleetSupervisor")  # the workers' supervisor with its hub (txgateway.fleet)
        self.assertIn("txgateway.workers", modules)
        loaded = sorted(m for m in modules if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY)))
        self.assertEqual(loaded, [])
