"""
The bench's processes: starting, pinning, stopping and reading them from /proc,
and installing the tools the sides need when they are missing.

Every side runs pinned (taskset) to PROXY_CPU; wrk and the origins share
LOAD_CPU.  CPU time is read from /proc/PID/stat for the process and every
process it started (nginx's worker, txgateway's workers), which a noisy
machine moves much less than throughput.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CORES = os.cpu_count() or 1
PROXY_CPU = "0"
LOAD_CPU = "1" if CORES > 1 else "0"
ALL_CPUS = ",".join(str(i) for i in range(CORES))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(tree: Path = REPO) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "src"), str(tree)]))


# -- /proc readings (of a process and the workers it started)

def family(pid: int) -> list[int]:
    """C{pid} and its descendants (a worker supervisor's workers, nginx's worker)."""
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


# -- installing what a side needs

_aptUpdated = False


def _which(binary: str) -> str | None:
    """On PATH, or in the sbin folders a non-root PATH leaves out (nginx, haproxy)."""
    return shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/sbin/{binary}")
                                         if os.access(p, os.X_OK)), None)


def ensureDebian(binary: str, packages: list[str]) -> str:
    """
    The path of C{binary}, installing it with apt-get when missing: the first
    of C{packages} that installs (alternatives, e.g. nginx-light then nginx).
    apt-get runs as it is (the bench is run as root where it installs).
    """
    found = _which(binary)
    if found:
        return found
    global _aptUpdated
    print(f"{binary} not found: installing it with apt-get", file=sys.stderr, flush=True)
    if not _aptUpdated:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        _aptUpdated = True
    errors = []
    for package in packages:
        # The Debian images' policy-rc.d (or its absence of an init) keeps the service from starting.
        done = subprocess.run(["apt-get", "install", "-y", "-qq", package], capture_output=True, text=True,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if done.returncode == 0:
            break
        errors.append(done.stderr.strip()[-300:])
    found = _which(binary)
    if not found:
        raise SystemExit(f"{binary} could not be installed ({' / '.join(packages)}): {errors}; "
                         "install it, or leave its side out with --sides")
    return found


def ensureWrk() -> str:
    return ensureDebian("wrk", ["wrk"])


def ensurePython(modules: list[str]) -> None:
    """Bench-only packages (the aiohttp peer's) pip-installed into this interpreter's environment."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"installing {', '.join(missing)} with pip (bench only)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        importlib.invalidate_caches()


# -- processes

class Proc:
    """A process, pinned to C{cpu} with taskset when given, stopped with SIGTERM."""

    port = 0
    url = ""

    def __init__(self, cmd: list[str], cpu: str | None = None, cwd: Path | None = None, tree: Path = REPO,
                 errlog: Path | None = None) -> None:
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.started = time.monotonic()
        self.errlog = errlog
        err = errlog.open("wb") if errlog is not None else subprocess.DEVNULL
        try:
            self.p = subprocess.Popen(cmd, env=env(tree), cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        finally:
            if errlog is not None:
                err.close()  # type: ignore[union-attr]

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
            said = proc.errlog.read_text(errors="replace")[-500:] if proc.errlog and proc.errlog.exists() else ""
            raise RuntimeError(f"process exited with {proc.p.returncode} before answering {said}")
        try:
            if get(port, path) == 200:
                return time.monotonic() - proc.started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200")
