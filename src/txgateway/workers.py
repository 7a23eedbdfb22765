# -*- test-case-name: tests.e2e.test_workers -*-
"""
Worker processes: one gateway process per core, supervised.

A Twisted process uses one core.  With C{server.workers: N} the process that
twistd starts becomes a supervisor: it binds N listening sockets to the same
address with C{SO_REUSEPORT} (so the kernel spreads new connections evenly,
with no thundering herd on one accept queue), then starts N workers, each
C{twistd -n txgateway} adopting its socket (C{adoptStreamPort}) instead of
binding.  The supervisor restarts a worker that dies (backing off while it
keeps dying: L{txgateway.restarting}), forwards SIGHUP (reload) to all of
them, and on SIGTERM lets every worker drain and waits for them.  Workers
log to pipes this process reads, so it alone writes each log file, whole
lines only (L{txgateway.logrelay}).

Binding in the supervisor means a privileged port needs privileges only
there, and a restarted worker takes over the same socket, so no connection
attempt is refused while it comes back.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgateway.http.process import markCleanStop
from txgateway.logrelay import ACCESS_FD, LineRelay, WorkerOutput
from txgateway.restarting import RestartBackoff

__all__ = ["WorkerSetupError", "WorkerSupervisor", "bindReusePort", "followSupervisor", "installSignals",
           "parseListen", "workerCount"]

log = Logger(namespace="txgateway.workers")

# tcp:, tcp6: or ssl: (a worker adds TLS over the socket it adopts: see listening.Listener).
_TCP = re.compile(r"^(?:tcp6?|ssl):(\d+)((?::[a-zA-Z]+=[^:]*)*)$")


class WorkerSetupError(Exception):
    """The config asks for workers in a way that cannot work, or their socket cannot be bound."""

    oneLine = True  # shown as one line, not a traceback (txgateway.tap)


def workerCount(configured: int, override: str | None = None) -> int:
    """C{--workers} wins over C{server.workers}; 0 or C{auto} means one per core."""
    value: int | str = override if override is not None else configured
    if value in ("auto", 0, "0"):
        return os.cpu_count() or 1
    n = int(value)
    if n < 1:
        raise WorkerSetupError("workers must be at least 1 (or auto)")
    return n


def parseListen(description: str) -> tuple[int, str, int]:
    """(port, interface, backlog) of a C{tcp:}, C{tcp6:} or C{ssl:} endpoint string (TLS options are the workers')."""
    m = _TCP.match(description)
    if m is not None and description.startswith("ssl:"):
        from txgateway.tls.server import splitSSL

        if splitSSL(description) is None:  # a worker could not add TLS itself (see listening.Listener)
            raise WorkerSetupError("server.workers > 1 with an ssl: listener takes only port, interface, backlog, "
                                   f"privateKey, certKey, extraCertChain and dhParameters, not {description!r}")
    if m is None:
        raise WorkerSetupError(f"server.workers > 1 needs a tcp:, tcp6: or ssl: listener with a port, not {description!r}")
    options = dict(opt.split("=", 1) for opt in m.group(2).split(":") if opt)
    interface = options.get("interface", "::" if description.startswith("tcp6") else "0.0.0.0")
    return int(m.group(1)), interface.replace("\\", ""), int(options.get("backlog", 512))


def bindReusePort(port: int, interface: str, backlog: int) -> socket.socket:
    """One listening socket; several of them share the address through SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((interface, port))
    s.listen(backlog)
    s.setblocking(False)
    return s


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int, relays: dict[int, LineRelay]) -> None:
        self.supervisor = supervisor
        self.index = index
        self.relays = relays  # childFD -> its line buffer (see txgateway.logrelay)
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        relay = self.relays.get(childFD)
        if relay is not None:
            relay.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        relay = self.relays.get(childFD)
        if relay is not None:
            relay.end()

    def processEnded(self, reason: Failure) -> None:
        for relay in self.relays.values():
            relay.end()
        self.ended.callback(None)
        self.supervisor.workerEnded(self.index, reason)


class WorkerSupervisor(Service):
    """Starts, watches and stops the worker processes."""

    def __init__(self, reactor: Any, clock: IReactorTime, count: int, listen: str, argv: list[str],
                 admin: str | None = None, drain: float = 30.0, executable: str | None = None,
                 environ: dict[str, str] | None = None, output: WorkerOutput | None = None,
                 metricsDir: str | None = None, restarts: Any = None) -> None:
        """
        @param output: where the workers' log lines go (their stdout, stderr
            and access-log pipes are read here); without it they inherit
            this process's stdout and stderr.
        @param metricsDir: C{PROMETHEUS_MULTIPROC_DIR} for the workers (made
            at start when not given).
        @param restarts: C{txgateway_worker_restarts_total} (L{txgateway.restarting.restartsCounter}).
        """
        self.reactor = reactor
        self.clock = clock
        self.count = count
        self.listen = listen
        self.argv = argv
        self.admin = admin
        self.drain = drain
        self.executable = executable or str(Path(sys.executable).parent / "twistd")
        self.environ = dict(os.environ if environ is None else environ)
        self.sockets: list[socket.socket] = []
        self.adminSocket: socket.socket | None = None
        self.processes: dict[int, Any] = {}
        self.protocols: dict[int, _WorkerProtocol] = {}
        self.output = output
        self.backoff = RestartBackoff(clock)
        self.restarts = restarts
        self.stopping = False
        self._pending: dict[int, IDelayedCall] = {}
        self.metricsDir = metricsDir
        # Non-zero when a worker's drain cut requests (it exited 3): the
        # supervisor exits with it too (applied by txgateway.tap).
        self.exitStatus = 0

    def startService(self) -> None:
        super().startService()
        port, interface, backlog = parseListen(self.listen)
        try:
            first = bindReusePort(port, interface, backlog)
            port = first.getsockname()[1]  # with tcp:0 the OS picks once; every worker shares that port
            self.sockets = [first] + [bindReusePort(port, interface, backlog) for _ in range(self.count - 1)]
            if self.admin is not None:
                aport, ainterface, abacklog = parseListen(self.admin)
                self.adminSocket = bindReusePort(aport, ainterface, abacklog)
        except OSError as e:
            # One line, and twistd exits non-zero: see tap._installStartupErrorHook.
            for s in self.sockets:
                s.close()
            self.sockets = []
            log.critical("cannot listen on {listen}: {reason}", listen=self.listen, reason=e.strerror or str(e))
            raise WorkerSetupError(f"cannot listen on {self.listen}: {e.strerror or e}") from None
        # prometheus-client's multiprocess mode: every worker writes its samples
        # to files here and /metrics in any worker reports the sum of all.
        if self.metricsDir is None:
            self.metricsDir = tempfile.mkdtemp(prefix="txgateway-metrics-")
        log.info("starting {n} workers on {listen}", n=self.count, listen=self.listen)
        for i in range(self.count):
            self.spawn(i)

    def spawn(self, index: int) -> None:
        childFDs: dict[int, Any] = {0: "w", 1: 1, 2: 2, 3: self.sockets[index].fileno()}
        args = [self.executable, "-n", "--pidfile=", *self.argv, "--worker-id", str(index), "--listen-fd", "3"]
        if self.adminSocket is not None:
            childFDs[4] = self.adminSocket.fileno()
            args += ["--admin-fd", "4"]
        relays = self.output.relays(index) if self.output is not None else {}
        for fd in relays:
            childFDs[fd] = "r"  # the worker writes, this process reads whole lines
        if ACCESS_FD in relays:
            args += ["--access-log-fd", str(ACCESS_FD)]
        env = dict(self.environ, PROMETHEUS_MULTIPROC_DIR=self.metricsDir or "", TXGATEWAY_WORKER=str(index),
                   TXGATEWAY_SUPERVISOR=str(os.getpid()))
        proto = _WorkerProtocol(self, index, relays)
        self.protocols[index] = proto
        self.processes[index] = self.reactor.spawnProcess(proto, args[0], args, env=env, childFDs=childFDs)
        self.backoff.started(index)

    def workerEnded(self, index: int, reason: Failure) -> None:
        process = self.processes.pop(index, None)
        if process is not None and self.metricsDir:
            try:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid, self.metricsDir)
            except Exception:
                log.failure("cleaning up metrics of worker {index}", index=index)
        if self.stopping:
            code = getattr(reason.value, "exitCode", None)
            if code == 3:  # txgateway.service.EXIT_DRAIN_CUT
                self.exitStatus = code
            return
        # Back off when a worker keeps dying, so a crash loop does not eat the machine.
        delay = self.backoff.delayAfterExit(index)
        log.warn("worker {index} exited ({reason}); restarting in {delay:.1f}s",
                 index=index, reason=reason.getErrorMessage(), delay=delay)
        self._pending[index] = self.clock.callLater(delay, self._respawn, index)

    def _respawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if not self.stopping and index not in self.processes:
            self.spawn(index)
            log.info("worker {index} restarted (pid {pid})", index=index, pid=self.processes[index].pid)
            if self.restarts is not None:
                self.restarts.labels(str(index)).inc()

    def signalAll(self, signame: str) -> None:
        for process in list(self.processes.values()):
            try:
                process.signalProcess(signame)
            except Exception:
                pass

    def reload(self) -> None:
        log.info("reloading all workers")
        self.signalAll("HUP")

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        waits = [p.ended for i, p in self.protocols.items() if i in self.processes]
        self.signalAll("TERM")
        for s in self.sockets:
            s.close()
        if self.adminSocket is not None:
            self.adminSocket.close()
        if not waits:
            self._removeMetricsDir()
            return succeed(None)
        done: Deferred[Any] = DeferredList(waits)
        kill = self.clock.callLater(self.drain + 10, self.signalAll, "KILL")

        def finished(result: Any) -> Any:
            if kill.active():
                kill.cancel()
            self._clearExitSignal()
            self._removeMetricsDir()
            return result

        return done.addBoth(finished)

    def _removeMetricsDir(self) -> None:
        # Every worker has ended: their samples (and the restart counter) go with them.
        if self.metricsDir:
            shutil.rmtree(self.metricsDir, ignore_errors=True)

    def _clearExitSignal(self) -> None:
        # As in GatewayService: a completed drain is a clean stop, exit 0.
        markCleanStop(self.reactor)


def followSupervisor(environ: Mapping[str, str] | None = None) -> None:
    """
    In a worker: be sent SIGTERM (a drain) when the supervisor dies.

    Without this a supervisor killed with SIGKILL leaves its workers serving
    forever with nobody to stop them.  Linux's PR_SET_PDEATHSIG does it; if
    the supervisor is already gone by the time we ask, drain now.
    """
    expected = (os.environ if environ is None else environ).get("TXGATEWAY_SUPERVISOR")
    if not expected or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal as _signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(_signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        log.warn("cannot ask to be told when the supervisor dies; a killed supervisor leaves this worker running")
        return
    if str(os.getppid()) != expected:
        os.kill(os.getpid(), _signal.SIGTERM)


def installSignals(supervisor: WorkerSupervisor, reactor: Any, signalModule: Any = None,
                   onHup: Callable[[], None] | None = None) -> None:
    import signal as _signal

    sig = signalModule or _signal

    def hup(signum: int, frame: Any) -> None:
        reactor.callFromThread(onHup or supervisor.reload)

    reactor.callWhenRunning(sig.signal, sig.SIGHUP, hup)
