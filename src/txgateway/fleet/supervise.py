# -*- test-case-name: tests.test_fleet_hub,tests.e2e.test_fleet -*-
"""
The supervisor side of a fleet: the hub, the one config watcher, and the
worker supervisor, started and stopped in that order (stopped in reverse:
workers drain while the hub still answers them).

Imports only the hub, the config parser and the file watcher: the
supervisor serves no request and loads nothing of the request path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService

from txgateway.config import ConfigError, GatewayConfig
from txgateway.config.environment import applyEnvironment
from txgateway.config.parser import parseConfig
from txgateway.fleet.hub import FleetHub
from txgateway.reloading import ConfigWatcher
from txgateway.workers import WorkerSupervisor, installSignals

__all__ = ["ENV", "FleetSupervisor", "readConfig", "withFleet"]

# The worker's environment variable naming the fleet's directory (socket and snapshot).
ENV = "TXGATEWAY_FLEET"


def readConfig(path: str, environ: Mapping[str, str],
               accepted: Callable[[GatewayConfig], None] | None = None) -> tuple[str | None, list[str]]:
    """
    The config file's text when it is valid, else (None, its problems):
    read and validated once, here.  C{accepted} is given the parsed config
    of a valid file (the supervisor's own settings follow it).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return None, [f"cannot read config file: {e}"]
    try:
        config = applyEnvironment(parseConfig(text, str(p), p.resolve().parent, environ), environ)
    except ConfigError as e:
        return None, [str(problem) for problem in e.problems]
    if accepted is not None:
        accepted(config)
    return text, []


class FleetSupervisor(MultiService):
    """The supervisor process's service: hub, watcher, workers."""

    def __init__(self, supervisor: WorkerSupervisor, hub: FleetHub) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.hub = hub
        hub.setServiceParent(self)

    @property
    def exitStatus(self) -> int:
        """What the process exits with (see L{txgateway.tap}): the workers' drain verdict."""
        return self.supervisor.exitStatus


def withFleet(supervisor: WorkerSupervisor, configPath: str | None, config: GatewayConfig, reactor: Any,
              environ: Mapping[str, str] | None = None) -> FleetSupervisor:
    """
    Put C{supervisor} in a fleet: a hub its workers join (the directory is
    passed in L{ENV}), SIGHUP and the file watcher reloading through the
    hub, the workers' own watching turned off (by L{txgateway.fleet.member}).
    """
    environ = os.environ if environ is None else environ
    directory = tempfile.mkdtemp(prefix="txgateway-fleet-")
    path = os.path.abspath(configPath) if configPath else None

    watcher: list[ConfigWatcher] = []

    def accepted(new: GatewayConfig) -> None:
        for w in watcher:
            w.setInterval(new.server.watch_config)  # as a lone gateway adopts a new server.watch_config

    def load() -> tuple[str | None, list[str]]:
        if path is None:
            return None, ["no config file to reload (the gateway was configured from the environment)"]
        for w in watcher:
            w.sync()  # this content is being loaded now: not a change for the watcher to reload again
        return readConfig(path, environ, accepted)

    text = load()[0] if path is not None else None
    hub = FleetHub(directory, reactor, reactor, load, text)
    fleet = FleetSupervisor(supervisor, hub)
    if path is not None:
        watcher.append(ConfigWatcher(path, hub.reload, reactor, config.server.watch_config))
        watcher[0].setServiceParent(fleet)
    supervisor.environ[ENV] = directory
    supervisor.setServiceParent(fleet)

    def hup() -> None:
        hub.reload()

    installSignals(supervisor, reactor, onHup=hup)
    return fleet
