"""
WebSocket echo through txgateway against the same traffic sent straight to the origin.

python bench/websocket_echo.py [--duration 5] [--connections 20] [--size 64] [--window 8]

The origin is tests/e2e/wsorigin.py (the `websockets` library's server,
echoing); the gateway a real `twistd -n txgateway` with one `websocket: true`
route to it, pinned to its own CPU (bench/procs.py's PROXY_CPU) while the
origin and this script's client share the other.  The client keeps
--connections WebSockets open, each with --window messages of --size bytes in
flight (a message sent for every one echoed back), for --duration seconds,
first direct to the origin, then through the gateway.  Reported: messages
echoed per second each way, the gateway's CPU per message (user + system
from /proc, each message crossing it twice: in and back), and for scale the
origin's own CPU per message (a Python WebSocket server parsing and writing
every frame) in the direct run.  Compression is off
on the client, so the origin does not spend the run deflating.  Traffic goes
to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from procs import BIN, LOAD_CPU, PROXY_CPU, REPO, Proc, cpuSeconds, freePort, waitFor200
from websockets.asyncio.client import connect

ORIGIN = REPO / "tests" / "e2e" / "wsorigin.py"


def config(port: int, origin: int) -> str:
    return f"""\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
logging: {{level: warn, access_log: false}}
upstreams:
  echo: {{targets: [http://127.0.0.1:{origin}]}}
routes:
  - name: echo
    match: {{path_prefix: /}}
    upstream: echo
    websocket: true
"""


async def _one(url: str, size: int, window: int, until: float) -> int:
    payload = b"x" * size
    done = 0
    async with connect(url, compression=None, max_queue=None) as ws:
        for _ in range(window):
            await ws.send(payload)
        while time.monotonic() < until:
            await ws.recv()
            done += 1
            await ws.send(payload)
        for _ in range(window):
            await ws.recv()
    return done


async def load(url: str, connections: int, size: int, window: int, seconds: float) -> float:
    """Messages echoed per second over C{connections} WebSockets for C{seconds}."""
    started = time.monotonic()
    counts = await asyncio.gather(*(_one(url, size, window, started + seconds) for _ in range(connections)))
    return sum(counts) / (time.monotonic() - started)


def waitTcp(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    if args.duration > 60:
        parser.error("--duration is at most 60 s")
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    originPort, gatewayPort = freePort(), freePort()
    origin = Proc([sys.executable, str(ORIGIN), str(originPort)], cpu=LOAD_CPU)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gw.yaml"
        path.write_text(config(gatewayPort, originPort))
        gateway = Proc([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "txgateway", "--config", str(path)],
                       cpu=PROXY_CPU, cwd=Path(tmp), errlog=Path(tmp) / "gw.err")
        try:
            waitTcp(originPort)
            waitFor200(gatewayPort, "/ready", gateway)
            common = (args.connections, args.size, args.window, args.duration)
            originBefore = cpuSeconds(origin.pids())
            direct = asyncio.run(load(f"ws://127.0.0.1:{originPort}/echo", *common))
            originDirect = cpuSeconds(origin.pids()) - originBefore
            before = cpuSeconds(gateway.pids())
            through = asyncio.run(load(f"ws://127.0.0.1:{gatewayPort}/echo", *common))
            cpu = cpuSeconds(gateway.pids()) - before
        finally:
            gateway.stop()
            origin.stop()
    messages = through * args.duration
    result = {"connections": args.connections, "size": args.size, "window": args.window,
              "direct_messages_per_s": round(direct), "gateway_messages_per_s": round(through),
              "gateway_cpu_us_per_message": round(cpu / messages * 1e6, 1) if messages else None,
              "origin_cpu_us_per_message_direct": round(originDirect / (direct * args.duration) * 1e6, 1)
              if direct else None,
              "gateway_cpu_share": round(cpu / args.duration, 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
