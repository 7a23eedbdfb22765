"""
The fleet's hub (issue 26), over in-memory transports on a Clock: who is
the prober, what a (re)joining worker is told, reloads validated once, and
the rate-limit counters it holds for every worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txgateway.config import parseConfig
from txgateway.fleet.bank import Bank
from txgateway.fleet.hub import SNAPSHOT, SWITCH_WITHIN, FleetHub
from txgateway.fleet.supervise import ENV, readConfig, withFleet
from txgateway.fleet.wire import WireProtocol, encode
from txgateway.workers import WorkerSupervisor

SRC = Path(__file__).resolve().parent.parent / "src"

GOOD = """\
upstreams:
  app: {targets: [http://127.0.0.1:9101]}
routes:
  - {name: all, match: {path_prefix: /}, upstream: app}
"""


class _Worker:
    """One worker's connection to the hub, as the hub sees it; what the hub wrote to it, parsed."""

    def __init__(self, hub: FleetHub, worker: int, generation: int = 1) -> None:
        self.transport = StringTransport()
        self.proto = WireProtocol(hub.received, hub.lost)
        self.proto.makeConnection(self.transport)
        self.say({"t": "hello", "worker": worker, "pid": 1000 + worker, "generation": generation})

    def say(self, message: dict[str, Any]) -> None:
        self.proto.dataReceived(encode(message))

    def heard(self) -> list[dict[str, Any]]:
        data = self.transport.value()
        self.transport.clear()
        return [json.loads(line) for line in data.splitlines()]

    def kinds(self) -> list[str]:
        return [m["t"] for m in self.heard()]

    def leave(self) -> None:
        self.proto.connectionLost(None)


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = tempfile.mkdtemp()
        self.file = Path(self.dir) / "gw.yaml"
        self.file.write_text(GOOD)
        self.hub = FleetHub(self.dir, None, self.clock, lambda: readConfig(str(self.file), {}), GOOD)
        self.addCleanup(self.hub.stopService)

    def snapshot(self) -> dict[str, Any]:
        return json.loads((Path(self.dir) / SNAPSHOT).read_text())  # type: ignore[no-any-return]

    def test_theLowestWorkerIsTheProberAndAnotherTakesOver(self) -> None:
        """Worker 0 probes; when it leaves, worker 1 does, and every worker is told."""
        w0, w1 = _Worker(self.hub, 0), _Worker(self.hub, 1)
        self.assertEqual(self.hub.prober, 0)
        w1.heard()
        w0.leave()
        [roster] = w1.heard()
        self.assertEqual((roster["t"], roster["prober"]), ("roster", 1))
        self.assertEqual(roster["workers"], [{"worker": 1, "pid": 1001, "generation": 1}])

    def test_aWorkerOnAnotherGenerationIsSentTheCurrentConfig(self) -> None:
        """A worker that joins on an older generation is sent the current one; one on it is not."""
        self.assertEqual(_Worker(self.hub, 0, generation=1).kinds(), ["roster"])
        self.hub.generation = 3
        late = _Worker(self.hub, 1, generation=1).heard()
        self.assertEqual(late[0], {"t": "config", "generation": 3, "text": GOOD})

    def test_aGoodReloadMovesEveryWorkerToTheNextGeneration(self) -> None:
        """The file is validated once; every worker is sent generation 2 and the snapshot follows."""
        w0, w1 = _Worker(self.hub, 0), _Worker(self.hub, 1)
        w0.heard(), w1.heard()
        changed = GOOD.replace("path_prefix: /", "path_prefix: /v2")
        self.file.write_text(changed)
        self.assertEqual(self.hub.reload(), [])
        for w in (w0, w1):
            self.assertEqual(w.heard(), [{"t": "config", "generation": 2, "text": changed}])
        self.assertEqual(self.snapshot(), {"generation": 2, "text": changed})
        w0.say({"t": "gen", "generation": 2, "problems": []})
        self.assertEqual([w["generation"] for w in self.hub.roster()["workers"]], [2, 1])

    def test_aBadReloadIsRejectedOnceAndNoWorkerMoves(self) -> None:
        """A broken file: its problems go to every worker once, the generation and the snapshot stay."""
        w0 = _Worker(self.hub, 0)
        w0.heard()
        self.file.write_text("routes: 7\n")
        problems = self.hub.reload()
        self.assertTrue(problems)
        [rejected] = w0.heard()
        self.assertEqual((rejected["t"], rejected["problems"]), ("rejected", problems))
        self.assertEqual(self.hub.generation, 1)
        self.assertEqual(self.snapshot(), {"generation": 1, "text": GOOD})

    def test_aSnapshotThatCannotBeWrittenRefusesTheReload(self) -> None:
        """Without the snapshot a restarted worker would start on another config: nobody moves."""
        w0 = _Worker(self.hub, 0)
        w0.heard()
        self.patch(self.hub, "directory", os.path.join(self.dir, "gone"))  # a directory removed under it
        problems = self.hub.reload()
        self.assertIn("cannot write the fleet's config snapshot", problems[0])
        self.assertEqual((self.hub.generation, w0.heard()), (1, []))

    def test_aWorkersReloadIsAnsweredOnceEveryWorkerSwitched(self) -> None:
        """C{reload} from a worker (admin API, SIGHUP) is answered when every worker reports the new generation."""
        w0, w1 = _Worker(self.hub, 0), _Worker(self.hub, 1)
        w0.heard(), w1.heard()
        w0.say({"t": "reload", "id": 7})
        self.assertEqual(w0.kinds(), ["config"])
        w0.say({"t": "gen", "generation": 2, "tried": 2, "problems": []})
        self.assertNotIn("reloaded", w0.kinds())
        w1.say({"t": "gen", "generation": 2, "tried": 2, "problems": []})
        self.assertEqual(w0.heard()[-1], {"t": "reloaded", "id": 7, "problems": [], "generation": 2})

    def test_aWorkerThatCannotSwitchIsNamedInTheAnswer(self) -> None:
        w0, w1 = _Worker(self.hub, 0), _Worker(self.hub, 1)
        w0.say({"t": "reload", "id": 1})
        w0.say({"t": "gen", "generation": 2, "tried": 2, "problems": []})
        w0.heard()
        w1.say({"t": "gen", "generation": 1, "tried": 2, "problems": ["cannot build the TLS context"]})
        answer = w0.heard()[-1]
        self.assertEqual((answer["t"], answer["problems"]), ("reloaded", ["worker 1: cannot build the TLS context"]))

    def test_aWorkerThatNeverAnswersIsNotWaitedForForever(self) -> None:
        w0, _ = _Worker(self.hub, 0), _Worker(self.hub, 1)
        w0.say({"t": "reload", "id": 1})
        w0.say({"t": "gen", "generation": 2, "tried": 2, "problems": []})
        w0.heard()
        self.clock.advance(SWITCH_WITHIN)
        answer = w0.heard()[-1]
        self.assertEqual(answer["t"], "reloaded")
        self.assertIn("not every worker reported generation 2", answer["problems"][0])

    def test_verdictsAreRelayedAndReplayedToNewWorkers(self) -> None:
        """The prober's verdict reaches the others (not itself), and a worker joining later hears it too."""
        w0, w1 = _Worker(self.hub, 0), _Worker(self.hub, 1)
        w0.heard(), w1.heard()
        verdict = {"t": "health", "u": "app", "url": "http://a:1", "healthy": False, "ejected": False}
        w0.say(verdict)
        self.assertEqual(w0.heard(), [])
        self.assertEqual(w1.heard(), [verdict])
        self.assertIn(verdict, _Worker(self.hub, 2).heard())

    def test_outcomesGoToEveryOtherWorker(self) -> None:
        w0, w1, w2 = _Worker(self.hub, 0), _Worker(self.hub, 1), _Worker(self.hub, 2)
        for w in (w0, w1, w2):
            w.heard()
        out = {"t": "out", "u": "app", "url": "http://a:1", "ok": 0, "fail": 2}
        w1.say(out)
        self.assertEqual((w0.heard(), w1.heard(), w2.heard()), ([out], [], [out]))

    def test_aMalformedLineIsDroppedAndTheConnectionStays(self) -> None:
        w0 = _Worker(self.hub, 0)
        w0.heard()
        w0.proto.dataReceived(b"not json\n[1, 2]\n")
        w0.say({"t": "lease", "id": 1, "route": "r", "key": "k", "spec": ["token_bucket", 1.0, 1.0], "want": 1})
        self.assertEqual(w0.heard()[-1]["t"], "grant")
        self.assertFalse(w0.transport.disconnecting)

    def test_leasesAreCountedForEveryWorker(self) -> None:
        """Two workers leasing from one 10-token bucket get 10 tokens in all, then a refusal with its wait."""
        w0, w1 = _Worker(self.hub, 0), _Worker(self.hub, 1)
        w0.heard(), w1.heard()
        spec = ["token_bucket", 5.0, 10.0]
        granted = []
        for i in range(4):
            w = (w0, w1)[i % 2]
            w.say({"t": "lease", "id": i, "route": "r", "key": "k", "spec": spec, "want": 4})
            granted.append(w.heard()[0]["n"])
        self.assertEqual(granted, [4, 4, 2, 0])
        w1.say({"t": "lease", "id": 9, "route": "r", "key": "k", "spec": spec, "want": 4})
        self.assertAlmostEqual(w1.heard()[0]["retry"], 0.2)


class BankTests(SynchronousTestCase):
    def test_tokenBucketRefillsAndTakesBackUnused(self) -> None:
        bank = Bank()
        spec = ("token_bucket", 10.0, 5.0)
        self.assertEqual(bank.grant("r", "k", spec, 5, 0.0)[0], 5)
        self.assertEqual(bank.grant("r", "k", spec, 5, 0.0)[0], 0)
        self.assertEqual(bank.grant("r", "k", spec, 5, 0.3)[0], 3)
        bank.giveBack("r", "k", spec, 2, 0.3)
        self.assertEqual(bank.grant("r", "k", spec, 5, 0.3)[0], 2)

    def test_slidingWindowCountsOneWindow(self) -> None:
        bank = Bank()
        spec = ("sliding_window", 10.0, 1.0)
        self.assertEqual(bank.grant("r", "k", spec, 8, 0.0)[0], 8)
        n, _, _, retry = bank.grant("r", "k", spec, 8, 0.5)
        self.assertEqual(n, 2)
        self.assertEqual(bank.grant("r", "k", spec, 8, 0.6)[0], 0)
        bank.giveBack("r", "k", spec, 3, 0.7)
        self.assertEqual(bank.grant("r", "k", spec, 8, 0.7)[0], 3)

    def test_aChangedLimitStartsAfresh(self) -> None:
        bank = Bank()
        bank.grant("r", "k", ("token_bucket", 1.0, 2.0), 2, 0.0)
        self.assertEqual(bank.grant("r", "k", ("token_bucket", 1.0, 3.0), 3, 0.0)[0], 3)

    def test_keysAreBounded(self) -> None:
        bank = Bank(maxKeys=3)
        for i in range(10):
            bank.grant("r", str(i), ("token_bucket", 1.0, 1.0), 1, 0.0)
        self.assertEqual(len(bank.counters), 3)


class SupervisorFootprintTests(SynchronousTestCase):
    def test_theSupervisorSideLoadsNoRequestPath(self) -> None:
        """The hub and its wiring load no service, no clients, no admin: the supervisor stays small."""
        script = ("import sys, txgateway.fleet.supervise; "
                  "print(' '.join(m for m in sys.modules if m.startswith(('txgateway', 'treq'))))")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONPATH=str(SRC))).stdout.split()
        for heavy in ("txgateway.service", "txgateway.gateway", "txgateway.admin", "txgateway.limiting",
                      "txgateway.http.client", "txgateway.fleet.member", "treq"):
            self.assertNotIn(heavy, out)


