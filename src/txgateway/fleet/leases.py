# -*- test-case-name: tests.test_fleet_member -*-
"""
Local rate limits counted once for all workers: tokens leased from the hub.

The hub holds each (route, key)'s counter (L{txgateway.fleet.bank}).  A
worker asks it for a small batch of tokens (a lease: about
L{LEASE_SECONDS} of the limit's rate, at least one, at most L{MAX_BATCH})
and admits requests from the batch with no message at all; when a quarter
of the batch is left it asks for the next one, so a busy key rarely waits
for the hub.  Tokens left unused for L{HOLD} seconds go back
to the hub, so a worker that stops seeing a key does not sit on its share.

The hub counts every token it hands out, so the workers together never
admit more than the limit allows; what leasing costs is that a token
held by one worker is not available to another for up to L{HOLD}.  A
refusal is remembered until the time the hub said the next token comes,
so a flood over the limit costs the hub nothing either.  When the hub
cannot be reached, the route's own local limiter answers, as a shared
limit falls back when Redis is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from txgateway.interfaces import IRateLimiter
from txgateway.limiting.local import Decision

if TYPE_CHECKING:
    from txgateway.config import RateLimitConfig
    from txgateway.fleet.member import FleetMember

__all__ = ["HOLD", "LEASE_SECONDS", "LeasedLimiter", "MAX_BATCH"]

LEASE_SECONDS = 0.05
MAX_BATCH = 64
HOLD = 0.2


class _Held:
    __slots__ = ("tokens", "usedAt", "refusedUntil", "remaining", "reset", "waiters")

    def __init__(self) -> None:
        self.tokens = 0
        self.usedAt = 0.0
        self.refusedUntil = 0.0
        self.remaining = 0
        self.reset = 0.0
        self.waiters: list[Deferred[Any]] | None = None  # set while a lease request is out


@implementer(IRateLimiter)
class LeasedLimiter:
    def __init__(self, member: FleetMember, route: str, config: RateLimitConfig, local: IRateLimiter,
                 clock: IReactorTime) -> None:
        self.member = member
        self.route = route
        self.local = local
        self.clock = clock
        if config.algorithm == "sliding_window":
            self.spec = ["sliding_window", float(config.rate.count), float(config.rate.per)]
            self.limit = config.rate.count
        else:
            self.spec = ["token_bucket", float(config.rate.perSecond), float(config.burst)]
            self.limit = config.burst
        self.batch = max(1, min(MAX_BATCH, int(config.rate.perSecond * LEASE_SECONDS)))
        # Ask for the next lease when this few tokens are left (none for leases of under 4 tokens).
        self.low = self.batch // 4 if self.batch >= 4 else -1
        self.held: dict[str, _Held] = {}
        self._sweep: LoopingCall | None = None

    def check(self, key: str) -> Decision | Deferred[Decision]:
        h = self.held.get(key)
        now = self.clock.seconds()
        if h is not None:
            if h.tokens > 0:
                h.tokens -= 1
                h.usedAt = now
                if h.tokens == self.low and h.waiters is None and self.member.proto is not None:
                    self._lease(key, h)  # the next lease is on its way before this one is spent
                return Decision(True, self.limit, h.remaining + h.tokens, h.reset, 0.0)
            if now < h.refusedUntil:
                return Decision(False, self.limit, 0, max(h.reset, h.refusedUntil - now), h.refusedUntil - now)
        if self.member.proto is None:
            return self.local.check(key)  # no hub: this worker's own limit, as without workers
        if h is None:
            h = self.held[key] = _Held()
            self._startSweeping()
        if h.waiters is None:
            self._lease(key, h)
            if h.waiters is None:  # answered at once (a hub in this process: tests, bench/leases.py)
                return self.check(key)
        d: Deferred[Any] = Deferred()
        h.waiters.append(d)
        return d.addCallback(lambda _: self.check(key))

    def _lease(self, key: str, h: _Held) -> None:
        h.waiters = []
        self.member.ask({"t": "lease", "route": self.route, "key": key, "spec": self.spec,
                         "want": self.batch}).addCallback(self._granted, key, h)

    def _granted(self, reply: dict[str, Any] | None, key: str, h: _Held) -> None:
        waiters, h.waiters = h.waiters or [], None
        now = self.clock.seconds()
        if reply is not None:
            h.tokens += int(reply["n"])
            h.remaining = int(reply["remaining"])
            h.reset = float(reply["reset"])
            h.usedAt = now
            if not reply["n"]:
                h.refusedUntil = now + float(reply["retry"])
        for d in waiters:
            d.callback(None)

    # -- giving back

    def _startSweeping(self) -> None:
        if self._sweep is None:
            self._sweep = LoopingCall(self.sweep)
            self._sweep.clock = self.clock
            self._sweep.start(HOLD / 2, now=False)

    def sweep(self) -> None:
        """Give back tokens unused for L{HOLD}; forget keys with nothing held or pending."""
        now = self.clock.seconds()
        for key, h in list(self.held.items()):
            if h.waiters is not None or now - h.usedAt < HOLD or now < h.refusedUntil:
                continue
            if h.tokens:
                self.member.send({"t": "give", "route": self.route, "key": key, "spec": self.spec, "n": h.tokens})
            del self.held[key]
        if not self.held and self._sweep is not None:
            if self._sweep.running:
                self._sweep.stop()
            self._sweep = None
