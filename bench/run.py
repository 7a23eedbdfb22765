"""
`make bench`: txgateway side by side with what users pick instead, in one run.

Every case starts three origins (bench/backend.py) and puts each side in
front of them (bench/sides.py): the origin hit directly (the ceiling),
txgateway, the bare-Agent reference proxy, the hand-written aiohttp + uvloop
proxy, nginx (1 worker) and HAProxy (1 thread).  Every side runs pinned to
CPU 0 while wrk and the origins share CPU 1, so the side under load has a
core of its own; the others sit idle on it.  Each measurement reports
requests/s, p50/p99 latency, the side's CPU microseconds per request (from
/proc/PID/stat: user + system of its processes alone, which a noisy machine
moves much less than throughput), its resident memory idle and at its peak,
the most file descriptors it held, and its syscalls per request (strace -c -f
over a fixed number of requests).  Ratios to the aiohttp proxy and to the
reference are taken within one case, so every side saw the same machine
minutes apart.

Cases:

  tiny        13-byte responses, 50 connections; txgateway with the realistic
              config (20 routes, least-connections over 3 targets, a rate
              limit per route that never triggers, metrics, access log to a
              file, request ids, info-level logging)
  64k         the same with 64 KiB responses
  gzip64k     a 64 KiB JSON response, clients sending Accept-Encoding: gzip:
              txgateway and nginx each without and with gzip (level 5, both):
              the CPU per request compression adds, side by side
  conns1000   tiny responses, 1,000 connections
  latency     one connection, one request at a time: the latency each side
              adds to the origin's own
  routes1000  txgateway with 1,000 routes (against the reference and aiohttp)
  slow        origins answer after 50 ms, 1,000 concurrent clients: RSS and
              file descriptors with 1,000 client connections open
  coldstart   txgateway's launch to the first proxied 200, median of 3
  workers     server.workers: 2 against 1 worker, nothing pinned (see the
              note printed with the figures: 2 cores cannot give the load
              generator a core of its own while 2 workers use both)

wrk, nginx, HAProxy and strace are installed with apt-get when missing (as
root), aiohttp and uvloop with pip into this interpreter's environment (bench
only).  Results go to bench/results/latest.json and a table is printed.
Traffic goes to 127.0.0.1 only; every run is bounded by --duration.

python bench/run.py [--duration 5] [--repeat 3] [--connections 50] [--quick | --short]
                    [--cases tiny,64k,...] [--sides origin,txgateway,...] [--syscalls 5000]

Each side of a case is measured --repeat times, alternating with the other
sides, and the medians are reported (every run is kept in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loads import alternate, measure, syscalls, wrkRun
from procs import ALL_CPUS, BIN, CORES, HERE, LOAD_CPU, PROXY_CPU, REPO, Proc, ensureDebian, ensureWrk
from sides import OPTIONAL_SIDES, PATH, SIDES, Gateway, Reference, ensureSides, gatewayConfig, origins, startSide

# What bench/compare.py, profile.py and inproc.py use from here.
__all__ = ["BIN", "PATH", "REPO", "Gateway", "Reference", "ensureWrk", "gatewayConfig", "measure", "origins",
           "wrkRun"]


# -- cases

def ratios(side: dict[str, Any], base: dict[str, Any] | None) -> dict[str, float | None]:
    if base is None:
        return {"cpu_per_request": None, "p99": None, "rps": None}
    return {
        "cpu_per_request": round(side["cpu_us_per_request"] / base["cpu_us_per_request"], 2),
        "p99": round((side["p99_ms"] or 0) / (base["p99_ms"] or 1), 2),
        "rps": round(side["rps"] / base["rps"], 2),
    }


def proxyCase(wrk: str, name: str, size: int, delay: float, routes: int, connections: int, duration: int,
              repeat: int, sides: list[str], strace: int = 0, json: bool = False,
              headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """
    Every side in C{sides} started in front of the same origins, pinned to
    the same core (only the one under load uses it), measured alternately;
    then, if C{strace}, each side's syscalls over that many requests.
    """
    out: dict[str, Any] = {"case": name, "response_bytes": size, "backend_delay_s": delay, "routes": routes,
                           "connections": connections, "duration_s": duration, "repeat": repeat}
    tmp = Path(tempfile.mkdtemp(prefix="txgw-bench-"))
    procs: dict[str, Proc] = {}
    try:
        with origins(size, delay, json=json) as targets:
            try:
                for side in sides:
                    procs[side] = startSide(side, tmp, targets, size, delay, routes)
                if headers:
                    out["bytes_sent"] = {side: sentBytes(p.url + PATH, headers) for side, p in procs.items()}
                results = alternate(wrk, {side: (p, p.url + PATH) for side, p in procs.items()},
                                    connections, duration, repeat, headers=headers)
                if strace:
                    requests = max(strace, 10 * connections)
                    for side, p in procs.items():
                        results[side]["syscalls"] = syscalls(p, p.url + PATH, connections, requests)
            finally:
                for p in procs.values():
                    p.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for side, p in procs.items():
        results[side]["start_s"] = round(getattr(p, "coldStart", 0.0), 3)
    out["sides"] = results
    aio, ref, origin = results.get("aiohttp"), results.get("reference"), results.get("origin")
    out["ratios"] = {side: {"to_aiohttp": ratios(r, aio), "to_reference": ratios(r, ref)}
                     for side, r in results.items()}
    if origin is not None:
        out["added_vs_origin_ms"] = {side: {"p50": round(r["p50_ms"] - origin["p50_ms"], 3),
                                            "avg": round((r["avg_ms"] or 0) - (origin["avg_ms"] or 0), 3)}
                                     for side, r in results.items()}
    return out


def sentBytes(url: str, headers: tuple[str, ...]) -> int:
    """The body size one response has on the wire with these request headers (compressed or not)."""
    import urllib.request

    request = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        return len(response.read())


def compressionCase(wrk: str, connections: int, duration: int, repeat: int, sides: list[str]) -> dict[str, Any]:
    """txgateway and nginx, each without and with gzip, on one 64 KiB JSON response."""
    chosen = [s for s in ("txgateway", "txgateway-gzip", "nginx", "nginx-gzip")
              if s.removesuffix("-gzip") in sides]
    out = proxyCase(wrk, "64 KiB JSON, gzip", 65536, 0.0, 20, connections, duration, repeat, chosen, json=True,
                    headers=("Accept-Encoding: gzip",))
    r = out["sides"]
    out["compression_cost_us_per_request"] = {
        base: round(r[base + "-gzip"]["cpu_us_per_request"] - r[base]["cpu_us_per_request"], 1)
        for base in ("txgateway", "nginx") if base in r and base + "-gzip" in r}
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

def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(report: dict[str, Any]) -> str:
    rows = [("case", "side", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "RSS idle MB", "RSS load MB", "fds",
             "syscalls/req", "CPU ×aio", "CPU ×ref", "p99 ×aio", "p99 ×ref", "+p50 ms")]
    for c in report["cases"]:
        if "sides" in c:
            for side, r in c["sides"].items():
                to = c["ratios"][side]
                added = c.get("added_vs_origin_ms", {}).get(side, {}).get("p50") if c["connections"] == 1 else None
                rows.append((c["case"], side, f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                             f"{r['cpu_us_per_request']:.1f}", f"{r['rss_idle_mb']}", f"{r['rss_load_mb']}",
                             str(round(r["open_files_peak"])),
                             f"{r['syscalls']['per_request']:.1f}" if "syscalls" in r else "",
                             _x(to["to_aiohttp"]["cpu_per_request"]), _x(to["to_reference"]["cpu_per_request"]),
                             _x(to["to_aiohttp"]["p99"]), _x(to["to_reference"]["p99"]),
                             "" if added is None or side == "origin" else f"{added:+.3f}"))
        elif c["case"] == "workers":
            for key in ("workers_1", "workers_2"):
                r = c[key]
                rows.append(("workers (unpinned)", key.replace("_", " "), f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}",
                             f"{r['p99_ms']:.2f}", f"{r['cpu_us_per_request']:.1f}", f"{r['rss_idle_mb']}",
                             f"{r['rss_load_mb']}", str(round(r["open_files_peak"])), "", "", "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("\n×aio, ×ref: the side's figure over the aiohttp proxy's and the reference's in the same case; "
                 "+p50: p50 at one connection less the origin's own")
    for c in report["cases"]:
        if c.get("connections") == 1 and "added_vs_origin_ms" in c:
            added = ", ".join(f"{side} {a['p50']:+.3f} ms ({a['avg']:+.3f} mean)"
                              for side, a in c["added_vs_origin_ms"].items() if side != "origin")
            lines.append(f"added latency at 1 connection, p50 less the origin's own: {added}")
        for side, r in c.get("sides", {}).items():
            bad = [(run["non_2xx"], run["socket_errors"]) for run in r["runs"] if run["non_2xx"] or run["socket_errors"]]
            if bad or r.get("syscalls", {}).get("not_200"):
                lines.append(f"ERRORS {c['case']}, {side}: non-2xx and socket errors per run {bad}, "
                             f"{r.get('syscalls', {}).get('not_200', 0)} not 200 under strace")
            if "syscalls" in r:
                s = r["syscalls"]
                top = ", ".join(f"{name} {n:g}" for name, n in s["top"].items())
                lines.append(f"syscalls {c['case']}, {side}: {s['per_request']:g}/request over {s['requests']} "
                             f"requests ({top})")
        if "compression_cost_us_per_request" in c:
            cost = ", ".join(f"{side} +{us:g} µs" for side, us in c["compression_cost_us_per_request"].items())
            sizes = ", ".join(f"{side} {n} B" for side, n in c.get("bytes_sent", {}).items())
            lines.append(f"gzip (level 5) on a 64 KiB JSON response, CPU per request added: {cost}; "
                         f"bytes on the wire: {sizes}")
        if c["case"] == "cold start":
            lines.append(f"\ncold start (launch to first proxied 200): median {c['median_s']} s of {c['seconds']}")
        if c["case"] == "workers":
            lines.append(f"workers: 2 workers give {c['rps_ratio']}x the req/s of 1 ({c['split']}); "
                         f"by CPU per request, 2 workers on 2 free cores would give {c['cpu_scaling_2_cores']}x")
    return "\n".join(lines)


CASES = ("tiny", "64k", "gzip64k", "conns1000", "latency", "routes1000", "slow", "coldstart", "workers")
SHORT = ("tiny", "64k", "conns1000", "latency")
# Cases about txgateway's own scaling compare it with the two Python proxies only.
TXGATEWAY_CASES = ("reference", "aiohttp", "txgateway")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=None, help="seconds of load per measurement (5; short: 2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="measurements per side, alternating; medians reported (3; short: 1)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="only the tiny-response case")
    parser.add_argument("--short", action="store_true",
                        help=f"smoke run: {', '.join(SHORT)}, 2 s a side, 1 round, 2,000 requests under strace")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {', '.join(SIDES + OPTIONAL_SIDES)}")
    parser.add_argument("--syscalls", type=int, default=None, metavar="N",
                        help="requests per side under strace -c -f in the tiny, 64k and conns1000 cases "
                             "(5000; short: 2000; 0: none)")
    parser.add_argument("--output", default=str(HERE / "results" / "latest.json"))
    args = parser.parse_args()
    chosen = (list(SHORT) if args.short else ["tiny"] if args.quick
              else [c.strip() for c in args.cases.split(",") if c.strip()])
    unknown = set(chosen) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknownSides = set(sides) - set(SIDES + OPTIONAL_SIDES)
    if unknownSides:
        parser.error(f"unknown sides: {', '.join(sorted(unknownSides))}")
    d = args.duration if args.duration is not None else (2 if args.short else 5)
    n = args.repeat if args.repeat is not None else (1 if args.short else 3)
    strace = args.syscalls if args.syscalls is not None else (2000 if args.short else 5000)
    c = args.connections
    wrk = ensureWrk()
    ensureSides(sides)
    if strace:
        ensureDebian("strace", ["strace"])
    few = [s for s in sides if s in TXGATEWAY_CASES]
    runs = {
        "tiny": lambda: proxyCase(wrk, "tiny", 13, 0.0, 20, c, d, n, sides, strace),
        "64k": lambda: proxyCase(wrk, "64 KiB", 65536, 0.0, 20, c, d, n, sides, strace),
        "gzip64k": lambda: compressionCase(wrk, c, d, n, sides),
        "conns1000": lambda: proxyCase(wrk, "1000 conns", 13, 0.0, 20, 1000, d, n, sides, strace),
        "latency": lambda: proxyCase(wrk, "1 conn", 13, 0.0, 20, 1, d, n, sides),
        "routes1000": lambda: proxyCase(wrk, "tiny, 1000 routes", 13, 0.0, 1000, c, d, n, few),
        "slow": lambda: proxyCase(wrk, "slow origin 50 ms, 1000 conns", 13, 0.05, 20, 1000, d, n, few),
        "coldstart": lambda: coldStartCase(),
        "workers": lambda: workersCase(wrk, c, d, n),
    }
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cores": CORES, "cpu": _cpuModel(), "python": platform.python_version(),
                    "kernel": platform.release(), "load_average_at_start": os.getloadavg()},
        "split": {"proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU,
                  "note": "each side pinned to the proxy CPU, one under load at a time; "
                          "wrk and the 3 origins share the other core"},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "sides": sides,
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
