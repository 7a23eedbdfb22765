# -*- test-case-name: tests.test_workers_supervisor -*-
"""
The supervisor process, put together: what C{twistd -n txgateway} becomes with C{server.workers: N}.

The supervisor serves no request: it binds the sockets, starts and
restarts the workers, relays their log lines and forwards signals.  So it
imports none of the gateway's request path (service, gateway, building,
caching, the HTTP client and server, TLS): it is a fraction of a worker's
size (docs/operations.md, Sizing).  tests/test_workers_supervisor.py holds
it to that.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from twisted.application.service import IService

from txgateway.config import GatewayConfig
from txgateway.logrelay import AppendFile, WorkerOutput, droppedCounter
from txgateway.restarting import restartsCounter
from txgateway.workers import WorkerSupervisor

__all__ = ["makeSupervisor"]


def makeSupervisor(config: GatewayConfig, options: Any, reactor: Any, count: int) -> IService:
    """The supervisor of C{count} workers, its log set up as twistd's plugin does for a gateway."""
    # prometheus-client decides at its import whether samples go to files:
    # the directory is named before anything imports it, so the supervisor's
    # own counter (txgateway_worker_restarts_total) lands beside the
    # workers' samples and their /metrics reports it.
    metricsDir = tempfile.mkdtemp(prefix="txgateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metricsDir
    from txgateway.http.twistdlog import TwistdLogAdopter, onReopenSignal
    from txgateway.listening import listenBacklog, withBacklog
    from txgateway.observe.logging import formatterFor, logConfigLoaded
    from txgateway.workshop import labelledFormatter

    lc = config.logging

    def formatter(worker: int | None) -> Any:
        return labelledFormatter(formatterFor(lc.level, lc.format, worker), config.server.environment)

    adopter = TwistdLogAdopter(formatter(None))
    adopter.attachUntilRunning(reactor)
    logConfigLoaded(config)
    try:
        access = AppendFile(lc.access_log_file) if lc.access_log and lc.access_log_file else None
    except OSError as e:  # as a single gateway says it (txgateway.tap)
        sys.stderr.write(f"txgateway: cannot start: {e}\n")
        raise SystemExit(1) from None
    output = WorkerOutput(adopter.write, formatter, lc.format, access.write if access is not None else None,
                          dropped=droppedCounter())
    # Workers log to stdout, a pipe this process reads: it alone writes the file.
    argv = ["--logfile=-", "txgateway"]
    if options["config"]:
        argv += ["--config", os.path.abspath(options["config"])]
    backlog = listenBacklog(config.server.backlog)
    supervisor = WorkerSupervisor(reactor, reactor, count, withBacklog(config.server.listen, backlog), argv,
                                  admin=withBacklog(config.admin.listen, backlog) if config.admin is not None else None,
                                  drain=config.server.timeouts.drain, output=output, metricsDir=metricsDir,
                                  restarts=restartsCounter())
    from txgateway.fleet.supervise import withFleet

    fleet = withFleet(supervisor, options["config"], config, reactor)  # installs the signals, SIGHUP through the hub

    def reopen() -> None:
        adopter.reopen()
        if access is not None:
            access.reopen()

    onReopenSignal(reactor, reopen)
    return fleet
