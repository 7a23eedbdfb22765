"""
WebSocket through the real gateway (C{twistd -n txgateway}), with the
C{websockets} library as the client and as the origin (tests/e2e/wsorigin.py,
its own process): ws:// and wss:// on both sides, a refused upgrade relayed,
the caps, the idle timeout, a target that dies, a reload, and the drain's 1001.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..tlscerts import selfSigned
from .harness import GatewayProcess, request, shared, startOrigin, stopOrigin, waitFor

ORIGIN = Path(__file__).with_name("wsorigin.py")


class Origin:
    """tests/e2e/wsorigin.py in its own process (over TLS when given a certificate)."""

    def __init__(self, cert: str | None = None, key: str | None = None) -> None:
        args = [cert, key] if cert and key else []
        self.proc, self.port = startOrigin([str(ORIGIN), "0", *args], "the WebSocket origin")

    def stop(self) -> None:
        stopOrigin(self.proc)


def gatewayConfig(target: str, listen: str = "tcp:{port}:interface=127.0.0.1", drain: str = "10s",
                  live: str = "") -> str:
    return f"""\
server:
  listen: "{listen}"
  timeouts: {{drain: {drain}}}
logging:
  level: info
upstreams:
  ws:
    targets: [{target}]
    timeouts: {{connect: 5s, response: 5s}}
routes:
  - name: capped
    match: {{path_prefix: /capped/}}
    upstream: ws
    websocket: true
    max_websockets: 1
  - name: idle
    match: {{path_prefix: /idle/}}
    upstream: ws
    websocket: true
    websocket_idle_timeout: 1s
  - name: plain
    match: {{path_prefix: /plain/}}
    upstream: ws
  - name: live
    match: {{path_prefix: /}}
    upstream: ws
    websocket: true
{live}"""


def run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro(), 30))


async def closedWith(ws: ClientConnection) -> int | None:
    """Read until the connection closes; the close code the client received (None: no close frame)."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd is not None else None


def _plain(started: list[Any]) -> tuple[GatewayProcess, Origin]:
    origin = Origin()
    started.append(origin)
    gw = GatewayProcess(gatewayConfig(f"http://127.0.0.1:{origin.port}"))
    started.append(gw)
    return gw.start(), origin


