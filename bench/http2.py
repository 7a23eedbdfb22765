"""
`make bench-http2`: HTTP/2 clients with many streams per connection (h2load), through txgateway.

Three measurements, each bounded in requests and on 127.0.0.1 only:

  origin     h2load -> an HTTP/2 origin: a txgateway with h2c whose one route
             answers from the config (`respond`): the cost of the HTTP/2
             server layer alone, no upstream (the ceiling for the rest)
  proxy-h2   h2load -> txgateway (h2c) -> bench/backend.py (HTTP/1.1 origin)
  proxy-h1   h2load --h1 -> the same txgateway: the same requests from an
             HTTP/1.1 client, to compare HTTP/2's cost per request with it

Each prints requests/s and the gateway's CPU microseconds per request (user
+ system from /proc, the figure a noisy machine moves least).  The gateway
is pinned to CPU 0, h2load and the origin to CPU 1.  h2load comes from
Debian's nghttp2-client (`make ensure-h2load` installs it when missing).

python bench/http2.py [--requests 20000] [--clients 10] [--streams 10]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from procs import BIN, HERE, LOAD_CPU, PROXY_CPU, Proc, cpuSeconds, ensureDebian, freePort, waitFor200

CONFIG = """\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
  h2c: true
logging: {{level: warn, access_log: false}}
{upstreams}
routes:
  - name: all
    match: {{path_prefix: /}}
{route}
"""


def gatewayConfig(port: int, origin: int | None) -> str:
    if origin is None:
        return CONFIG.format(port=port, upstreams="", route='    respond: {status: 200, body: "hello, world\\n"}')
    return CONFIG.format(port=port, upstreams=f"upstreams:\n  app:\n    targets: [http://127.0.0.1:{origin}]",
                         route="    upstream: app")


def startGateway(config: str, workdir: Path) -> Proc:
    path = workdir / f"gw{abs(hash(config))}.yaml"
    path.write_text(config)
    port = int(re.search(r"tcp:(\d+)", config).group(1))  # type: ignore[union-attr]
    proc = Proc([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "txgateway", "--config", str(path)],
                cpu=PROXY_CPU, cwd=workdir, errlog=workdir / "gw.err")
    proc.port = port
    waitFor200(port, "/health" if "upstream: app" in config else "/", proc)
    return proc


def h2load(binary: str, url: str, requests: int, clients: int, streams: int, h1: bool = False) -> float:
    """Requests per second h2load reports (all must succeed)."""
    cmd = ["taskset", "-c", LOAD_CPU, binary, "-n", str(requests), "-c", str(clients), "-m", str(streams), url]
    if h1:
        cmd.insert(4, "--h1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if done is None or rate is None or int(done.group(2)) or int(done.group(1)) != requests:
        raise SystemExit(f"h2load did not complete every request:\n{out[-1500:]}")
    return float(rate.group(1))


def measure(name: str, binary: str, gateway: Proc, url: str, args: argparse.Namespace, h1: bool = False) -> None:
    h2load(binary, url, min(args.requests, 2000), args.clients, args.streams, h1)  # warm up
    before = cpuSeconds(gateway.pids())
    rate = h2load(binary, url, args.requests, args.clients, args.streams, h1)
    cpu = (cpuSeconds(gateway.pids()) - before) / args.requests * 1e6
    print(f"{name:10} {rate:10.0f} req/s {cpu:8.0f} us CPU/request (gateway)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per connection (h2load -m)")
    args = parser.parse_args()
    binary = ensureDebian("h2load", ["nghttp2-client"])
    print(f"h2load -n {args.requests} -c {args.clients} -m {args.streams}, 13-byte answers", flush=True)
    with tempfile.TemporaryDirectory(prefix="txgw-bench-h2-") as tmp:
        workdir = Path(tmp)
        started: list[Proc] = []
        try:
            originPort = freePort()
            backend = Proc([sys.executable, str(HERE / "backend.py"), str(originPort), "--size", "13"], cpu=LOAD_CPU)
            started.append(backend)
            respond = startGateway(gatewayConfig(freePort(), None), workdir)
            started.append(respond)
            measure("origin", binary, respond, f"http://127.0.0.1:{respond.port}/", args)
            respond.stop()
            proxy = startGateway(gatewayConfig(freePort(), originPort), workdir)
            started.append(proxy)
            measure("proxy-h2", binary, proxy, f"http://127.0.0.1:{proxy.port}/", args)
            measure("proxy-h1", binary, proxy, f"http://127.0.0.1:{proxy.port}/", args, h1=True)
        finally:
            for p in started:
                p.stop()


if __name__ == "__main__":
    main()
