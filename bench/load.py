"""
`make load-test`: a bounded load run against the local demo, with a summary.

go-reverse-proxy's users ran `make load-test` (JMeter, 20 users for 60 s);
this is the same without JMeter: USERS threads, each with its own keep-alive
connection, send requests one after another for SECONDS, then the run prints
requests, errors, throughput and latency percentiles.  When nothing answers
on the target port, the demo (examples/run_demo.py, what `make run` starts)
is started for the run and stopped after it.

Bounded on purpose: only 127.0.0.1 / localhost, at most 200 users and 300 s.

    python bench/load.py [--users 20] [--seconds 10] [--path /api/v1/users] [--host users.example.com]
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_USERS = 200
MAX_SECONDS = 300.0


class Result:
    """One user's tally; merged after the run (no locking on the hot path)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()


def user(host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes | None,
         deadline: float, result: Result) -> None:
    conn: http.client.HTTPConnection | None = None
    while time.monotonic() < deadline:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=10)
        start = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as e:
            result.failures[type(e).__name__] += 1
            conn.close()
            conn = None
            continue
        result.latencies.append(time.perf_counter() - start)
        result.statuses[response.status] += 1
        if response.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(results: list[Result], seconds: float, users: int, target: str) -> str:
    latencies = sorted(x for r in results for x in r.latencies)
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    for r in results:
        statuses.update(r.statuses)
        failures.update(r.failures)
    answered = sum(statuses.values())
    errors = sum(n for code, n in statuses.items() if code >= 500 or code == 429) + sum(failures.values())
    ms = [percentile(latencies, q) * 1000 for q in (0.5, 0.95, 0.99)]
    lines = [
        f"load test: {users} users for {seconds:g} s against {target}",
        f"  requests   {answered + sum(failures.values())} ({answered / seconds:.0f}/s answered)",
        f"  errors     {errors} (5xx, 429 or no answer)",
        f"  statuses   {', '.join(f'{code}: {n}' for code, n in sorted(statuses.items())) or '-'}",
    ]
    if failures:
        lines.append(f"  failures   {', '.join(f'{k}: {n}' for k, n in failures.most_common())}")
    lines.append(f"  latency    p50 {ms[0]:.2f} ms   p95 {ms[1]:.2f} ms   p99 {ms[2]:.2f} ms")
    return "\n".join(lines)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def startDemo(port: int) -> subprocess.Popen[bytes]:
    """examples/run_demo.py (`make run`), until its gateway answers /ready."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    demo = subprocess.Popen([sys.executable, str(REPO / "examples" / "run_demo.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and demo.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return demo
        except OSError:
            time.sleep(0.2)
    stopDemo(demo)
    raise SystemExit(f"load test: the demo gateway did not come up on 127.0.0.1:{port} (try `make run`)")


def stopDemo(demo: subprocess.Popen[bytes]) -> None:
    if demo.poll() is None:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(40)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a bounded load run against the local txgateway demo")
    parser.add_argument("--users", type=int, default=20, help=f"concurrent users (1-{MAX_USERS}; default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help=f"duration (at most {MAX_SECONDS:g}; default 10)")
    parser.add_argument("--target", default="127.0.0.1", help="127.0.0.1 or localhost only")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/api/v1/users?par1=foo")
    parser.add_argument("--host", default="users.example.com", help="the Host header")
    parser.add_argument("--body", default=None, help="request body (sent as JSON)")
    parser.add_argument("--no-demo", action="store_true", help="never start the demo; fail if nothing listens")
    args = parser.parse_args(argv)
    if args.target not in ("127.0.0.1", "localhost"):
        parser.error("load runs go to 127.0.0.1 only")
    if not 1 <= args.users <= MAX_USERS or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"bounded: 1-{MAX_USERS} users, at most {MAX_SECONDS:g} s")
    demo = None
    if not listening(args.port):
        if args.no_demo:
            print(f"load test: nothing listens on 127.0.0.1:{args.port} (start it with `make run`)", file=sys.stderr)
            return 1
        print(f"load test: starting the demo (examples/run_demo.py) on 127.0.0.1:{args.port} for this run")
        demo = startDemo(args.port)
    headers = {"Host": args.host}
    body = args.body.encode() if args.body is not None else None
    if body is not None:
        headers["Content-Type"] = "application/json"
    results = [Result() for _ in range(args.users)]
    deadline = time.monotonic() + args.seconds
    threads = [threading.Thread(target=user, args=("127.0.0.1", args.port, args.method, args.path, headers, body,
                                                   deadline, r), daemon=True) for r in results]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 15)
    finally:
        if demo is not None:
            stopDemo(demo)
    print(summary(results, args.seconds, args.users, f"{args.method} http://{args.host}{args.path} (127.0.0.1:{args.port})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
