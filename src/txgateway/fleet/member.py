# -*- test-case-name: tests.test_fleet_member,tests.e2e.test_fleet -*-
"""
A worker's end of the fleet: joins the hub, takes its generations, shares
its evidence, probes when it is the prober.

A worker started by a fleet supervisor loads the current generation's
config from the hub's snapshot (never the file, which may have been edited
since and not yet accepted), stops watching the file itself, and from
then on changes config only when the hub says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txgateway.config import ConfigError, GatewayConfig
from txgateway.config.environment import applyEnvironment
from txgateway.config.parser import parseConfig
from txgateway.fleet import sharing
from txgateway.fleet.hub import SNAPSHOT, SOCKET
from txgateway.fleet.leases import LeasedLimiter
from txgateway.fleet.replay import adminChange, replayAdmin
from txgateway.fleet.wire import Message, WireProtocol

__all__ = ["FleetMember", "memberFor"]

log = Logger(namespace="txgateway.fleet")

ENV = "TXGATEWAY_FLEET"  # as txgateway.fleet.supervise.ENV, without importing the supervisor's side


def memberFor(options: Any, reactor: Any, environ: Mapping[str, str] | None = None) -> FleetMember | None:
    """The worker's fleet membership, when a fleet supervisor started it; else None."""
    environ = os.environ if environ is None else environ
    directory = environ.get(ENV)
    if not directory or options.get("listen-fd") is None or options.get("worker-id") is None:
        return None
    return FleetMember(directory, int(options["worker-id"]), reactor, reactor, options.get("config"), environ)


