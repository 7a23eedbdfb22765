"""
Hot reload end to end: the real gateway picking up a changed file, rejecting
a broken one, reloading on SIGHUP, and swapping configs under load without
failing a request.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, Response, request, waitFor

TEMPLATE = """\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
  watch_config: {watch}
  timeouts: {{drain: 5s}}
logging:
  level: info
upstreams:
  app:
    targets: [{targets}]
    pool: {{max_per_target: {pool}}}
routes:
  - name: main
    match: {{path_prefix: /}}
    upstream: app
    headers:
      response: {{set: {{X-Gen: "{gen}"}}}}
{extra}
"""

EXTRA_B = """\
  - name: b
    match: {path_prefix: /b}
    upstream: app
    rewrite_prefix: /from-b
"""


def render(port: int | str, targets: list[str], gen: int, extra: str = "", watch: str = "100ms", pool: int = 50) -> str:
    return TEMPLATE.format(port=port, targets=", ".join(targets), gen=gen, extra=extra, watch=watch, pool=pool)


def replaceFile(path: Path, text: str) -> None:
    """Write the way the docs recommend: a temp file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ReloadE2ETests(SynchronousTestCase):
    def start(self, watch: str = "100ms") -> tuple[GatewayProcess, Backend]:
        backend = Backend("r1").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(render("{port}", [backend.url], 1, watch=watch))
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        gw.start()
        return gw, backend

    def gen(self, gw: GatewayProcess, path: str = "/echo") -> str | None:
        return gw.request("GET", path).header("X-Gen")

    def test_changedFileIsPickedUp(self) -> None:
        """Saving a changed file (written in place) makes its new route serve, without a restart."""
        gw, backend = self.start()
        self.assertEqual(gw.request("GET", "/b/x").json()["uri"], "/b/x")
        gw.configPath.write_text(render(0, [backend.url], 2, EXTRA_B))
        waitFor(lambda: self.gen(gw) == "2", what="the new config")
        self.assertEqual(gw.request("GET", "/b/x").json()["uri"], "/from-b/x")
        self.assertIn("config reloaded", gw.log())

    def test_invalidFileIsRejectedAndTheOldConfigKeepsServing(self) -> None:
        """A broken file: its problem is logged, the failure counted, and the old config keeps serving."""
        gw, backend = self.start()
        replaceFile(gw.configPath, render(0, [backend.url], 2).replace("upstream: app", "upstream: nowhere"))
        waitFor(lambda: "config reload rejected" in gw.log(), what="the rejection in the log")
        self.assertIn("no upstream named 'nowhere'", gw.log())
        resp = gw.request("GET", "/echo")
        self.assertEqual((resp.status, resp.header("X-Gen")), (200, "1"))
        metrics = gw.request("GET", "/metrics").body.decode()
        self.assertIn('txgateway_config_reloads_total{result="failure"} 1.0', metrics)
        # Fixing the file is picked up as usual.
        replaceFile(gw.configPath, render(0, [backend.url], 3))
        waitFor(lambda: self.gen(gw) == "3", what="the fixed config")

    def test_sighupReloads(self) -> None:
        """With the watcher off, SIGHUP reloads the file."""
        gw, backend = self.start(watch="false")
        replaceFile(gw.configPath, render(0, [backend.url], 2, watch="false"))
        self.assertEqual(self.gen(gw), "1")
        gw.signal(signal.SIGHUP)
        waitFor(lambda: self.gen(gw) == "2", what="the config after SIGHUP")
        self.assertNotIn("changed; reloading", gw.log())  # the watcher did not do it

    def test_inFlightRequestFinishesOnTheRouteItStartedWith(self) -> None:
        """A slow request started before a reload completes, with the old route's response headers."""
        gw, backend = self.start()
        result: list[Response] = []
        seen = backend.count()
        slow = threading.Thread(target=lambda: result.append(gw.request("GET", "/slow?ms=1500")))
        slow.start()
        polls = [0]

        def arrived() -> bool:
            # Each count() is itself counted: one more than our own polls means the slow request is there.
            polls[0] += 1
            return backend.count() >= seen + polls[0] + 1

        waitFor(arrived, what="the slow request to reach the origin")
        replaceFile(gw.configPath, render(0, [backend.url], 2, pool=7))
        waitFor(lambda: self.gen(gw) == "2", what="the new config")
        slow.join(15)
        self.assertEqual(len(result), 1)
        self.assertEqual((result[0].status, result[0].header("X-Gen")), (200, "1"))

    def test_reloadUnderLoadFailsNoRequest(self) -> None:
        """300 requests while the config is rewritten five times (routes, targets, pools): every one succeeds."""
        gw, backend = self.start()
        other = Backend("r2").start()
        self.addCleanup(other.stop)
        statuses: list[int] = []
        gens: set[str | None] = set()
        errors: list[Any] = []

        def load() -> None:
            for i in range(300):
                try:
                    path = "/slow?ms=5" if i % 10 == 0 else f"/echo/{i}"
                    resp = request(gw.port, "GET", path)
                    statuses.append(resp.status)
                    gens.add(resp.header("X-Gen"))
                except Exception as e:  # a dropped connection is a failure too
                    errors.append(e)

        thread = threading.Thread(target=load)
        thread.start()
        versions = [
            ([backend.url], EXTRA_B, 50),
            ([backend.url, other.url], "", 50),       # a target added: the first keeps its Endpoint
            ([backend.url, other.url], EXTRA_B, 10),  # pool settings changed: a new pool, the old retired
            ([other.url], "", 10),                    # the first target removed
            ([backend.url], EXTRA_B, 20),
        ]
        for gen, (targets, extra, pool) in enumerate(versions, start=2):
            replaceFile(gw.configPath, render(0, targets, gen, extra, pool=pool))
            waitFor(lambda g=gen: self.gen(gw) == str(g), what=f"config generation {gen}")  # type: ignore[misc]
        thread.join(60)
        self.assertFalse(thread.is_alive())
        self.assertEqual(errors, [])
        self.assertEqual(len(statuses), 300)
        self.assertEqual({s for s in statuses}, {200})
        self.assertGreater(len(gens), 1, "the load should have spanned at least one reload")
        metrics = gw.request("GET", "/metrics").body.decode()
        self.assertIn('txgateway_config_reloads_total{result="success"} 5.0', metrics)
