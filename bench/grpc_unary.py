"""
gRPC unary calls, direct and through txgateway: what the gateway adds per call.

    python bench/grpc_unary.py [--seconds 5] [--concurrency 8] [--size 64]

One grpcio test service (tests/e2e/grpcserver.py, its Unary method echoing
the request) and txgateway (twistd, `protocol: grpc` upstream, h2c listener,
access log to a file, metrics) pinned to CPU 0 when taskset exists; the
grpcio client runs here on CPU 1.  For each of "direct" and "gateway" the
client makes unary calls for a fixed number of seconds, first one at a time
(latency: p50 and p99 of each call's round trip) and then `concurrency`
calls in flight at once (throughput); the gateway's CPU microseconds per
call are read from /proc/PID/stat (user + system), which a noisy machine
moves much less than calls per second.  Bounded: every phase ends after
`--seconds`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import BIN, LOAD_CPU, PROXY_CPU, REPO, Proc, cpuSeconds, env, freePort  # noqa: E402

SERVER = REPO / "tests" / "e2e" / "grpcserver.py"
METHOD = "/test.Echo/Unary"


def _raw(data: bytes) -> bytes:
    return data


def startServer() -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, str(SERVER), "0", "g1"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", LOAD_CPU, *cmd]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("ready "):
        raise RuntimeError(f"grpc server did not start: {line!r}")
    return proc, int(line.split()[1])


def startGateway(tmp: Path, target: int) -> tuple[Proc, int]:
    port = freePort()
    config = tmp / "gw.yaml"
    config.write_text(f"""\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
  h2c: true
logging:
  level: warn
  access_log: true
  access_log_file: {tmp / "access.log"}
upstreams:
  model:
    protocol: grpc
    targets: [http://127.0.0.1:{target}]
routes:
  - {{name: echo, match: {{path_prefix: /test.Echo/}}, upstream: model}}
""")
    cpu = PROXY_CPU if shutil.which("taskset") else None
    proc = Proc([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=/dev/null", "txgateway", "--config", str(config)],
                cpu=cpu, cwd=tmp)
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD, _raw, _raw)
        while True:
            try:
                call(b"warm", timeout=1)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or proc.p.poll() is not None:
                    raise RuntimeError("the gateway did not answer gRPC calls") from None
                time.sleep(0.05)
    return proc, port


def sequential(port: int, seconds: float, payload: bytes) -> dict[str, Any]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD, _raw, _raw)
        for _ in range(50):
            call(payload, timeout=5)
        latencies = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            call(payload, timeout=5)
            latencies.append(time.perf_counter() - t)
    latencies.sort()
    return {"calls": len(latencies), "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1]}


def concurrent(port: int, seconds: float, payload: bytes, concurrency: int, pids: list[int]) -> dict[str, Any]:
    done = [0] * concurrency
    end = time.monotonic() + seconds
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD, _raw, _raw)

        def run(i: int) -> None:
            while time.monotonic() < end:
                call(payload, timeout=5)
                done[i] += 1

        cpu0 = cpuSeconds(pids) if pids else 0.0
        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        cpu = cpuSeconds(pids) - cpu0 if pids else None
    calls = sum(done)
    return {"calls": calls, "calls_per_s": calls / elapsed,
            "cpu_us_per_call": None if cpu is None else 1e6 * cpu / calls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="request message bytes")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    payload = b"x" * args.size
    server, target = startServer()
    report: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="txgw-grpc-bench-") as tmp:
            gateway, port = startGateway(Path(tmp), target)
            try:
                for name, p, pids in (("direct", target, []), ("gateway", port, gateway.pids())):
                    report[name] = {"sequential": sequential(p, args.seconds, payload),
                                    "concurrent": concurrent(p, args.seconds, payload, args.concurrency, pids)}
            finally:
                gateway.stop()
    finally:
        server.kill()
        server.wait()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"| path | p50 ms (1 at a time) | p99 ms | calls/s ({args.concurrency} in flight) | gateway CPU µs per call |")
    print("|---|---|---|---|---|")
    for name, r in report.items():
        cpu = r["concurrent"]["cpu_us_per_call"]
        print(f"| {name} | {r['sequential']['p50_ms']:.3f} | {r['sequential']['p99_ms']:.3f} | "
              f"{r['concurrent']['calls_per_s']:.0f} | {'—' if cpu is None else f'{cpu:.0f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
