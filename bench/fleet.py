"""
The per-request CPU of what workers share (issue 26), without the noise of
a whole gateway:

  - a local rate limit counted once for all workers: the route's own token
    bucket against the fleet's leased limiter, which asks the hub's
    counters for 64 tokens at a time (the benchmark config's 1,000,000/s
    limit), each lease encoded and decoded both ways as on the Unix socket
    (the socket's own write and read, one each per lease, not included);
  - an outcome on an upstream with a breaker and passive health: counted
    alone, counted and sent (one message per reactor turn of 10 requests,
    encoded and written), and counted when another worker sent it (the
    message decoded).

python bench/fleet.py [--checks 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from txgateway.breaking import CircuitBreaker
from txgateway.config import parseConfig
from txgateway.fleet import sharing
from txgateway.fleet.bank import Bank
from txgateway.fleet.leases import LeasedLimiter
from txgateway.fleet.member import FleetMember
from txgateway.fleet.wire import WireProtocol, encode
from txgateway.health import PassiveHealthCheck
from txgateway.limiting.local import localLimiter

CONFIG = """
upstreams: {app: {targets: ["http://127.0.0.1:9101"]}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: app, rate_limit: {rate: 1000000/s, burst: 1000000}}
"""
URL = "http://127.0.0.1:9101"
PER_TURN = 10  # requests whose outcomes one reactor turn sends together


class _Member:
    """The worker's link to the hub, answered at once by a real L{Bank}, messages encoded as on the wire."""

    proto = True

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.bank = Bank()

    def ask(self, message: dict[str, Any]) -> Deferred[Any]:
        message = json.loads(encode(dict(message, id=1)))
        n, remaining, reset, retry = self.bank.grant(message["route"], message["key"], tuple(message["spec"]),
                                                     message["want"], self.clock.seconds())
        return succeed(json.loads(encode({"t": "grant", "id": 1, "n": n, "remaining": remaining, "reset": reset,
                                          "retry": retry})))

    def send(self, message: dict[str, Any]) -> None:
        pass


class _Endpoint:
    def __init__(self, breaker: Any) -> None:
        self.url = URL
        self.breaker = breaker
        self.ejectedUntil = 0.0


class _Cluster:
    def __init__(self, passive: PassiveHealthCheck, endpoint: _Endpoint) -> None:
        self.name = "app"
        self.passive = passive
        self.endpoints = [endpoint]
        self.onTargetsChanged: list[Any] = []

    def endpointByURL(self, url: str) -> _Endpoint | None:
        return self.endpoints[0] if url == URL else None


class _Runtime:
    def __init__(self, cluster: _Cluster) -> None:
        self.clusters = {"app": cluster}


def _upstream(clock: Any) -> tuple[_Endpoint, PassiveHealthCheck, _Runtime]:
    passiveConfig = parseConfig(CONFIG.replace("targets: [", "health: {passive: {}}, targets: [")
                                ).upstreams["app"].health.passive
    assert passiveConfig is not None
    endpoint = _Endpoint(CircuitBreaker(5, 30.0, 1, clock))
    passive = PassiveHealthCheck(None, clock, None, passiveConfig, False)  # type: ignore[arg-type]
    return endpoint, passive, _Runtime(_Cluster(passive, endpoint))


def outcomes(checks: int, rounds: int) -> tuple[float, float, float]:
    """µs per outcome: counted alone; counted and sent; counted from another worker's message."""
    clock = MemoryReactorClock()
    endpoint, passive, _ = _upstream(clock)

    def alone() -> None:
        endpoint.breaker.recordSuccess()
        passive.record(endpoint, True)  # type: ignore[arg-type]

    member = FleetMember("/nonexistent", 0, clock, clock, None, {})
    transport = StringTransport()
    member.proto = WireProtocol(member.received, member.lost)
    member.proto.makeConnection(transport)
    sent, sentPassive, runtime = _upstream(clock)
    sharing.shareRuntime(runtime, member)
    turn = [0]

    def shared() -> None:
        sent.breaker.recordSuccess()
        sentPassive.record(sent, True)  # type: ignore[arg-type]
        turn[0] += 1
        if turn[0] == PER_TURN:
            turn[0] = 0
            clock.advance(0)  # the end of the reactor turn: the outcomes go out
            transport.clear()

    _, _, other = _upstream(clock)
    sharing.shareRuntime(other, member)
    line = encode({"t": "out", "u": "app", "url": URL, "ok": PER_TURN, "fail": 0})

    def received() -> None:
        turn[0] += 1
        if turn[0] == PER_TURN:
            turn[0] = 0
            message = json.loads(line)
            sharing.applyOutcomes(other, message["u"], message["url"], message["ok"], message["fail"])

    return tuple(perCall(f, checks, rounds) for f in (alone, shared, received))  # type: ignore[return-value]


def perCall(f: Any, calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = parseConfig(CONFIG).routes[0].rate_limit
    assert config is not None
    clock = Clock()
    local = localLimiter(config, clock)
    leased = LeasedLimiter(_Member(clock), "r", config, localLimiter(config, clock), clock)  # type: ignore[arg-type]
    # Time stands still: at most rounds * checks tokens of the 1,000,000 burst are taken.
    key = "127.0.0.1"
    plain = perCall(lambda: local.check(key), args.checks, args.rounds)
    print(f"local token bucket: {plain:.2f} us per request")
    lent = perCall(lambda: leased.check(key), args.checks, args.rounds)
    print(f"leased from the hub ({leased.batch} a lease): {lent:.2f} us per request")
    alone, shared, received = outcomes(args.checks, args.rounds)
    print(f"outcome, breaker + passive health: {alone:.2f} us counted alone, {shared:.2f} us counted and sent, "
          f"{received:.2f} us in each other worker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
