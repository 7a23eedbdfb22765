"""
Workers that behave as one gateway (issue 26), against the real process
with C{server.workers: 2} (and 4): one prober, shared evidence, one rate
limit, one config generation, and a killed worker replaced.

Counts are taken at the origin (its C{/count}), which sees exactly what the
gateway sent whichever worker sent it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, adminBlock, request, simpleConfig, waitFor


def fleetConfig(targets: list[str], workers: int, upstreamExtra: str = "", routeExtra: str = "",
                serverExtra: str = "") -> str:
    config = simpleConfig(targets, extra=adminBlock(), upstreamExtra=upstreamExtra,
                          routeExtra=routeExtra)
    return config.replace("  timeouts: {drain: 10s}", f"  timeouts: {{drain: 5s}}\n  workers: {workers}{serverExtra}")


def start(test: SynchronousTestCase, config: str) -> GatewayProcess:
    gw = GatewayProcess(config).start()
    test.addCleanup(gw.cleanup)
    test.addCleanup(gw.stop)
    return gw


def backend(test: SynchronousTestCase, name: str) -> Backend:
    b = Backend(name).start()
    test.addCleanup(b.stop)
    return b


def roster(gw: GatewayProcess, path: str = "/api/reloads") -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = request(gw.adminPort, "GET", path).json()["workers"]
    return workers


def generations(gw: GatewayProcess) -> set[int]:
    return {w["generation"] for w in roster(gw)}


def joined(gw: GatewayProcess, n: int) -> dict[int, int]:
    """worker id -> pid once C{n} workers have joined the hub (from the admin API's roster)."""
    return waitFor(lambda: len(w := roster(gw)) == n and {x["worker"]: x["pid"] for x in w},  # type: ignore[no-any-return]
                   what=f"{n} workers in the roster")


def probesSeen(origin: Backend, n: int) -> int:
    """Wait for C{n} more probes at the origin; how many came (each /count read is a request it counts too)."""
    before = origin.count()
    reads = [0]

    def probes() -> int:
        reads[0] += 1
        return origin.count() - before - reads[0]

    return waitFor(lambda: (seen := probes()) >= n and seen, what=f"{n} probes at the origin")  # type: ignore[no-any-return]


class ActiveHealthTests(SynchronousTestCase):
    def probesPerInterval(self, workers: int) -> float:
        origin = backend(self, f"p{workers}")
        interval = 0.1
        gw = start(self, fleetConfig([origin.url], workers,
                                     upstreamExtra="    health: {active: {path: /health, interval: 100ms}}"))
        joined(gw, workers)
        t0 = time.monotonic()
        seen = probesSeen(origin, 10)
        return seen / ((time.monotonic() - t0) / interval + 1)

    # On a slow machine the window only grows (a LoopingCall skips the
    # ticks it missed, it never bunches them), so the ratio can only fall:
    # above 1.3 means a second prober.

    def test_oneProbePerIntervalWithTwoWorkers(self) -> None:
        """With two workers the origin sees one probe per interval, not two."""
        self.assertLessEqual(self.probesPerInterval(2), 1.3)

    def test_oneProbePerIntervalWithFourWorkers(self) -> None:
        """With four workers still one probe per interval."""
        self.assertLessEqual(self.probesPerInterval(4), 1.3)

    def test_theProbersVerdictReachesEveryWorker(self) -> None:
        """A target failing its health check is out of every worker's rotation, and back in every one."""
        sick, good = backend(self, "sick"), backend(self, "good")
        gw = start(self, fleetConfig([sick.url, good.url], 2, upstreamExtra=(
            "    health: {active: {path: /health, interval: 100ms, unhealthy_after: 1, healthy_after: 1}}")))
        joined(gw, 2)
        sick.request("GET", "/control/health?ok=0")
        waitFor(lambda: all(gw.request("GET", "/echo").json()["backend"] == "good" for _ in range(20)),
                what="every worker to stop sending to the sick target")
        sick.request("GET", "/control/health?ok=1")
        waitFor(lambda: {gw.request("GET", "/echo").json()["backend"] for _ in range(20)} == {"sick", "good"},
                what="the target back in rotation")


    def test_whenTheProberDiesAnotherWorkerProbes(self) -> None:
        """Killing the prober (worker 0) leaves the probes running: another takes over, the rest keep serving."""
        origin = backend(self, "pk")
        gw = start(self, fleetConfig([origin.url], 2,
                                     upstreamExtra="    health: {active: {path: /health, interval: 100ms}}"))
        pids = joined(gw, 2)
        os.kill(pids[0], signal.SIGKILL)
        # The hub's line, not the roster: worker 0 is restarted (and probes again) within a second.
        waitFor(lambda: "fleet: worker 1 runs the active health checks" in gw.log(), what="worker 1 to take over")
        probesSeen(origin, 10)
        self.assertEqual(gw.request("GET", "/echo").status, 200)


class PassiveSharingTests(SynchronousTestCase):
    def failedBeforeEjection(self, workers: int) -> int:
        bad, good = backend(self, f"bad{workers}"), backend(self, f"good{workers}")
        bad.request("GET", "/control/mode?status=500")
        gw = start(self, fleetConfig([bad.url, good.url], workers, upstreamExtra=(
            "    retries: false\n"
            "    health: {passive: {window: 60s, min_requests: 4, max_error_rate: 0.5, eject_for: 60s}}")))
        if workers > 1:
            joined(gw, workers)
        # With retries off, each failed request is one 500 relayed from the failing target.
        return [gw.request("GET", "/echo").status for _ in range(30)].count(500)

    def test_ejectedAfterAsManyFailuresAsOneWorker(self) -> None:
        """
        Two workers eject a failing target after the failures one worker
        needs (4 here), not twice that: each worker counts the other's.
        At most one more can slip through: a request the other worker
        chose in the moment the failure was on its way to it.
        """
        alone = self.failedBeforeEjection(1)
        self.assertEqual(alone, 4)
        shared = self.failedBeforeEjection(2)
        self.assertTrue(alone <= shared <= alone + 1, f"{shared} failed requests with two workers")


def refusals(gw: GatewayProcess) -> list[int]:
    """503s answered by worker 0 and by worker 1, from the access lines in the log."""
    lines = [line for line in gw.log().splitlines() if '"path":"/echo"' in line and '"status":503' in line]
    return [sum(f'"worker":{w}}}' in line for line in lines) for w in (0, 1)]


class HalfOpenTests(SynchronousTestCase):
    def test_oneHalfOpenProbeAcrossWorkers(self) -> None:
        """
        Once a shared breaker's open_for has passed, one request in all
        tests the target (held here by an origin that never answers); every
        other, on either worker, is refused at once.  Breakers of their own
        would each let one through: two at the origin.
        """
        origin = backend(self, "ho")
        origin.request("GET", "/control/mode?status=500")
        gw = start(self, fleetConfig([origin.url], 2, upstreamExtra=(
            "    retries: false\n"
            "    timeouts: {response: 4s}\n"
            "    circuit_breaker: {failures: 2, open_for: 1s, half_open_probes: 1}")))
        joined(gw, 2)
        statuses = [gw.request("GET", "/echo").status for _ in range(6)]
        # Open in both workers after 2 failures (one more if the other worker had chosen the target already).
        self.assertIn(statuses.count(500), (2, 3), statuses)
        self.assertEqual(statuses[-1], 503)
        origin.request("GET", "/control/mode?hang=1")
        stop = [False]

        def traffic() -> None:
            while not stop[0]:
                gw.request("GET", "/echo", timeout=10)

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            waitFor(lambda: origin.request("GET", "/hangs").json()["total"] >= 1, what="the half-open probe")
            before = refusals(gw)
            # Both workers refuse requests while the probe is out (their access lines say which worker).
            waitFor(lambda: all(n >= b + 5 for n, b in zip(refusals(gw), before, strict=True)),
                    what="refusals on both workers during the probe")
            self.assertEqual(origin.request("GET", "/hangs").json()["total"], 1)
        finally:
            stop[0] = True
            for t in threads:
                t.join(15)


class RateLimitTests(SynchronousTestCase):
    def test_fiftyPerSecondInTotal(self) -> None:
        """A 50/s limit admits 50/s across two workers together, not 50/s each."""
        self.assertFiftyPerSecond(2)

    def test_fiftyPerSecondInTotalWithFourWorkers(self) -> None:
        """... and across four, not 200/s."""
        self.assertFiftyPerSecond(4)

    def assertFiftyPerSecond(self, workers: int) -> None:
        origin = backend(self, f"rl{workers}")
        gw = start(self, fleetConfig([origin.url], workers,
                                     routeExtra="    rate_limit: {rate: 50/s, burst: 10}"))
        joined(gw, workers)
        codes: list[int] = []
        lock = threading.Lock()
        stop = time.monotonic() + 3.0

        def hammer() -> None:
            while time.monotonic() < stop:
                status = gw.request("GET", "/echo").status  # a new connection each: spread over both workers
                with lock:
                    codes.append(status)

        t0 = time.monotonic()
        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - t0
        admitted = codes.count(200)
        self.assertEqual(set(codes), {200, 429})
        # The bucket's bound over the run: the burst plus 50/s.  The hub
        # counts every token it leases and a worker admits only leased ones,
        # so this holds exactly (one token of slack for float rounding).
        # Per-worker limits would admit about N times the rate.
        self.assertLessEqual(admitted, 50 * elapsed + 10 + 1, f"{admitted} admitted in {elapsed:.2f}s")
        # Tokens a worker holds unused go back within 0.2 s: some of the
        # rate can be late, not lost for good.
        self.assertGreaterEqual(admitted, 50 * elapsed * 0.6, f"{admitted} admitted in {elapsed:.2f}s")


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.origin = backend(self, "rg")
        self.base = fleetConfig([self.origin.url], 2, serverExtra="\n  watch_config: 200ms").replace("{port}", "0")
        self.gw = start(self, self.base.replace("match: {path_prefix: /}", "match: {path_prefix: /old}"))
        joined(self.gw, 2)
        self.assertEqual(generations(self.gw), {1})

    def edit(self, prefix: str) -> None:
        self.gw.configPath.write_text(self.base.replace("match: {path_prefix: /}", f"match: {{path_prefix: {prefix}}}"))

    def everyWorkerServes(self, path: str) -> bool:
        return all(self.gw.request("GET", path).status == 200 for _ in range(20))

    def test_sighupPutsEveryWorkerOnOneGeneration(self) -> None:
        """SIGHUP to the supervisor: both workers switch to generation 2, shown in /api/reloads and /api/status."""
        self.edit("/new")
        self.gw.signal(signal.SIGHUP)
        waitFor(lambda: generations(self.gw) == {2}, what="both workers on generation 2")
        self.assertTrue(self.everyWorkerServes("/new/echo"))
        status = roster(self.gw, "/api/status")
        self.assertEqual({w["generation"] for w in status}, {2})
        self.assertEqual({w["pid"] for w in status}, set(joined(self.gw, 2).values()))
        self.assertEqual(len({w["pid"] for w in status}), 2)

    def test_theAdminReloadAnswersOnceEveryWorkerSwitched(self) -> None:
        """POST /api/config/reload's 200 means every worker runs the new generation: no waiting after it."""
        self.edit("/new")
        answer = request(self.gw.adminPort, "POST", "/api/config/reload")
        self.assertEqual((answer.status, answer.json()), (200, {"ok": True, "problems": []}))
        # One generation for all (2, or 3 when the file watcher saw the edit first).
        self.assertEqual(len(generations(self.gw)), 1)
        self.assertTrue(self.everyWorkerServes("/new/echo"))

    def test_fileChangeAndABadConfig(self) -> None:
        """A file change reloads every worker once; a bad file is rejected once and no worker moves."""
        self.edit("/new")
        waitFor(lambda: generations(self.gw) == {2}, what="the file change to reach both workers")
        self.gw.configPath.write_text(self.base.replace("match: {path_prefix: /}", "match: {path_prefix: 7}"))
        waitFor(lambda: "config reload rejected" in self.gw.log(), what="the bad config to be rejected")
        self.assertEqual(self.gw.log().count("config reload rejected"), 1)
        self.assertEqual(generations(self.gw), {2})
        self.assertTrue(self.everyWorkerServes("/new/echo"))
        reloads = request(self.gw.adminPort, "GET", "/api/reloads").json()["reloads"]
        self.assertEqual(reloads[0]["result"], "failure")

    def test_aReplacedWorkerRunsTheCurrentGeneration(self) -> None:
        """A worker restarted after a bad edit starts on the accepted generation, not on the file."""
        self.edit("/new")
        waitFor(lambda: generations(self.gw) == {2}, what="generation 2")
        self.gw.configPath.write_text("routes: [not, a, config")
        waitFor(lambda: "config reload rejected" in self.gw.log(), what="the broken file to be rejected")
        seen = joined(self.gw, 2)
        os.kill(seen[0], signal.SIGKILL)
        for _ in range(30):
            self.assertEqual(self.gw.request("GET", "/new/echo", timeout=15).status, 200)
        waitFor(lambda: {w["worker"]: w["pid"] for w in roster(self.gw)}.get(0) not in (None, seen[0]),
                what="worker 0 to be replaced")
        self.assertEqual(generations(self.gw), {2})
        self.assertTrue(self.everyWorkerServes("/new/echo"))


class AdminChangeTests(SynchronousTestCase):
    def test_disablingATargetReachesEveryWorker(self) -> None:
        """POST .../disable, answered by one worker, takes the target out of every worker's rotation."""
        one, two = backend(self, "one"), backend(self, "two")
        gw = start(self, fleetConfig([one.url, two.url], 2))
        joined(gw, 2)
        hostPort = one.url.split("//", 1)[1]
        answer = request(gw.adminPort, "POST", f"/api/upstreams/app/targets/{hostPort}/disable")
        self.assertEqual(answer.status, 200)
        waitFor(lambda: all(gw.request("GET", "/echo").json()["backend"] == "two" for _ in range(20)),
                what="every worker to stop using the disabled target")


class FourWorkerTests(SynchronousTestCase):
    def test_oneGenerationAndAReplacedWorker(self) -> None:
        """Four workers: SIGHUP puts all on generation 2; one killed is replaced on it and the rest keep serving."""
        origin = backend(self, "four")
        base = fleetConfig([origin.url], 4, serverExtra="\n  watch_config: 0").replace("{port}", "0")
        gw = start(self, base)
        pids = joined(gw, 4)
        gw.configPath.write_text(base.replace("match: {path_prefix: /}", "match: {path_prefix: /new}"))
        gw.signal(signal.SIGHUP)
        waitFor(lambda: generations(gw) == {2}, what="all four workers on generation 2")
        os.kill(pids[2], signal.SIGKILL)
        for _ in range(40):
            self.assertEqual(gw.request("GET", "/new/echo", timeout=15).status, 200)
        waitFor(lambda: joined(gw, 4).get(2) not in (None, pids[2]), what="worker 2 to be replaced")
        self.assertEqual(generations(gw), {2})
