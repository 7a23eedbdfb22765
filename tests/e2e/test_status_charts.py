"""
The status page's live charts in headless Chromium, under a small bounded load.

Two screenshots of the charts (C{?view=charts}: the charts alone, so the
whole picture is the chart area) taken seconds apart must differ, and the
page must make no request anywhere but the admin listener (Chromium's own
network log is read to check).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import Backend, GatewayProcess, adminBlock, chromium, headless, request, simpleConfig, waitFor


class StatusChartsTests(SynchronousTestCase):
    def test_chartsMoveUnderLoadAndNeedNoNetwork(self) -> None:
        """Under load the charts change from one screenshot to the next; every request goes to the admin port."""
        browser = chromium()
        if browser is None:
            raise SkipTest("chromium is not installed")
        b = Backend("b1").start()
        self.addCleanup(b.stop)
        g = GatewayProcess(simpleConfig([b.url], extra=adminBlock()))
        self.addCleanup(g.cleanup)
        g.start()
        admin = g.adminPort

        stop = threading.Event()

        def load() -> None:
            # Bounded: at most ~50 requests a second, at most 3000 in all.
            for i in range(3000):
                if stop.is_set():
                    return
                try:
                    request(g.port, "GET", "/status/503" if i % 7 == 0 else "/echo", timeout=5)
                except OSError:
                    pass
                stop.wait(0.02)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        self.addCleanup(worker.join, 10)
        self.addCleanup(stop.set)

        def points() -> list[float]:
            return request(admin, "GET", "/api/timeline").json()["t"]  # type: ignore[no-any-return]

        waitFor(lambda: len(points()) >= 3, what="three timeline points")
        profile = Path(tempfile.mkdtemp(prefix="txgw-chromium-"))
        self.addCleanup(shutil.rmtree, profile, True)
        flags = headless(browser, profile)
        url = f"http://127.0.0.1:{admin}/?view=charts"

        def shot(name: str) -> bytes:
            path = profile / f"{name}.png"
            net = profile / f"{name}-net.json"
            subprocess.run([*flags, f"--log-net-log={net}", f"--screenshot={path}", url], capture_output=True,
                           timeout=120, check=False)
            self.assertTrue(path.exists(), "chromium wrote no screenshot")
            self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
            self.checkOnlyAdminRequests(net, admin)
            return path.read_bytes()

        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, timeout=120, check=False)
        page = dom.stdout.decode("utf-8", "replace")
        self.assertIn('data-series="gateway"', page, dom.stderr.decode("utf-8", "replace")[-2000:])
        self.assertIn('data-series="route:all"', page)
        self.assertIn(f'data-series="target:app {b.url}"', page)
        self.assertIn('class="l-p99"', page)

        first = shot("first")
        newest = points()[-1]
        waitFor(lambda: points()[-1] >= newest + 3, what="three more seconds of timeline")
        second = shot("second")
        self.assertNotEqual(first, second, "the charts did not move between the two screenshots")
        self.assertGreater(len(second), 5000)

    def checkOnlyAdminRequests(self, netLog: Path, admin: int) -> None:
        """
        Every request the page made (Chromium's network log: the URL requests
        whose network isolation key or initiator is the page's site) is on
        the admin listener; the browser's own background fetches are not the
        page's (its autofill lookups, prompted by the token form's password
        field, are switched off with AutofillServerCommunication).
        """
        text = netLog.read_text(errors="replace")
        try:
            log = json.loads(text)
        except ValueError:  # a log cut short at exit: close its event list
            log = json.loads(text.rstrip().rstrip(",") + "]}")
        start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        pageURLs = set()
        for event in log["events"]:
            params = event.get("params") or {}
            if event["type"] != start or "url" not in params:
                continue
            key = str(params.get("network_isolation_key") or "")
            initiator = str(params.get("initiator") or "")
            if "127.0.0.1" in key or initiator.startswith("http://127.0.0.1"):
                pageURLs.add(params["url"])
        self.assertIn(f"http://127.0.0.1:{admin}/?view=charts", pageURLs)
        self.assertTrue(any("/api/timeline" in u for u in pageURLs), pageURLs)
        outside = sorted(u for u in pageURLs if not u.startswith(f"http://127.0.0.1:{admin}/"))
        self.assertEqual(outside, [])
