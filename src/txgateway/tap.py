# -*- test-case-name: tests.test_lifecycle -*-
"""
The twistd plugin's options and service: a thin adapter over L{txgateway.service}.

This is the only module that touches the global reactor; everything below
it takes the reactor and clock as arguments.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from txgateway.config import ConfigError, GatewayConfig, configFromEnvironment, loadConfig

__all__ = ["Options", "loadFromOptions", "makeService"]


class Options(usage.Options):
    synopsis = "[--config gw.yaml] [--workers N|auto]"
    longdesc = ("Run the txgateway API gateway.  Without --config, BACKEND_URL, GATEWAY_PORT, "
                "LOG_LEVEL and REQUEST_TIMEOUT give a one-upstream gateway.")
    optParameters = [
        ["config", "c", None, "Path to the gateway's YAML config."],
        ["workers", "w", None, "Worker processes: a number, or 'auto' for one per core (overrides server.workers)."],
        # Set by the worker supervisor for the processes it starts; not for people.
        ["worker-id", None, None, "(internal) this worker's index"],
        ["listen-fd", None, None, "(internal) adopt this inherited listening socket"],
        ["admin-fd", None, None, "(internal) adopt this inherited admin socket"],
        ["access-log-fd", None, None, "(internal) write access-log lines to this pipe"],
    ]


def loadFromOptions(options: Any, environ: Any = None) -> GatewayConfig:
    environ = os.environ if environ is None else environ
    if options["config"]:
        return loadConfig(options["config"], environ)
    return configFromEnvironment(environ)


def makeService(options: Any) -> IService:
    from twisted.internet import reactor

    member = None
    if options["listen-fd"] is not None:  # a worker: of a fleet (server.workers > 1), see txgateway.fleet
        from txgateway.fleet.member import memberFor

        member = memberFor(options, reactor)
    try:
        config = member.startConfig(lambda: loadFromOptions(options)) if member else loadFromOptions(options)
    except ConfigError as e:
        # One line per problem, each saying what it is: no header line to lose under a log shipper.
        sys.stderr.write("".join(f"txgateway: config rejected: {line}\n" for line in e.render().splitlines()))
        raise SystemExit(1) from None
    _installStartupErrorHook(options)
    if options["listen-fd"] is None:
        # Decided before the gateway's modules are imported: the supervisor
        # never loads them (see txgateway.supervising).
        count = _workerCount(config, options)
        if count is not None:
            from txgateway.supervising import makeSupervisor

            supervisor = makeSupervisor(config, options, reactor, count)
            atexit.register(_exitWithStatusOf, supervisor)
            reactor.callWhenRunning(_freezeStartupObjects)
            return supervisor
    from txgateway.http.twistdlog import onReopenSignal
    from txgateway.observe import TwistdLogAdopter, formatterFor, logConfigLoaded
    from txgateway.service import GatewayService
    from txgateway.workshop import labelledFormatter

    formatter = labelledFormatter(formatterFor(config.logging.level, config.logging.format,
                                               _int(options["worker-id"])), config.server.environment)
    adopter = TwistdLogAdopter(formatter)
    adopter.attachUntilRunning(reactor)
    logConfigLoaded(config)
    if options["listen-fd"] is not None:
        from txgateway.workers import followSupervisor

        reactor.callWhenRunning(followSupervisor)
    try:
        service = GatewayService(config, reactor, configPath=options["config"],
                                 listenFd=_int(options["listen-fd"]), adminFd=_int(options["admin-fd"]),
                                 workerId=_int(options["worker-id"]), accessLogFd=_int(options["access-log-fd"]),
                                 shared=member.shared if member else None)
        if member is not None:
            member.attach(service)
    except OSError as e:  # e.g. logging.access_log_file in a directory that does not exist
        sys.stderr.write(f"txgateway: cannot start: {e}\n")
        raise SystemExit(1) from None
    atexit.register(_exitWithStatusOf, service)
    _installSignals(member or service, reactor)  # a worker's SIGHUP reloads the whole fleet

    def reopen() -> None:
        adopter.reopen()
        service.accessLog.reopen()

    onReopenSignal(reactor, reopen)
    reactor.callWhenRunning(_freezeStartupObjects)
    return service


def _installStartupErrorHook(options: Any) -> None:
    """
    Show a start-up failure as one line, not a traceback.

    A L{txgateway.listening.StartupError} (or a worker set-up error: each
    says C{oneLine = True}, so neither module is imported here) raised
    from C{startService} escapes twistd, which exits 1; the service has
    already logged it as one line.  The foreground with the log in a file
    (C{--logfile=gw.log}) also prints that line on stderr, where the person
    who ran the command looks.  A daemonising twistd reports it itself
    ("An error has occurred: ...") and exits 1.  Any other exception keeps
    its traceback: that is a bug to report.
    """
    parent = getattr(options, "parent", None)
    logfile = parent.get("logfile") if parent is not None else None
    toFile = bool(logfile) and logfile != "-"
    previous = sys.excepthook

    def hook(kind: Any, value: BaseException, tb: Any) -> None:
        if getattr(value, "oneLine", False):
            # twistd sends sys.stderr to the log by now; the terminal is the original.
            out = sys.__stderr__
            if toFile and out is not None:
                out.write(f"txgateway: {value}\n")
            return
        previous(kind, value, tb)

    sys.excepthook = hook


def _exitWithStatusOf(service: Any) -> None:
    """
    At interpreter exit: leave with the service's C{exitStatus} when it is
    not 0 (3: the drain cut requests; see docs/operations.md).

    twistd's C{run()} has no exit status of its own to give (the C{twistd}
    script calls C{sys.exit(run())} with None), so the status is applied
    here, after twistd has stopped the reactor, removed its pid file and
    closed its log.  C{os._exit} skips the exit handlers registered before
    this one, so what they would flush is flushed first.
    """
    status = getattr(service, "exitStatus", 0)
    if not status:
        return
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _freezeStartupObjects() -> None:
    """
    Leave what start-up built out of the garbage collector's full passes.

    Twisted, the plugins, the config and the metrics registry are some
    60,000 objects that live as long as the process; every full collection
    walked them all (12 ms on the development machine), stalling every
    request in flight at that moment, which is what set the gateway's p99.
    Objects made later (requests, a reloaded config) are collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()
    _returnFreedHeap()