class ReadConfigTests(SynchronousTestCase):
    def test_problemsNameTheKey(self) -> None:
        path = Path(tempfile.mkdtemp()) / "gw.yaml"
        path.write_text(GOOD.replace("upstream: app", "upstream: nope"))
        text, problems = readConfig(str(path), {})
        self.assertIsNone(text)
        self.assertTrue(any("routes[0]" in p for p in problems), problems)

    def test_anUnreadableFile(self) -> None:
        text, problems = readConfig("/nonexistent/gw.yaml", {})
        self.assertIsNone(text)
        self.assertIn("cannot read config file", problems[0])


class WithFleetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(tempfile.mkdtemp()) / "gw.yaml"
        self.path.write_text(GOOD)
        self.reactor = MemoryReactorClock()
        self.supervisor = WorkerSupervisor(self.reactor, self.reactor, 2, "tcp:0", [], environ={})
        self.fleet = withFleet(self.supervisor, str(self.path), parseConfig(GOOD), self.reactor, environ={})
        self.addCleanup(self.fleet.hub.stopService)

    def test_workersAreToldWhereTheHubIs(self) -> None:
        self.assertEqual(self.supervisor.environ[ENV], self.fleet.hub.directory)
        self.assertEqual(json.loads((Path(self.fleet.hub.directory) / SNAPSHOT).read_text()),
                         {"generation": 1, "text": GOOD})

    def test_theSupervisorsWatcherFollowsWatchConfig(self) -> None:
        """Only the supervisor watches the file, at the interval the accepted config gives."""
        watcher = self.fleet.getServiceNamed("config-watcher")
        self.assertEqual(watcher.interval, 2.0)
        self.path.write_text("server: {watch_config: 500ms}\n" + GOOD)
        self.assertEqual(self.fleet.hub.reload(), [])
        self.assertEqual(watcher.interval, 0.5)
