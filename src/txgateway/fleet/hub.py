# -*- test-case-name: tests.test_fleet_hub -*-
"""
The hub: the supervisor's end of the fleet socket.

It holds what must be one for the whole gateway, and relays the rest:

  - the config generation: the supervisor reads and validates the file once
    (L{reload}); a good config gets the next generation and goes to every
    worker (C{config}), a bad one is rejected here once (C{rejected}) and
    no worker changes;
  - the roster (C{roster}): each worker's pid and generation, and which
    worker is the prober (the lowest connected id; when it dies the next
    one takes over);
  - the last active-health verdict and breaker state of each target
    (C{health}, C{brk}), relayed to the other workers and replayed to a
    worker that (re)joins;
  - outcomes and admin runtime changes (C{out}, C{admin}), relayed as they
    came, byte for byte;
  - local rate-limit counters (C{lease} / C{give}, see L{txgateway.fleet.bank}).

Messages from a worker: C{hello {worker, pid, generation}}, C{gen
{generation, tried, problems}}, C{health}, C{brk}, C{out}, C{admin}, C{reload
{id}}, C{lease {id, route, key, spec, want}}, C{give {route, key, spec, n}}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from txgateway.fleet.bank import Bank
from txgateway.fleet.wire import Message, WireProtocol, encode

__all__ = ["FleetHub", "SNAPSHOT", "SOCKET"]

log = Logger(namespace="txgateway.fleet")

SOCKET = "hub.sock"
# The current generation's config, for a worker starting (or restarting)
# to load instead of the file, which may have been edited since.
SNAPSHOT = "config.json"

Loader = Callable[[], tuple[str | None, list[str]]]

# How long a reload asked by a worker (the admin API) waits for every worker
# to report the new generation before it is answered anyway, saying so.
SWITCH_WITHIN = 10.0


class _Member:
    __slots__ = ("proto", "worker", "pid", "generation")

    def __init__(self, proto: WireProtocol, worker: int, pid: int, generation: int) -> None:
        self.proto = proto
        self.worker = worker
        self.pid = pid
        self.generation = generation


class _Answer:
    """A worker's reload request, answered once every worker runs C{generation} (or said why not)."""

    __slots__ = ("proto", "id", "generation", "problems", "failed", "timer")

    def __init__(self, proto: WireProtocol, id: Any, generation: int) -> None:
        self.proto = proto
        self.id = id
        self.generation = generation
        self.problems: list[str] = []
        self.failed: set[int] = set()
        self.timer: Any = None


