"""
The per-request CPU of a local rate limit counted once for all workers
(issue 26), without the noise of a whole gateway: the route's own token
bucket against the fleet's leased limiter, which asks the hub's counters
for 64 tokens at a time (the benchmark config's 1,000,000/s limit).  Each
lease is encoded and decoded both ways as on the Unix socket; the socket's
own write and read are not included (one each per 64 requests).

python bench/leases.py [--checks 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from txgateway.config import parseConfig
from txgateway.fleet.bank import Bank
from txgateway.fleet.leases import LeasedLimiter
from txgateway.fleet.wire import encode
from txgateway.limiting.local import localLimiter

CONFIG = """
upstreams: {app: {targets: ["http://127.0.0.1:9101"]}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: app, rate_limit: {rate: 1000000/s, burst: 1000000}}
"""


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


def perCheck(limiter: Any, checks: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(checks):
            limiter.check("127.0.0.1")
        best = min(best, time.perf_counter() - start)
    return best / checks * 1e6


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
    print(f"local token bucket: {perCheck(local, args.checks, args.rounds):.2f} us per request")
    print(f"leased from the hub ({leased.batch} a lease): {perCheck(leased, args.checks, args.rounds):.2f} us per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