class FleetMember:
    def __init__(self, directory: str, workerId: int, reactor: Any, clock: IReactorTime, configPath: str | None,
                 environ: Mapping[str, str]) -> None:
        self.directory = directory
        self.workerId = workerId
        self.reactor = reactor
        self.clock = clock
        self.configPath = os.path.abspath(configPath) if configPath else None
        self.environ = environ
        self.generation = 0
        self.rosterMessage: Message = {"workers": [], "prober": None, "generation": None}
        self.service: Any = None
        self.proto: WireProtocol | None = None
        self.shared: dict[str, Any] = {"fleet": self}
        self._outcomes: dict[tuple[str, str], list[int]] = {}
        self._flushing: Any = None
        self._waiting: dict[int, Deferred[Any]] = {}
        self._ids = 0
        self._client: ClientService | None = None

    # -- start-up

    def startConfig(self, fallback: Callable[[], GatewayConfig]) -> GatewayConfig:
        """The current generation's config, from the hub's snapshot (C{fallback} without one: no file)."""
        path = os.path.join(self.directory, SNAPSHOT)
        if self.configPath is None or not os.path.exists(path):
            return fallback()
        with open(path, encoding="utf-8") as f:
            snapshot = json.load(f)
        config = self.parse(snapshot["text"])
        self.generation = int(snapshot["generation"])
        return config

    def parse(self, text: str) -> GatewayConfig:
        assert self.configPath is not None
        p = Path(self.configPath)
        return applyEnvironment(parseConfig(text, str(p), p.resolve().parent, self.environ), self.environ)

    def attach(self, service: Any, connect: bool = True) -> None:
        """
        Take over what a lone gateway does for itself: file watching,
        probing, its breakers' counting.  C{connect=False} leaves joining
        the hub to the caller (tests join over an in-memory connection).
        """
        self.service = service
        service.fleet = self
        if service.watcher is not None:
            service.watcher.disownServiceParent()
            service.watcher = None
        service.removeService(service.healthServices)  # started by the hub's say-so (roster.prober)
        sharing.shareRuntime(service.gateway.runtime, self)
        if not connect:
            return
        endpoint = UNIXClientEndpoint(self.reactor, os.path.join(self.directory, SOCKET))
        factory = Factory.forProtocol(lambda: WireProtocol(self.received, self.lost))
        self._client = ClientService(endpoint, factory, clock=self.clock,
                                     prepareConnection=self.joined)
        self._client.setServiceParent(service)

    @property
    def isProber(self) -> bool:
        return self.rosterMessage.get("prober") == self.workerId

    def workers(self) -> list[dict[str, Any]]:
        """C{[{worker, pid, generation}]} of every worker the hub knows, for the admin API."""
        return list(self.rosterMessage.get("workers") or [])

    def limiter(self, route: str, config: Any, local: Any) -> LeasedLimiter:
        """A route's local limit, counted at the hub for every worker (see L{txgateway.fleet.leases})."""
        return LeasedLimiter(self, route, config, local, self.clock)

    # -- sending

    def joined(self, proto: Any) -> None:
        """Connected to the hub: say who this worker is and which generation it runs."""
        self.proto = proto
        proto.send({"t": "hello", "worker": self.workerId, "pid": os.getpid(), "generation": self.generation})

    def lost(self, proto: WireProtocol) -> None:
        """The hub is gone: what waits for an answer gets None (the callers fall back)."""
        if self.proto is proto:
            self.proto = None
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.callback(None)

    def send(self, message: Message) -> None:
        if self.proto is not None:
            self.proto.send(message)

    def shareAdmin(self, request: Any) -> None:
        """An admin runtime change applied here, for the other workers to replay (L{txgateway.fleet.replay})."""
        self.send(adminChange(request))

    def outcome(self, upstream: str, url: str, ok: bool) -> None:
        """One request's outcome on a target, sent to the others at the end of this reactor turn."""
        counts = self._outcomes.get((upstream, url))
        if counts is None:
            counts = self._outcomes[(upstream, url)] = [0, 0]
        counts[0 if ok else 1] += 1
        if self._flushing is None:
            self._flushing = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushing = None
        outcomes, self._outcomes = self._outcomes, {}
        for (upstream, url), (ok, failed) in outcomes.items():
            self.send({"t": "out", "u": upstream, "url": url, "ok": ok, "fail": failed})

    def ask(self, message: Message) -> Deferred[Any]:
        """Send a request carrying a fresh C{id}; fires with the reply, or None when the hub is gone."""
        if self.proto is None:
            return succeed(None)
        self._ids += 1
        message["id"] = self._ids
        d: Deferred[Any] = Deferred()
        self._waiting[self._ids] = d
        self.proto.send(message)
        return d

    def reload(self) -> Deferred[list[str]]:
        """Ask the supervisor to reload every worker (SIGHUP to a worker, the admin API)."""
        def answered(reply: Message | None) -> list[str]:
            if reply is None:
                return ["the supervisor cannot be reached; reload refused"]
            return list(reply.get("problems") or [])

        return self.ask({"t": "reload"}).addCallback(answered)

    # -- receiving

    def received(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        kind = message["t"]
        if kind in ("reloaded", "grant"):
            d = self._waiting.pop(message.get("id"), None)  # type: ignore[arg-type]
            if d is not None:
                d.callback(message)
            return
        runtime = self.service.gateway.runtime
        if kind == "out":
            sharing.applyOutcomes(runtime, message["u"], message["url"], int(message["ok"]), int(message["fail"]))
        elif kind == "brk":
            sharing.applyBreaker(runtime, message["u"], message["url"], message["state"])
        elif kind == "health":
            sharing.applyHealth(runtime, self.service.metrics, self.clock.seconds(), message["u"], message["url"],
                                bool(message["healthy"]), bool(message["ejected"]))
        elif kind == "config":
            self._switch(int(message["generation"]), message["text"])
        elif kind == "roster":
            self.rosterMessage = message
            self._probeIfProber()
        elif kind == "rejected":
            self._rejected(list(message.get("problems") or []))
        elif kind == "admin":
            replayAdmin(self.service, message)

    def _switch(self, generation: int, text: str) -> None:
        """Move to the hub's generation: the config the supervisor has already validated."""
        try:
            problems = self.service.reload(self.parse(text))
        except ConfigError as e:
            problems = [str(p) for p in e.problems]
        if not problems:
            self.generation = generation
            sharing.shareRuntime(self.service.gateway.runtime, self)
            self._hookCheckers()
        self.send({"t": "gen", "generation": self.generation, "tried": generation, "problems": problems})

    def _rejected(self, problems: list[str]) -> None:
        """A reload the supervisor refused: in this worker's history too, counted once for the gateway."""
        if self.isProber:
            self.service.metrics.configReloads.labels("failure").inc()
        history = self.service.gateway.history
        history.append({"time": self.clock.seconds(), "result": "failure", "problems": problems,
                        "dropped_runtime_changes": []})
        del history[:-20]

    # -- probing

    def _probeIfProber(self) -> None:
        checks = self.service.healthServices
        if self.isProber and not checks.running and not self.service.gateway.state.draining:
            log.info("fleet: this worker ({worker}) runs the active health checks", worker=self.workerId)
            self._hookCheckers()
            checks.startService()
        elif not self.isProber and checks.running:
            checks.stopService()

    def _hookCheckers(self) -> None:
        for checker in self.service.healthServices:
            if hasattr(checker, "onVerdict"):
                checker.onVerdict = self._verdict

    def _verdict(self, cluster: Any, endpoint: Any) -> None:
        self.send(sharing.verdictOf(cluster, endpoint, self.clock.seconds()))