class FleetHub(Service):
    """
    @param load: reads and validates the config file: (its text, []) or
        (None, problems).
    @param text: the config text the supervisor started with (generation 1),
        or None for a gateway configured from the environment.
    """

    name = "fleet-hub"

    def __init__(self, directory: str, reactor: Any, clock: IReactorTime, load: Loader, text: str | None) -> None:
        self.directory = directory
        self.reactor = reactor
        self.clock = clock
        self.load = load
        self.text = text
        self.generation = 1
        self.members: dict[int, _Member] = {}
        self.prober: int | None = None
        self.verdicts: dict[tuple[str, str], bytes] = {}
        self.breakers: dict[tuple[str, str], bytes] = {}
        self.bank = Bank()
        self.answers: list[_Answer] = []
        self.port: Any = None
        self._writeSnapshot()

    @property
    def socketPath(self) -> str:
        return os.path.join(self.directory, SOCKET)

    def startService(self) -> None:
        super().startService()
        factory = Factory.forProtocol(lambda: WireProtocol(self.received, self.lost))
        d = UNIXServerEndpoint(self.reactor, self.socketPath, mode=0o600).listen(factory)
        d.addCallback(lambda port: setattr(self, "port", port))
        d.addErrback(lambda f: log.failure("fleet: the hub cannot listen on {path}", f, path=self.socketPath))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        for answer in list(self.answers):
            self._answer(answer, "the supervisor is stopping")
        port, self.port = self.port, None
        for name in (SOCKET, SNAPSHOT):
            try:
                os.unlink(os.path.join(self.directory, name))
            except OSError:
                pass
        try:
            os.rmdir(self.directory)
        except OSError:
            pass
        return port.stopListening() if port is not None else None  # type: ignore[no-any-return]

    # -- generations

    def _writeSnapshot(self, generation: int | None = None, text: str | None = None) -> None:
        generation = self.generation if generation is None else generation
        text = self.text if text is None else text
        if text is None:
            return
        path = os.path.join(self.directory, SNAPSHOT)
        with open(path + ".new", "w", encoding="utf-8") as f:
            json.dump({"generation": generation, "text": text}, f)
        os.replace(path + ".new", path)  # a starting worker never reads half of it

    def reload(self) -> list[str]:
        """Read and validate the config once; on success every worker moves to the next generation."""
        text, problems = self.load()
        if text is None:
            log.error("config reload rejected, every worker keeps generation {g}:\n{problems}",
                      g=self.generation, problems="\n".join(problems))
            self.broadcast({"t": "rejected", "problems": problems, "time": self.clock.seconds()})
            return problems
        try:
            # First: a worker (re)starting from now on must start on what the others switch to.
            self._writeSnapshot(self.generation + 1, text)
        except OSError as e:
            problems = [f"cannot write the fleet's config snapshot: {e}"]
            log.error("config reload refused, every worker keeps generation {g}: {problem}", g=self.generation,
                      problem=problems[0])
            return problems
        self.generation += 1
        self.text = text
        log.info("config accepted as generation {g}; switching {n} worker(s)", g=self.generation,
                 n=len(self.members))
        self.broadcast({"t": "config", "generation": self.generation, "text": text})
        return []

    # -- connections

    def received(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        kind = message["t"]
        handler = getattr(self, "_on_" + kind, None)
        if handler is None:
            log.warn("fleet: unknown message kind {kind!r}", kind=kind)
            return
        handler(proto, message, line)

    def lost(self, proto: WireProtocol) -> None:
        for worker, member in list(self.members.items()):
            if member.proto is proto:
                del self.members[worker]
                log.info("fleet: worker {worker} (pid {pid}) left", worker=worker, pid=member.pid)
                self._rosterChanged()

    def _sender(self, proto: WireProtocol) -> _Member | None:
        return next((m for m in self.members.values() if m.proto is proto), None)

    def broadcast(self, message: Message, exclude: WireProtocol | None = None) -> None:
        self.relay(encode(message), exclude)

    def relay(self, line: bytes, exclude: WireProtocol | None = None) -> None:
        data = line if line.endswith(b"\n") else line + b"\n"
        for member in self.members.values():
            if member.proto is not exclude:
                member.proto.sendRaw(data)

    def roster(self) -> Message:
        return {"t": "roster", "generation": self.generation, "prober": self.prober,
                "workers": [{"worker": m.worker, "pid": m.pid, "generation": m.generation}
                            for m in sorted(self.members.values(), key=lambda m: m.worker)]}

    def _rosterChanged(self) -> None:
        prober = min(self.members) if self.members else None
        if prober != self.prober and prober is not None:
            log.info("fleet: worker {worker} runs the active health checks", worker=prober)
        self.prober = prober
        self.broadcast(self.roster())
        for answer in list(self.answers):
            if all(m.generation >= answer.generation or m.worker in answer.failed for m in self.members.values()):
                self._answer(answer)

    def _answer(self, answer: _Answer, unfinished: str | None = None) -> None:
        if answer not in self.answers:
            return
        self.answers.remove(answer)
        if answer.timer is not None and answer.timer.active():
            answer.timer.cancel()
        problems = answer.problems + ([unfinished] if unfinished else [])
        answer.proto.send({"t": "reloaded", "id": answer.id, "problems": problems, "generation": answer.generation})

    # -- handlers, one per kind

    def _on_hello(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        worker = int(message["worker"])
        member = _Member(proto, worker, int(message["pid"]), int(message.get("generation") or 0))
        self.members[worker] = member
        if self.text is not None and member.generation != self.generation:
            proto.send({"t": "config", "generation": self.generation, "text": self.text})
        for verdict in (*self.verdicts.values(), *self.breakers.values()):
            proto.sendRaw(verdict + b"\n")
        self._rosterChanged()

    def _on_gen(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        member = self._sender(proto)
        if member is None:
            return
        member.generation = int(message["generation"])
        problems = list(message.get("problems") or [])
        if problems:
            tried = message.get("tried")
            log.error("worker {worker} could not switch to generation {g}: {problems}", worker=member.worker,
                      g=tried, problems="; ".join(problems))
            for answer in self.answers:
                if answer.generation == tried:
                    answer.failed.add(member.worker)
                    answer.problems += [f"worker {member.worker}: {p}" for p in problems]
        self._rosterChanged()

    def _on_health(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        self.verdicts[(message["u"], message["url"])] = line.rstrip(b"\n")
        self.relay(line, proto)

    def _on_brk(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        self.breakers[(message["u"], message["url"])] = line.rstrip(b"\n")
        self.relay(line, proto)

    def _on_out(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        self.relay(line, proto)

    def _on_admin(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        self.relay(line, proto)

    def _on_reload(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        """Reload, and answer once every worker has switched: the admin API's 200 means all of them run it."""
        answer = _Answer(proto, message.get("id"), self.generation)
        answer.problems = self.reload()
        self.answers.append(answer)
        if answer.problems:
            self._answer(answer)
            return
        answer.generation = self.generation
        answer.timer = self.clock.callLater(SWITCH_WITHIN, self._answer, answer,
                                            f"not every worker reported generation {self.generation} within "
                                            f"{SWITCH_WITHIN:g}s; see /api/reloads")

    def _on_lease(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        spec = (str(message["spec"][0]), float(message["spec"][1]), float(message["spec"][2]))
        n, remaining, reset, retry = self.bank.grant(message["route"], message["key"], spec, int(message["want"]),
                                                     self.clock.seconds())
        proto.send({"t": "grant", "id": message["id"], "n": n, "remaining": remaining, "reset": reset,
                    "retry": retry})

    def _on_give(self, proto: WireProtocol, message: Message, line: bytes) -> None:
        spec = (str(message["spec"][0]), float(message["spec"][1]), float(message["spec"][2]))
        self.bank.giveBack(message["route"], message["key"], spec, int(message["n"]), self.clock.seconds())