def _returnFreedHeap() -> None:
    """
    Hand the heap start-up freed back to the kernel (glibc only).

    Loading the config, compiling modules that have no bytecode cache and
    building the runtime leave freed chunks all over glibc's heap, which it
    keeps; C{malloc_trim} releases them, about 1.5 MB of idle RSS when the
    modules were compiled at start-up.  Elsewhere (musl, macOS) it does not
    exist and nothing happens.
    """
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _workerCount(config: GatewayConfig, options: Any) -> int | None:
    """With more than one worker, how many: this process supervises them instead of serving."""
    if options["workers"] is None and config.server.workers == 1:
        return None  # the usual case; the supervisor's modules stay unloaded
    from txgateway.workers import WorkerSetupError, parseListen, workerCount

    try:
        count = workerCount(config.server.workers, options["workers"])
        if count <= 1:
            return None
        parseListen(config.server.listen)
        if config.admin is not None:
            parseListen(config.admin.listen)
    except (WorkerSetupError, ValueError) as e:
        sys.stderr.write(f"txgateway: {e}\n")
        raise SystemExit(1) from None
    return count


def _installSignals(service: Any, reactor: Any) -> None:
    import signal

    def onHup(signum: int, frame: Any) -> None:
        reactor.callFromThread(service.reload)

    def install() -> None:
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, onHup)

    reactor.callWhenRunning(install)
