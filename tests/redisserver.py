"""
A real C{redis-server} for tests: started on a free loopback port in a temp
dir, stopped (or killed, or frozen) on demand.

The port: C{redis-server --port 0} does not listen on TCP at all, and the
gateway should meet Redis over TCP as in production, so the port is picked
below the kernel's ephemeral range (where neither C{bind(0)} nor outgoing
connections take ports from, so nothing in the test run grabs it by
chance) and, should a port still be taken, the first start retries on
another.  A restart stays on its port, as a restarted Redis does.

The tests that use it are never skipped: a machine without the binary fails
them with a hint (C{scripts/ensure-redis.sh} installs it; CI runs it first).

L{spin} drives the global reactor until a Deferred has a result, for unit
tests that talk to this server through the gateway's Redis client (which
makes its connections on the global reactor) while the code under test keeps its
own L{twisted.internet.task.Clock}.  It polls with a deadline, like
C{tests.e2e.harness.waitFor}.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.e2e.harness import namedPort


class _PortTaken(RuntimeError):
    pass


class RedisServer:
    """One redis-server process, no persistence, bound to 127.0.0.1."""

    def __init__(self, port: int | None = None, args: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/ensure-redis.sh")
        self.binary = binary
        self.choosePort = port is None  # the first start may move to another port if this one is taken
        self.port = port or namedPort()
        self.args = list(args or [])
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def commandLine(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning",
                *self.args]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        for _ in range(4 if self.choosePort else 0):
            try:
                return self._start()
            except _PortTaken:
                self.port = namedPort()
        return self._start()

    def _start(self) -> RedisServer:
        self.proc = subprocess.Popen(self.commandLine(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     cwd=self.dir)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise _PortTaken(f"redis-server exited with {self.proc.returncode} (port {self.port} taken?)")
            try:
                if self.command("PING") == "PONG":
                    self.choosePort = False
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 10s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the way a crashed or partitioned Redis looks to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: str) -> Any:
        """Send one command over a fresh blocking socket; the parsed reply (enough RESP for tests)."""
        payload = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            reader = s.makefile("rb")
            return _readReply(reader)


class RedisSentinel(RedisServer):
    """
    One C{redis-sentinel} (C{redis-server --sentinel}) watching C{primaryPort}
    as C{name}, with quorum 1 and short timers so that a failover takes a
    couple of seconds.
    """

    def __init__(self, primaryPort: int, name: str = "mymaster", downAfterMs: int = 1000) -> None:
        super().__init__()
        self.name = name
        self.conf = self.dir / "sentinel.conf"  # sentinel rewrites its config file: it must be writable
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {self.dir}\n"
            f"sentinel monitor {name} 127.0.0.1 {primaryPort} 1\n"
            f"sentinel down-after-milliseconds {name} {downAfterMs}\n"
            f"sentinel failover-timeout {name} 10000\n"
            f"sentinel parallel-syncs {name} 1\n")

    def commandLine(self) -> list[str]:
        return [self.binary, str(self.conf), "--sentinel", "--loglevel", "warning"]

    def primaryPort(self) -> int:
        """The port of the primary this sentinel names now."""
        return int(self.command("SENTINEL", "get-master-addr-by-name", self.name)[1])

    def knowsReplicas(self) -> int:
        """How many connected replicas this sentinel sees for its primary."""
        replicas = self.command("SENTINEL", "replicas", self.name) or []
        count = 0
        for fields in replicas:
            info = dict(zip(fields[::2], fields[1::2], strict=True))
            if "disconnected" not in info.get("flags", "") and "s_down" not in info.get("flags", ""):
                count += 1
        return count


def _readReply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise OSError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = reader.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_readReply(reader) for _ in range(n)]
    raise OSError(f"unexpected reply {line!r}")


def spin(d: Deferred[Any], timeout: float = 10.0) -> Any:
    """Run the global reactor until C{d} fires; its result, or raise its failure."""
    box: list[Any] = []
    d.addBoth(box.append)
    waitUntil(lambda: bool(box), timeout, "a Deferred")
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def waitUntil(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Run the global reactor until C{condition()} holds; fail after C{timeout} seconds."""
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        reactor.iterate(0.01)  # type: ignore[attr-defined]

