"""
`make bench`: txgateway against the bare-Agent reference proxy, in one run.

Both proxies run pinned to one core (CPU 0) while wrk and the origins share the
other, one proxy at a time, against the same origins.  For each case it reports
requests/s, p50/p99 latency, the proxy's CPU microseconds per request (from
/proc/PID/stat, so a noisy machine moves both sides alike) and its resident
memory idle and under load, then the txgateway/reference ratios.  Results go to
bench/results/latest.json.  Traffic goes to 127.0.0.1 only, bounded in time.

python bench/run.py [--duration 10] [--connections 50] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
PROXY_CPU = "0"
LOAD_CPU = "1" if CORES > 1 else "0"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))


def cpuSeconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def waitHTTP(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def ensureWrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    print("wrk not found: installing it with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    wrk = shutil.which("wrk")
    assert wrk, "wrk could not be installed"
    return wrk


_LAT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)", re.M)


def wrkRun(wrk: str, url: str, connections: int, duration: int, threads: int = 2) -> dict[str, Any]:
    out = subprocess.run(["taskset", "-c", LOAD_CPU, wrk, "--latency", "-t", str(threads), "-c", str(connections),
                          "-d", f"{duration}s", "--timeout", "10s", url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, value, unit in _LAT.findall(out):
        lat[pct] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    return {"requests": requests, "rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": sockerr.group(1) if sockerr else None}


class Proc:
    def __init__(self, cmd: list[str], cpu: str | None = None, cwd: Path | None = None) -> None:
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.p = subprocess.Popen(cmd, env=env(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(40)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def gatewayConfig(port: int, targets: list[str], routes: int, logFile: Path) -> str:
    lines = [
        "server:",
        f'  listen: "tcp:{port}:interface=127.0.0.1"',
        "  timeouts: {drain: 5s}",
        "logging:",
        "  level: warn",
        "  access_log: true",
        f"  access_log_file: {logFile}",
        "upstreams:",
        "  app:",
        "    balancer: least_connections",
        "    targets: [" + ", ".join(targets) + "]",
        "    pool: {max_per_target: 1000}",
        "routes:",
    ]
    for i in range(routes - 1):
        lines += [f"  - name: r{i}", f"    match: {{path_prefix: /svc{i}}}", "    upstream: app",
                  "    rate_limit: {rate: 1000000/s, burst: 1000000}"]
    lines += ["  - name: default", "    match: {path_prefix: /}", "    upstream: app",
              "    rate_limit: {rate: 1000000/s, burst: 1000000}"]
    return "\n".join(lines) + "\n"


def measure(wrk: str, proxy: Proc, url: str, connections: int, duration: int) -> dict[str, Any]:
    # Warm up: connections pooled, code paths hot.
    wrkRun(wrk, url, min(connections, 50), 2)
    idle = rss(proxy.pid)
    cpu0 = cpuSeconds(proxy.pid)
    result = wrkRun(wrk, url, connections, duration)
    cpu1 = cpuSeconds(proxy.pid)
    result["rss_idle_mb"] = round(idle / 2**20, 1)
    result["rss_load_mb"] = round(rss(proxy.pid) / 2**20, 1)
    result["cpu_us_per_request"] = round((cpu1 - cpu0) / max(1, result["requests"]) * 1e6, 1)
    return result


def runCase(wrk: str, name: str, size: int, delay: float, routes: int, connections: int, duration: int,
            withReference: bool = True) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="txgw-bench-"))
    backends = []
    try:
        ports = [freePort() for _ in range(3)]
        for p in ports:
            backends.append(Proc([sys.executable, str(HERE / "backend.py"), str(p), "--size", str(size),
                                  "--delay", str(delay)], cpu=LOAD_CPU))
        targets = [f"http://127.0.0.1:{p}" for p in ports]
        for t in targets:
            waitHTTP(t + "/")
        out: dict[str, Any] = {"case": name, "connections": connections, "duration_s": duration}
        if withReference:
            rport = freePort()
            ref = Proc([sys.executable, str(HERE / "reference_proxy.py"), str(rport), *targets], cpu=PROXY_CPU)
            try:
                waitHTTP(f"http://127.0.0.1:{rport}/")
                out["reference"] = measure(wrk, ref, f"http://127.0.0.1:{rport}/svc7/item", connections, duration)
            finally:
                ref.stop()
        gport = freePort()
        config = tmp / "gw.yaml"
        config.write_text(gatewayConfig(gport, targets, routes, tmp / "access.log"))
        started = time.monotonic()
        gw = Proc([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=/dev/null", "txgateway", "--config", str(config)],
                  cpu=PROXY_CPU, cwd=tmp)
        try:
            waitHTTP(f"http://127.0.0.1:{gport}/svc7/item")
            out["cold_start_s"] = round(time.monotonic() - started, 3)
            out["txgateway"] = measure(wrk, gw, f"http://127.0.0.1:{gport}/svc7/item", connections, duration)
        finally:
            gw.stop()
        if withReference:
            ref_, gw_ = out["reference"], out["txgateway"]
            out["ratio"] = {
                "cpu_per_request": round(gw_["cpu_us_per_request"] / ref_["cpu_us_per_request"], 2),
                "p99": round((gw_["p99_ms"] or 0) / (ref_["p99_ms"] or 1), 2),
                "rps": round(gw_["rps"] / ref_["rps"], 2),
            }
        return out
    finally:
        for b in backends:
            b.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="only the tiny-response case")
    args = parser.parse_args()
    wrk = ensureWrk()
    cases = [("tiny responses, 20 routes", 13, 0.0, 20, args.connections, True)]
    if not args.quick:
        cases += [
            ("64 KiB responses, 20 routes", 65536, 0.0, 20, args.connections, True),
            ("tiny responses, 1000 routes", 13, 0.0, 1000, args.connections, False),
            ("slow backend (50 ms), 1000 connections", 13, 0.05, 20, 1000, True),
        ]
    results = []
    for name, size, delay, routes, conns, ref in cases:
        print(f"== {name}", flush=True)
        r = runCase(wrk, name, size, delay, routes, conns, args.duration, ref)
        print(json.dumps(r, indent=2), flush=True)
        results.append(r)
    (HERE / "results").mkdir(exist_ok=True)
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": CORES, "proxy_cpu": PROXY_CPU,
              "load_cpu": LOAD_CPU, "cases": results}
    (HERE / "results" / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {HERE / 'results' / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
