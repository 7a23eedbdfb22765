"""
The twistd plugin's options and service: a thin adapter over L{txgateway.service}.

This is the only module that touches the global reactor; everything below
it takes the reactor and clock as arguments.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .config import ConfigError, GatewayConfig, configFromEnvironment, loadConfig


class Options(usage.Options):
    synopsis = "[--config gw.yaml] [--workers N|auto]"
    longdesc = ("Run the txgateway API gateway.  Without --config, BACKEND_URL, GATEWAY_PORT, "
                "LOG_LEVEL and REQUEST_TIMEOUT give a one-upstream gateway.")
    optParameters = [
        ["config", "c", None, "Path to the gateway's YAML config."],
        ["workers", "w", None, "Worker processes: a number, or 'auto' for one per core (overrides server.workers)."],
    ]


def loadFromOptions(options: Any, environ: Any = None) -> GatewayConfig:
    environ = os.environ if environ is None else environ
    if options["config"]:
        return loadConfig(options["config"], environ)
    return configFromEnvironment(environ)


def makeService(options: Any) -> IService:
    from twisted.internet import reactor

    from .observe import TwistdLogAdopter, formatterFor
    from .service import GatewayService

    try:
        config = loadFromOptions(options)
    except ConfigError as e:
        sys.stderr.write(f"txgateway: the config was rejected:\n{e.render()}\n")
        raise SystemExit(1) from None
    service = GatewayService(config, reactor, configPath=options["config"])
    _installLogging(TwistdLogAdopter(formatterFor(config.logging.level, config.logging.format)), reactor)
    _installSignals(service, reactor)
    return service


def _installLogging(adopter: Any, reactor: Any) -> None:
    # twistd begins logging after makeService returns: the adopter takes
    # over its file observer at the first event, and leaves once running.
    adopter.attach()
    reactor.callWhenRunning(adopter.detach)


def _installSignals(service: Any, reactor: Any) -> None:
    import signal

    def onHup(signum: int, frame: Any) -> None:
        reactor.callFromThread(service.reload)

    def install() -> None:
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, onHup)

    reactor.callWhenRunning(install)
