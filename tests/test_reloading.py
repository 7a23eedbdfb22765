"""
Hot reload: the config file watcher, C{GatewayService.reload}, and what a
reload keeps (endpoints, pools, health state, breakers) and what it swaps.

Time is a L{Clock}; the file system is a real temp directory, with
modification times set explicitly so no test depends on timestamp
granularity.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from txgateway import tap
from txgateway.building import ClientFactory
from txgateway.config import UpstreamConfig, loadConfig
from txgateway.reloading import ConfigWatcher
from txgateway.service import GatewayService

BASE = """\
server:
  listen: "tcp:0:interface=127.0.0.1"
  watch_config: {watch}
upstreams:
  app:
    targets: [{targets}]
{upstreamExtra}
  other:
    targets: [http://127.0.0.1:9200]
routes:
{routes}
"""

ROUTE_A = "  - {name: a, match: {path_prefix: /a}, upstream: app}"
ROUTE_B = "  - {name: b, match: {path_prefix: /b}, upstream: other}"


def configText(routes: str = ROUTE_A, targets: str = "http://127.0.0.1:9100", upstreamExtra: str = "",
               watch: str = "2s") -> str:
    return BASE.format(routes=routes, targets=targets, upstreamExtra=upstreamExtra, watch=watch)


class FileMixin:
    """A config file in a temp dir whose mtime moves forward one second per write."""

    addCleanup: Any

    def makeFile(self, text: str) -> Path:
        # tempfile, not mktemp(): under pytest mktemp() would leave folders in the working tree.
        d = Path(tempfile.mkdtemp(prefix="txgw-reload-"))
        self.addCleanup(shutil.rmtree, d, True)
        self.path = d / "gw.yaml"
        self.mtime = 1_700_000_000
        self.write(text)
        return self.path

    def write(self, text: str) -> None:
        self.path.write_text(text)
        self.touch()

    def touch(self) -> None:
        self.mtime += 1
        os.utime(self.path, ns=(self.mtime * 10**9, self.mtime * 10**9))


class ConfigWatcherTests(FileMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.calls: list[str] = []
        self.answer: list[str] = []
        self.makeFile("v1")

    def reload(self) -> list[str]:
        self.calls.append(self.path.read_text())
        return self.answer

    def startWatcher(self, interval: float = 2.0) -> ConfigWatcher:
        w = ConfigWatcher(self.path, self.reload, self.clock, interval)
        w.startService()
        self.addCleanup(lambda: w.running and w.stopService())
        return w

    def test_unchangedFileReloadsNothing(self) -> None:
        """Polls of a file nobody touched reload nothing."""
        self.startWatcher()
        self.clock.pump([2.0] * 5)
        self.assertEqual(self.calls, [])

    def test_changedContentReloadsOnce(self) -> None:
        """A content change reloads at the next poll, and only once."""
        self.startWatcher()
        self.write("v2")
        self.clock.advance(1.9)
        self.assertEqual(self.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, ["v2"])
        self.clock.pump([2.0] * 3)
        self.assertEqual(self.calls, ["v2"])

    def test_touchWithoutChangeReloadsNothing(self) -> None:
        """A new mtime with the same bytes (touch, save without edits) is not a change."""
        self.startWatcher()
        self.touch()
        self.clock.advance(2.0)
        self.write("v1")
        self.clock.advance(2.0)
        self.assertEqual(self.calls, [])

    def test_replacedFileIsSeen(self) -> None:
        """An editor that writes a new file and renames it over the old one is picked up."""
        self.startWatcher()
        tmp = self.path.with_name("gw.yaml.tmp")
        tmp.write_text("v2")
        os.utime(tmp, ns=(1, 1))  # an mtime older than the original's: only the inode changed
        os.replace(tmp, self.path)
        self.clock.advance(2.0)
        self.assertEqual(self.calls, ["v2"])

    def test_rejectedEditIsReportedOnceThenTheNextEditIsTried(self) -> None:
        """A rejected edit returns its problems once; a later edit is tried again."""
        w = self.startWatcher()
        self.answer = ["bad"]
        self.write("broken")
        self.assertEqual(w.check(), ["bad"])
        self.touch()
        self.assertIsNone(w.check())
        self.answer = []
        self.write("fixed")
        self.assertEqual(w.check(), [])
        self.assertEqual(self.calls, ["broken", "fixed"])

    def test_missingFileKeepsWatching(self) -> None:
        """A file that is briefly gone is not an error; when it returns changed, it is reloaded."""
        self.startWatcher()
        self.path.unlink()
        self.clock.pump([2.0] * 3)
        self.assertEqual(self.calls, [])
        self.write("v2")
        self.clock.advance(2.0)
        self.assertEqual(self.calls, ["v2"])

    def test_reloadRaisingDoesNotStopTheLoop(self) -> None:
        """An exception from reload() is logged and the loop goes on."""
        boom = [True]

        def reload() -> list[str]:
            if boom:
                boom.clear()
                raise RuntimeError("boom")
            self.calls.append(self.path.read_text())
            return []

        w = ConfigWatcher(self.path, reload, self.clock, 2.0)
        w.startService()
        self.addCleanup(w.stopService)
        self.write("v2")
        self.clock.advance(2.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.write("v3")
        self.clock.advance(2.0)
        self.assertEqual(self.calls, ["v3"])

    def test_stopServiceStopsPolling(self) -> None:
        """Stopping the watcher leaves no timer behind."""
        w = self.startWatcher()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        w.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zeroIntervalWatchesNothing(self) -> None:
        """watch_config: 0 runs no loop; setInterval turns it on and off."""
        w = self.startWatcher(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        w.setInterval(0.5)
        self.write("v2")
        self.clock.advance(0.5)
        self.assertEqual(self.calls, ["v2"])
        w.setInterval(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_syncTakesTheCurrentFileAsSeen(self) -> None:
        """After sync() (done by every reload), the same content is not reloaded again."""
        w = self.startWatcher()
        self.write("v2")
        w.sync()
        self.clock.advance(2.0)
        self.assertEqual(self.calls, [])


class ServiceReloadTests(FileMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.clock = Clock()

    def makeService(self, text: str, clients: ClientFactory | None = None) -> GatewayService:
        path = self.makeFile(text)
        service = GatewayService(loadConfig(path, {}), self.reactor, clock=self.clock, configPath=str(path),
                                 loadConfig=lambda p: loadConfig(p, {}), clients=clients)
        return service

    def routeFor(self, service: GatewayService, path: str) -> str | None:
        m = service.gateway.runtime.routes.match(b"GET", "h.test", path, Headers())
        return m.route.name if m.route is not None else None

    def reloads(self, service: GatewayService, result: str) -> float:
        return service.metrics.configReloads.labels(result)._value.get()  # type: ignore[no-any-return]

    def test_validChangeIsSwappedIn(self) -> None:
        """A valid new config: reload() returns no problems, new routes serve, success is counted."""
        service = self.makeService(configText())
        self.assertIsNone(self.routeFor(service, "/b"))
        self.write(configText(ROUTE_A + "\n" + ROUTE_B))
        self.assertEqual(service.reload(), [])
        self.assertEqual(self.routeFor(service, "/b"), "b")
        self.assertEqual(self.reloads(service, "success"), 1)
        self.assertEqual(service.gateway.history[-1]["result"], "success")

    def test_invalidChangeIsRejectedAndTheOldConfigServes(self) -> None:
        """An invalid config: its problems are returned, the failure counted, the old runtime kept."""
        service = self.makeService(configText())
        before = service.gateway.runtime
        self.write(configText(ROUTE_A + "\n  - {name: c, match: {path_prefix: /c}, upstream: nowhere}"))
        problems = service.reload()
        self.assertEqual(len(problems), 1)
        self.assertIn("no upstream named 'nowhere'", problems[0])
        self.assertIs(service.gateway.runtime, before)
        self.assertEqual(self.routeFor(service, "/a"), "a")
        self.assertEqual(self.reloads(service, "failure"), 1)
        self.assertEqual(service.gateway.history[-1]["problems"], problems)

    def test_unreadableYAMLIsRejected(self) -> None:
        """Broken YAML is a rejected reload, not a crash."""
        service = self.makeService(configText())
        self.write("routes: [unclosed")
        problems = service.reload()
        self.assertIn("not valid YAML", problems[0])
        self.assertEqual(self.routeFor(service, "/a"), "a")

    def test_aBugWhileBuildingIsARejectedReload(self) -> None:
        """An unexpected exception while building keeps the old config and is reported."""
        builds: list[str] = []

        def clients(upstream: UpstreamConfig) -> Any:
            """The first build's client; the reload's build hits a bug."""
            if upstream.name in builds:
                raise RuntimeError("boom")
            builds.append(upstream.name)
            return RequestTraversalAgent(Resource())

        service = self.makeService(configText(), clients)
        problems = service.reload()
        self.assertIn("internal error", problems[0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.reloads(service, "failure"), 1)

    def test_reloadWithAConfigObject(self) -> None:
        """reload(config) (the admin API's way) swaps that config in."""
        service = self.makeService(configText())
        self.write(configText(ROUTE_B))
        self.assertEqual(service.reload(loadConfig(self.path, {})), [])
        self.assertEqual(self.routeFor(service, "/b"), "b")
        self.assertIsNone(self.routeFor(service, "/a"))

    def test_watcherReloadsAChangedFileAndIgnoresAnUnchangedOne(self) -> None:
        """The service's watcher: a touch reloads nothing, an edit reloads once."""
        service = self.makeService(configText())
        service.startService()
        self.addCleanup(service.stopService)
        self.touch()
        self.clock.advance(2.0)
        self.assertEqual(service.gateway.history, [])
        self.write(configText(ROUTE_A + "\n" + ROUTE_B))
        self.clock.advance(2.0)
        self.assertEqual([h["result"] for h in service.gateway.history], ["success"])
        self.assertEqual(self.routeFor(service, "/b"), "b")
        self.clock.pump([2.0] * 3)
        self.assertEqual(len(service.gateway.history), 1)

    def test_watcherReportsAnInvalidEditOnce(self) -> None:
        """A broken edit is one failed reload, not one per poll; the old config keeps serving."""
        service = self.makeService(configText())
        service.startService()
        self.addCleanup(service.stopService)
        self.write("routes: [")
        self.clock.pump([2.0] * 4)
        self.assertEqual([h["result"] for h in service.gateway.history], ["failure"])
        self.assertEqual(self.routeFor(service, "/a"), "a")

    def test_explicitReloadIsNotRepeatedByTheWatcher(self) -> None:
        """After a SIGHUP/admin reload of an edit, the watcher does not reload the same edit again."""
        service = self.makeService(configText())
        service.startService()
        self.addCleanup(service.stopService)
        self.write(configText(ROUTE_A + "\n" + ROUTE_B))
        self.assertEqual(service.reload(), [])
        self.clock.pump([2.0] * 3)
        self.assertEqual(len(service.gateway.history), 1)

    def test_watchIntervalFollowsTheConfig(self) -> None:
        """A reload that changes server.watch_config changes the polling interval."""
        service = self.makeService(configText(watch="10s"))
        service.startService()
        self.addCleanup(service.stopService)
        self.write(configText(ROUTE_A + "\n" + ROUTE_B, watch="500ms"))
        self.clock.advance(10)
        self.assertEqual(len(service.gateway.history), 1)
        self.write(configText(watch="500ms"))
        self.clock.advance(0.5)
        self.assertEqual(len(service.gateway.history), 2)

    def test_noWatcherWithoutAConfigFile(self) -> None:
        """A gateway configured from the environment has no watcher and says why it cannot reload."""
        path = self.makeFile(configText())
        service = GatewayService(loadConfig(path, {}), self.reactor, clock=self.clock)
        self.assertIsNone(service.watcher)
        self.assertIn("no config file", service.reload()[0])

    def test_reloadRefusedWhileDraining(self) -> None:
        """During shutdown a reload is refused, and the watcher has stopped."""
        service = self.makeService(configText())
        service.startService()
        service.stopService()
        self.assertIn("shutting down", service.reload()[0])
        assert service.watcher is not None
        self.assertFalse(service.watcher.running)

    def test_inFlightRequestsKeepTheirRuntime(self) -> None:
        """A request routed before a reload holds the old route's leaf and runtime; new ones see the new."""
        service = self.makeService(configText())
        old = service.gateway.runtime
        leaf = old.leaves["a"]
        self.write(configText(ROUTE_A + "\n" + ROUTE_B))
        service.reload()
        self.assertIsNot(service.gateway.runtime, old)
        self.assertIs(leaf.runtime, old)
        self.assertIs(leaf.route.cluster, old.clusters["app"])
        self.assertIsNot(service.gateway.runtime.leaves["a"], leaf)

    def test_unchangedUpstreamKeepsEndpointsPoolsHealthAndBreakers(self) -> None:
        """An upstream that stays keeps its Endpoint objects (health, breaker, in-flight) and pool."""
        probed = "    health: {active: {path: /health, interval: 5s}}"
        service = self.makeService(configText(targets="http://127.0.0.1:9100, http://127.0.0.1:9101",
                                              upstreamExtra=probed))
        old = service.gateway.runtime.clusters["app"]
        e0, e1 = old.endpoints
        e0.activeHealthy = False
        e0.inFlight = 3
        breaker = _FakeBreaker()
        e1.breaker = breaker  # type: ignore[assignment]
        self.write(configText(ROUTE_A + "\n" + ROUTE_B, targets="http://127.0.0.1:9100, http://127.0.0.1:9101",
                              upstreamExtra=probed))
        self.assertEqual(service.reload(), [])
        new = service.gateway.runtime.clusters["app"]
        self.assertIsNot(new, old)
        self.assertEqual([id(e) for e in new.endpoints], [id(e0), id(e1)])
        self.assertFalse(new.endpoints[0].activeHealthy)
        self.assertEqual(new.endpoints[0].inFlight, 3)
        self.assertIs(new.endpoints[1].breaker, breaker)
        self.assertIs(new.pool, old.pool)  # type: ignore[attr-defined]
        self.assertIs(new.agent, old.agent)  # type: ignore[attr-defined]

    def test_changedTargetsKeepTheTargetsThatStay(self) -> None:
        """Adding a target keeps the Endpoint of the one that stays; a removed one is dropped."""
        service = self.makeService(configText(targets="http://127.0.0.1:9100, http://127.0.0.1:9101"))
        kept = service.gateway.runtime.clusters["app"].endpoints[0]
        self.write(configText(targets="http://127.0.0.1:9100, http://127.0.0.1:9102"))
        self.assertEqual(service.reload(), [])
        endpoints = service.gateway.runtime.clusters["app"].endpoints
        self.assertIs(endpoints[0], kept)
        self.assertEqual(endpoints[1].url, "http://127.0.0.1:9102")

    def test_changedPoolSettingsGetANewPoolAndTheOldOneIsRetired(self) -> None:
        """New pool settings build a new pool; the old one's idle connections are closed at once."""
        service = self.makeService(configText())
        old = service.gateway.runtime.clusters["app"]
        closed: list[bool] = []
        old.pool.closeCachedConnections = lambda: closed.append(True)  # type: ignore[attr-defined]
        self.write(configText(upstreamExtra="    pool: {max_per_target: 7}"))
        self.assertEqual(service.reload(), [])
        new = service.gateway.runtime.clusters["app"]
        self.assertIsNot(new.pool, old.pool)  # type: ignore[attr-defined]
        self.assertEqual(closed, [True])

    def test_removedUpstreamPoolIsRetired(self) -> None:
        """An upstream that goes away has its pool's idle connections closed."""
        service = self.makeService(configText(ROUTE_A + "\n" + ROUTE_B))
        other = service.gateway.runtime.clusters["other"]
        closed: list[bool] = []
        other.pool.closeCachedConnections = lambda: closed.append(True)  # type: ignore[attr-defined]
        text = configText().replace("  other:\n    targets: [http://127.0.0.1:9200]\n", "")
        self.write(text)
        self.assertEqual(service.reload(), [])
        self.assertNotIn("other", service.gateway.runtime.clusters)
        self.assertEqual(closed, [True])


class _FakeBreaker:
    state = "open"


class SighupTests(SynchronousTestCase):
    def test_sighupCallsReloadOnTheReactorThread(self) -> None:
        """SIGHUP schedules service.reload through callFromThread (signal-safe), once the reactor runs."""
        if not hasattr(signal, "SIGHUP"):
            raise self.skipTest("no SIGHUP on this platform")

        class FakeReactor:
            def __init__(self) -> None:
                self.whenRunning: list[Any] = []
                self.fromThread: list[Any] = []

            def callWhenRunning(self, f: Any, *a: Any) -> None:
                self.whenRunning.append((f, a))

            def callFromThread(self, f: Any, *a: Any) -> None:
                self.fromThread.append(f)

        class FakeService:
            def reload(self) -> list[str]:
                return []

        reactor, service = FakeReactor(), FakeService()
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        tap._installSignals(service, reactor)
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)  # not before the reactor runs
        for f, a in reactor.whenRunning:
            f(*a)
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        self.assertEqual(reactor.fromThread, [service.reload])