class PlainTests(SynchronousTestCase):
    """ws:// to the gateway, ws:// to the origin (one gateway for the whole class)."""

    def setUp(self) -> None:
        self.gw, self.origin = shared("websocket-plain", _plain)
        self.url = f"ws://127.0.0.1:{self.gw.port}"

    def metric(self, name: str, **labels: str) -> float:
        body = request(self.gw.port, "GET", "/metrics").body.decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", body, re.M)
        return float(m.group(1)) if m else 0.0

    def test_echoBothWaysWithForwardedFields(self) -> None:
        async def go() -> tuple[Any, list[str], int, float]:
            async with connect(self.url + "/headers", max_size=None) as ws:
                fields = json.loads(await ws.recv())
                echoed = []
                for text in ("one", "two", "three"):
                    await ws.send(text)
                    echoed.append(await ws.recv())
                big = b"\x01" * 3_000_000  # one message far bigger than any socket buffer
                await ws.send(big)
                back = await ws.recv()
                open_ = self.metric("txgateway_websocket_connections", route="live")
                return fields, echoed, len(back), open_

        fields, echoed, size, opened = run(go)
        seen = {k.lower(): v for k, v in fields}
        self.assertEqual(seen["x-forwarded-for"], "127.0.0.1")
        self.assertIn("txgateway", seen["via"])
        self.assertEqual(seen["upgrade"].lower(), "websocket")
        self.assertIn("permessage-deflate", seen["sec-websocket-extensions"])  # extensions pass untouched
        self.assertEqual(echoed, ["one", "two", "three"])
        self.assertEqual(size, 3_000_000)
        self.assertEqual(opened, 1.0)
        waitFor(lambda: '"outcome":"websocket_closed_1000"' in self.gw.log(), what="the close-time access-log line")
        line = next(x for x in self.gw.log().splitlines() if '"path":"/headers"' in x)
        entry = json.loads(line)
        self.assertEqual(entry["status"], 101)
        self.assertGreater(entry["bytes_in"], 0)
        self.assertGreater(entry["bytes_out"], 0)

    def test_slowReaderPausesTheTarget(self) -> None:
        """
        A client that stops reading stops the target too: the origin floods,
        the client reads nothing for 2 s, and the gateway's memory does not
        grow with what the origin could have sent meanwhile (over 500 MB on
        loopback with the producers left unregistered); then every byte
        still arrives.  No compression, so the bytes are what they seem.
        """
        assert self.gw.proc is not None
        pid = self.gw.proc.pid

        def rssMB() -> float:
            status = Path(f"/proc/{pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

        async def go() -> tuple[float, int]:
            async with connect(self.url + "/flood", max_queue=1, max_size=None, compression=None) as ws:
                await asyncio.sleep(0.2)
                before = rssMB()
                await asyncio.sleep(2.0)
                grown = rssMB() - before
                got = 0
                for _ in range(50):
                    got += len(await ws.recv())
                return grown, got

        grown, got = run(go)
        self.assertLess(grown, 48.0)
        self.assertEqual(got, 50 * 65536)

    def test_refusedUpgradeRelayedAsItWas(self) -> None:
        async def go() -> Any:
            try:
                async with connect(self.url + "/refuse"):
                    return None
            except InvalidStatus as e:
                return e.response

        response = run(go)
        self.assertEqual(response.status_code, 403)
        self.assertEqual(bytes(response.body), b"no WebSocket here\n")

    def test_routeWithoutWebsocketKeepsPlainGet(self) -> None:
        """No websocket: true: the origin gets a plain GET (hop-by-hop fields dropped) and its answer comes back."""
        async def go() -> Any:
            try:
                async with connect(self.url + "/plain/x"):
                    return None
            except InvalidStatus as e:
                return e.response

        self.assertEqual(run(go).status_code, 426)  # the websockets server's answer to a GET that is not an upgrade

    def test_routeCap(self) -> None:
        async def go() -> tuple[int, str]:
            async with connect(self.url + "/capped/a") as first:
                try:
                    async with connect(self.url + "/capped/b"):
                        pass
                except InvalidStatus as e:
                    status = e.response.status_code
                await first.send("still here")
                return status, str(await first.recv())

        self.assertEqual(run(go), (503, "still here"))

    def test_idleTimeout(self) -> None:
        async def go() -> tuple[int | None, float]:
            async with connect(self.url + "/idle/x", ping_interval=None) as ws:
                started = time.monotonic()
                return await closedWith(ws), time.monotonic() - started

        code, seconds = run(go)
        self.assertEqual(code, 1001)
        self.assertLess(seconds, 10)

    def test_targetDiesClientHears1011(self) -> None:
        async def go() -> int | None:
            async with connect(self.url + "/die") as ws:
                await ws.send("die")
                return await closedWith(ws)

        self.assertEqual(run(go), 1011)
        waitFor(lambda: "dropped a WebSocket without a close frame" in self.gw.log(), what="the target's failure")


class TlsTests(SynchronousTestCase):
    """wss:// to a TLS listener, and wss:// from the gateway to an https:// target."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        key, cert = selfSigned()
        (self.dir / "key.pem").write_bytes(key)
        (self.dir / "cert.pem").write_bytes(cert)
        self.cert = cert
        self.origin = Origin(str(self.dir / "cert.pem"), str(self.dir / "key.pem"))
        self.addCleanup(self.origin.stop)
        self.client = ssl.create_default_context()
        self.client.load_verify_locations(cadata=cert.decode())

    def test_wssBothSides(self) -> None:
        config = gatewayConfig(f"https://127.0.0.1:{self.origin.port}",
                               listen="ssl:{port}:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem")
        key = (self.dir / "key.pem").read_bytes()
        # The gateway trusts the origin's certificate the way an operator would: the system trust store.
        gw = GatewayProcess(config, files={"key.pem": key, "cert.pem": self.cert},
                            env={"SSL_CERT_FILE": str((self.dir / "cert.pem").resolve())})
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        gw.start(waitReady=False)
        gw.waitListening()

        async def go() -> list[str]:
            async with connect(f"wss://127.0.0.1:{gw.port}/echo", ssl=self.client) as ws:
                out = []
                for text in ("secure", "both ways"):
                    await ws.send(text)
                    out.append(str(await ws.recv()))
                return out

        self.assertEqual(run(go), ["secure", "both ways"])


class LifecycleTests(SynchronousTestCase):
    """A reload keeps open WebSockets on their target; SIGTERM ends them with 1001, then a clean exit."""

    def setUp(self) -> None:
        self.origin = Origin()
        self.addCleanup(self.origin.stop)
        self.gw = GatewayProcess(gatewayConfig(f"http://127.0.0.1:{self.origin.port}", drain="3s"))
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start()

    def test_reloadThenDrain(self) -> None:
        gw = self.gw
        url = f"ws://127.0.0.1:{gw.port}/echo"
        other = gatewayConfig("http://127.0.0.1:9", drain="3s").replace("{port}", "0")  # as the first config was written

        async def go() -> tuple[str, str, int | None, float]:
            async with connect(url) as ws:
                gw.configPath.write_text(other)  # every target now a dead port
                gw.signal(signal.SIGHUP)
                await asyncio.to_thread(waitFor, lambda: "config reloaded" in gw.log() or None,
                                        15.0, "the reload")
                await ws.send("after reload")
                kept = str(await ws.recv())
                gw.signal(signal.SIGTERM)
                started = time.monotonic()
                await asyncio.sleep(0.5)
                await ws.send("while draining")
                draining = str(await ws.recv())
                code = await closedWith(ws)
                return kept, draining, code, time.monotonic() - started

        kept, draining, code, seconds = run(go)
        self.assertEqual((kept, draining, code), ("after reload", "while draining", 1001))
        self.assertGreater(seconds, 1.5)  # ran on until shortly before the 3 s deadline
        self.assertEqual(gw.stop(), 0)
        self.assertIn('"outcome":"websocket_going_away_1001"', gw.log())
