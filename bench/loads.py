"""
Load and what is read while it runs: wrk, CPU per request, memory, and the
syscalls per request from strace.

Every side is measured the same way: a warm-up, then wrk for a fixed time with
the side's CPU time read from /proc before and after (see procs.py); sides
alternate round by round (a b c, c b a, ...) and the medians are kept.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from procs import LOAD_CPU, Proc, cpuSeconds, ensureDebian, mb, openFiles, rss

_LAT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)", re.M)
_AVG = re.compile(r"^\s+Latency\s+([\d.]+)(us|ms|s)", re.M)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}

def wrkRun(wrk: str, url: str, connections: int, duration: int, threads: int = 2,
           cpu: str | None = LOAD_CPU, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    threads = max(1, min(threads, connections))
    cmd = [wrk, "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parseWrk(out)


def parseWrk(out: str) -> dict[str, Any]:
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct, value, unit in _LAT.findall(out):
        lat[pct] = float(value) * _UNIT[unit]
    avg = _AVG.search(out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockerr = re.search(r"Socket errors: (.*)", out)
    return {"requests": requests, "rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "avg_ms": round(float(avg.group(1)) * _UNIT[avg.group(2)], 4) if avg else None,
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
            loadCPU: str | None = LOAD_CPU, warmup: int = 2, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    start = rss(proxy.pids())
    # Warm up: connections pooled, code paths hot.
    wrkRun(wrk, url, min(connections, 50), warmup, cpu=loadCPU, headers=headers)
    pids = proxy.pids()
    idle = rss(pids)
    cpu0 = cpuSeconds(pids)
    sampler = Sampler(proxy)
    sampler.start()
    try:
        result = wrkRun(wrk, url, connections, duration, cpu=loadCPU, headers=headers)
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
              loadCPU: str | None = LOAD_CPU, headers: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """
    Measure every side C{repeat} times, alternating (a b c, c b a, ...), and
    keep the medians: a machine that gets busier for a minute then weighs on
    every side alike, and one bad run does not make the figure.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(repeat):
        for name in (order if i % 2 == 0 else order[::-1]):
            proc, url = sides[name]
            runs[name].append(measure(wrk, proc, url, connections, duration, loadCPU, warmup=2 if i == 0 else 1,
                                      headers=headers))
    return {name: median(rs) for name, rs in runs.items()}


# -- syscalls

_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\S+)\s*$", re.M)


def parseStrace(text: str) -> dict[str, int]:
    """`strace -c` summary: calls per syscall name (the "total" row included)."""
    return {name: int(calls) for calls, name in _STRACE_ROW.findall(text)}


def syscalls(proxy: Proc, url: str, connections: int, requests: int,
             loadCPU: str | None = LOAD_CPU) -> dict[str, Any]:
    """
    Syscalls per request: `strace -c -f` attached to the side's processes
    while exactly C{requests} GETs are sent over C{connections} keep-alive
    connections (python bench/loads.py, pinned where wrk runs; wrk has no
    fixed count), divided by C{requests}.  The figure includes opening and
    closing the client connections, a few syscalls each, which is small
    against C{requests} (the bench sends at least 10 per connection).
    """
    strace = ensureDebian("strace", ["strace"])
    with tempfile.TemporaryDirectory(prefix="txgw-strace-") as d:
        out, err = Path(d, "summary.txt"), Path(d, "stderr.txt")
        pids = proxy.pids()
        cmd = [strace, "-c", "-f", "-o", str(out)]
        for pid in pids:
            cmd += ["-p", str(pid)]
        with err.open("wb") as errFile:
            tracer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errFile)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                said = err.read_text()
                if all(f"Process {pid} attached" in said for pid in pids):
                    break
                time.sleep(0.02)
            client = [sys.executable, str(Path(__file__)), url, str(connections), str(requests)]
            if loadCPU is not None:
                client = ["taskset", "-c", loadCPU, *client]
            done = json.loads(subprocess.run(client, capture_output=True, text=True, check=True, timeout=600).stdout)
        finally:
            tracer.send_signal(signal.SIGINT)  # strace detaches and writes its summary
            tracer.wait(30)
        counts = parseStrace(out.read_text())
    total = counts.pop("total", sum(counts.values()))
    n = max(1, done["requests"])
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
    return {"requests": done["requests"], "not_200": done["not_200"], "per_request": round(total / n, 2),
            "top": {name: round(calls / n, 2) for name, calls in top}}


async def fixedLoad(url: str, connections: int, requests: int) -> dict[str, int]:
    """
    Exactly C{requests} GETs of C{url} over C{connections} keep-alive
    connections, each answer read whole (by its Content-Length) before the
    next request on that connection.
    """
    parts = urlsplit(url)
    head = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n").encode()
    share = [requests // connections + (1 if i < requests % connections else 0) for i in range(connections)]
    counts = {"requests": 0, "not_200": 0}

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in range(n):
                writer.write(head)
                response = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", response)
                if length is None:
                    raise RuntimeError(f"no Content-Length in {response!r}")
                await reader.readexactly(int(length.group(1)))
                counts["requests"] += 1
                if not response.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
                    counts["not_200"] += 1
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(one(n) for n in share if n))
    return counts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(fixedLoad(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
