"""
`make bench`: txgateway against the bare-Agent reference proxy, in one run.

Every case starts three origins (bench/backend.py) and drives a proxy in
front of them with wrk, one proxy at a time.  The proxy under test runs
pinned to CPU 0 while wrk and the origins share CPU 1, so the proxy has a
core of its own.  Each measurement reports requests/s, p50/p99 latency, the
proxy's CPU microseconds per request (from /proc/PID/stat: user + system of
the proxy alone, which a noisy machine moves much less than throughput),
its resident memory at start, idle after warm-up and at its peak under load,
and the most file descriptors it held.  txgateway/reference ratios are taken
within one case, so both sides saw the same machine minutes apart.

Cases (the issue's list):

  tiny        13-byte responses, 20 routes, 50 connections: the realistic
              config (least-connections over 3 targets, a rate limit per
              route that never triggers, metrics, access log to a file,
              request ids, info-level logging)
  64k         the same with 64 KiB responses
  routes1000  the same config with 1,000 routes
  slow        origins answer after 50 ms, 1,000 concurrent clients: RSS
              and file descriptors with 1,000 client connections open
  cold start  process launch to the first proxied 200, median of 3
  workers     server.workers: 2 against 1 worker, nothing pinned (see
              the note printed with the figures: 2 cores cannot give the
              load generator a core of its own while 2 workers use both)

Results go to bench/results/latest.json and a table is printed.  Traffic
goes to 127.0.0.1 only; every run is bounded by --duration.

python bench/run.py [--duration 5] [--repeat 3] [--connections 50] [--quick] [--cases tiny,64k,...]

Each side of a case is measured --repeat times, alternating with the other
side, and the medians are reported (every run is kept in the JSON).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CORES = os.cpu_count() or 1
PROXY_CPU = "0"
LOAD_CPU = "1" if CORES > 1 else "0"
ALL_CPUS = ",".join(str(i) for i in range(CORES))
PATH = "/svc7/item"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(tree: Path = REPO) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "src"), str(tree)]))


# -- /proc readings (of a process and the workers it started)

def family(pid: int) -> list[int]:
    """C{pid} and its descendants (a worker supervisor's workers)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                children = Path(f"/proc/{pids[i]}/task/{task}/children").read_text().split()
                pids.extend(int(c) for c in children)
        except OSError:
            pass
        i += 1
    return pids


def cpuSeconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total


def openFiles(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def mb(n: int) -> float:
    return round(n / 2**20, 1)


# -- processes

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


class Proc:
    def __init__(self, cmd: list[str], cpu: str | None = None, cwd: Path | None = None, tree: Path = REPO) -> None:
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.started = time.monotonic()
        self.p = subprocess.Popen(cmd, env=env(tree), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.p.pid

    def pids(self) -> list[int]:
        return family(self.p.pid)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(40)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def get(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def waitFor200(port: int, path: str, proc: Proc, timeout: float = 30.0) -> float:
    """Seconds from C{proc}'s launch to its first 200 for C{path} (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"process exited with {proc.p.returncode} before answering")
        try:
            if get(port, path) == 200:
                return time.monotonic() - proc.started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200")


@contextmanager
def origins(size: int, delay: float, cpu: str | None = LOAD_CPU) -> Iterator[list[str]]:
    """Three bench origins; yields their URLs."""
    procs = []
    try:
        ports = [freePort() for _ in range(3)]
        for p in ports:
            procs.append(Proc([sys.executable, str(HERE / "backend.py"), str(p), "--size", str(size),
                               "--delay", str(delay)], cpu=cpu))
        for p, proc in zip(ports, procs, strict=True):
            waitFor200(p, "/", proc)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.stop()


def gatewayConfig(port: int, targets: list[str], routes: int, logFile: Path, workers: int = 1) -> str:
    """The realistic config: every feature the issue names, none of them triggering."""
    lines = [
        "server:",
        f'  listen: "tcp:{port}:interface=127.0.0.1:backlog=2048"',
        f"  workers: {workers}",
        "  timeouts: {drain: 5s}",
        "  max_connections_per_ip: 0",  # 1,000 clients from one address are the point of the slow case
        "logging:",
        "  level: info",
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


class Gateway(Proc):
    """txgateway under twistd with the realistic config, in its own temp directory."""

    def __init__(self, tmp: Path, targets: list[str], routes: int, workers: int = 1,
                 cpu: str | None = PROXY_CPU, tree: Path = REPO) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "gw.yaml"
        self.workers = workers
        config.write_text(gatewayConfig(self.port, targets, routes, tmp / "access.log", workers))
        super().__init__([str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=/dev/null", "txgateway",
                          "--config", str(config)], cpu=cpu, cwd=tmp, tree=tree)
        self.coldStart = waitFor200(self.port, PATH, self)


class Reference(Proc):
    def __init__(self, targets: list[str], cpu: str | None = PROXY_CPU) -> None:
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, str(HERE / "reference_proxy.py"), str(self.port), *targets], cpu=cpu)
        self.coldStart = waitFor200(self.port, PATH, self)


# -- load

_LAT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)", re.M)


def wrkRun(wrk: str, url: str, connections: int, duration: int, threads: int = 2,
           cpu: str | None = LOAD_CPU) -> dict[str, Any]:
    cmd = [wrk, "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s",
           url]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parseWrk(out)


def parseWrk(out: str) -> dict[str, Any]:
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, value, unit in _LAT.findall(out):
        lat[pct] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    return {"requests": requests, "rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": sockerr.group(1) if sockerr else None}


class Sampler(threading.Thread):
    """Peak RSS and open descriptors of a process family while the load runs."""

    def __init__(self, proc: Proc) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.peakRSS = 0
        self.peakFiles = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.25):
            pids = self.proc.pids()
            self.peakRSS = max(self.peakRSS, rss(pids))
            self.peakFiles = max(self.peakFiles, openFiles(pids))


def measure(wrk: str, proxy: Proc, url: str, connections: int, duration: int,
            loadCPU: str | None = LOAD_CPU, warmup: int = 2) -> dict[str, Any]:
    start = rss(proxy.pids())
    # Warm up: connections pooled, code paths hot.
    wrkRun(wrk, url, min(connections, 50), warmup, cpu=loadCPU)
    pids = proxy.pids()
    idle = rss(pids)
    cpu0 = cpuSeconds(pids)
    sampler = Sampler(proxy)
    sampler.start()
    try:
        result = wrkRun(wrk, url, connections, duration, cpu=loadCPU)
    finally:
        sampler.halt.set()
        sampler.join()
    cpu1 = cpuSeconds(proxy.pids())
    result["processes"] = len(pids)
    result["rss_start_mb"] = mb(start)
    result["rss_idle_mb"] = mb(idle)
    result["rss_load_mb"] = mb(max(sampler.peakRSS, rss(proxy.pids())))
    result["open_files_peak"] = sampler.peakFiles
    result["cpu_us_per_request"] = round((cpu1 - cpu0) / max(1, result["requests"]) * 1e6, 1)
    return result


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-field median of several measurements (the runs themselves kept under "runs")."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and all(v is not None for v in values):
            m = statistics.median(values)
            out[key] = round(m, 2) if isinstance(m, float) else m
        else:
            out[key] = value
    out["runs"] = runs
    return out


def alternate(wrk: str, sides: dict[str, tuple[Proc, str]], connections: int, duration: int, repeat: int,
              loadCPU: str | None = LOAD_CPU) -> dict[str, dict[str, Any]]:
    """
    Measure every side C{repeat} times, alternating (a b, b a, a b ...), and
    keep the medians: a machine that gets busier for a minute then weighs on
    both sides alike, and one bad run does not make the figure.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(repeat):
        for name in (order if i % 2 == 0 else order[::-1]):
            proc, url = sides[name]
            runs[name].append(measure(wrk, proc, url, connections, duration, loadCPU, warmup=2 if i == 0 else 1))
    return {name: median(rs) for name, rs in runs.items()}


def ratios(gw: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    return {
        "cpu_per_request": round(gw["cpu_us_per_request"] / ref["cpu_us_per_request"], 2),
        "p99": round((gw["p99_ms"] or 0) / (ref["p99_ms"] or 1), 2),
        "rps": round(gw["rps"] / ref["rps"], 2),
    }


# -- cases

def proxyCase(wrk: str, name: str, size: int, delay: float, routes: int, connections: int,
              duration: int, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {"case": name, "response_bytes": size, "backend_delay_s": delay, "routes": routes,
                           "connections": connections, "duration_s": duration, "repeat": repeat}
    tmp = Path(tempfile.mkdtemp(prefix="txgw-bench-"))
    try:
        with origins(size, delay) as targets:
            # Both proxies run for the whole case (pinned to the same core);
            # only the one under load uses it.
            ref = Reference(targets)
            gw: Gateway | None = None
            try:
                gw = Gateway(tmp, targets, routes)
                out["cold_start_s"] = round(gw.coldStart, 3)
                results = alternate(wrk, {"reference": (ref, ref.url + PATH), "txgateway": (gw, gw.url + PATH)},
                                    connections, duration, repeat)
            finally:
                ref.stop()
                if gw is not None:
                    gw.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.update(results)
    out["ratio"] = ratios(out["txgateway"], out["reference"])
    return out


def coldStartCase(launches: int = 3) -> dict[str, Any]:
    """Launch to first proxied 200, the proxy pinned as in the other cases."""
    times = []
    with origins(13, 0.0) as targets:
        for _ in range(launches):
            tmp = Path(tempfile.mkdtemp(prefix="txgw-bench-"))
            try:
                gw = Gateway(tmp, targets, 20)
                times.append(gw.coldStart)
                gw.stop()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return {"case": "cold start", "launches": launches, "seconds": [round(t, 3) for t in times],
            "median_s": round(statistics.median(times), 3)}


def workersCase(wrk: str, connections: int, duration: int, repeat: int) -> dict[str, Any]:
    """
    1 worker against server.workers: 2, with nothing pinned: the gateway,
    wrk and the origins all share both cores.  Throughput there is bounded
    by what wrk and the origins leave over, so the CPU per request (summed
    over the supervisor and its workers) is reported too: it is what
    decides how far N workers scale once each has a core of its own.
    """
    out: dict[str, Any] = {"case": "workers", "connections": connections, "duration_s": duration, "repeat": repeat,
                           "split": f"nothing pinned: gateway, wrk and origins share CPUs {ALL_CPUS}"}
    dirs = [Path(tempfile.mkdtemp(prefix="txgw-bench-")) for _ in range(2)]
    gateways: list[Gateway] = []
    try:
        with origins(13, 0.0, cpu=None) as targets:
            try:
                for workers, tmp in zip((1, 2), dirs, strict=True):
                    gateways.append(Gateway(tmp, targets, 20, workers=workers, cpu=None))
                # Each worker answers on its own; the first 200 may come before both listen.
                time.sleep(1.0)
                results = alternate(wrk, {f"workers_{g.workers}": (g, g.url + PATH) for g in gateways},
                                    connections, duration, repeat, loadCPU=None)
            finally:
                for g in gateways:
                    g.stop()
    finally:
        for tmp in dirs:
            shutil.rmtree(tmp, ignore_errors=True)
    out.update(results)
    one, two = out["workers_1"], out["workers_2"]
    out["rps_ratio"] = round(two["rps"] / one["rps"], 2)
    # Capacity per core is 1e6 / cpu_us_per_request; N workers on N free cores
    # reach N times that, less what each request costs more with N workers.
    out["cpu_scaling_2_cores"] = round(2 * one["cpu_us_per_request"] / two["cpu_us_per_request"], 2)
    return out


# -- report

def table(report: dict[str, Any]) -> str:
    rows = [("case", "proxy", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "RSS idle MB", "RSS load MB",
             "fds", "ratio CPU", "ratio p99")]
    for c in report["cases"]:
        if "reference" in c:
            for side in ("reference", "txgateway"):
                r = c[side]
                ratio = c["ratio"] if side == "txgateway" else {}
                rows.append((c["case"], side, f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                             f"{r['cpu_us_per_request']:.1f}", f"{r['rss_idle_mb']}", f"{r['rss_load_mb']}",
                             str(round(r["open_files_peak"])), str(ratio.get("cpu_per_request", "")),
                             str(ratio.get("p99", ""))))
        elif c["case"] == "workers":
            for key in ("workers_1", "workers_2"):
                r = c[key]
                rows.append(("workers (unpinned)", key.replace("_", " "), f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}",
                             f"{r['p99_ms']:.2f}", f"{r['cpu_us_per_request']:.1f}", f"{r['rss_idle_mb']}",
                             f"{r['rss_load_mb']}", str(round(r["open_files_peak"])), "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for c in report["cases"]:
        if c["case"] == "cold start":
            lines.append(f"\ncold start (launch to first proxied 200): median {c['median_s']} s of {c['seconds']}")
        if c["case"] == "workers":
            lines.append(f"workers: 2 workers give {c['rps_ratio']}x the req/s of 1 ({c['split']}); "
                         f"by CPU per request, 2 workers on 2 free cores would give {c['cpu_scaling_2_cores']}x")
    return "\n".join(lines)


CASES = ("tiny", "64k", "routes1000", "slow", "coldstart", "workers")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per side, alternating; medians reported")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="only the tiny-response case")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--output", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args()
    wrk = ensureWrk()
    chosen = ["tiny"] if args.quick else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(chosen) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    d, c, n = args.duration, args.connections, args.repeat
    runs = {
        "tiny": lambda: proxyCase(wrk, "tiny, 20 routes", 13, 0.0, 20, c, d, n),
        "64k": lambda: proxyCase(wrk, "64 KiB, 20 routes", 65536, 0.0, 20, c, d, n),
        "routes1000": lambda: proxyCase(wrk, "tiny, 1000 routes", 13, 0.0, 1000, c, d, n),
        "slow": lambda: proxyCase(wrk, "slow origin 50 ms, 1000 conns", 13, 0.05, 20, 1000, d, n),
        "coldstart": lambda: coldStartCase(),
        "workers": lambda: workersCase(wrk, c, d, n),
    }
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cores": CORES, "cpu": _cpuModel(), "python": platform.python_version(),
                    "kernel": platform.release(), "load_average_at_start": os.getloadavg()},
        "split": {"proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU,
                  "note": "proxy pinned alone; wrk and the 3 origins share the other core"},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cases": [],
    }
    for name in CASES:
        if name not in chosen:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        report["cases"].append(runs[name]())
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten to {out}")
    return 0


def _cpuModel() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
