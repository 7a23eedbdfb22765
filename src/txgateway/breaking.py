# -*- test-case-name: tests.test_breaking -*-
"""
Per-target circuit breakers.

A breaker sits on one L{txgateway.cluster.Endpoint} and is consulted only by
L{txgateway.cluster.Cluster.choose}; the proxy feeds it outcomes.  Its job
is to stop sending traffic to a target that keeps failing, so that clients
fail fast (or land on a healthy target) instead of waiting on a dead one,
and so that a struggling backend gets room to recover instead of a steady
stream of requests it cannot serve.

Time is read lazily from the injected clock: an open breaker becomes
half-open the first time anyone looks at it after C{open_for}, so a gateway
with thousands of targets runs no timer per breaker.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from txgateway.config import BreakerConfig
from txgateway.interfaces import IBreaker

__all__ = ["CLOSED", "CircuitBreaker", "HALF_OPEN", "OPEN", "makeBreaker"]

log = Logger(namespace="txgateway")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@implementer(IBreaker)
class CircuitBreaker:
    """
    The classic three-state breaker, held in the single attribute C{_state}.

    ==========  ===================  ==================================  ==============================
    state       allow()              success                             failure
    ==========  ===================  ==================================  ==============================
    closed      yes                  resets the failure streak           streak += 1; at C{failures}
                                                                         -> open
    open        no                   ignored (sent before it opened)     ignored (sent before it opened)
    half_open   while a probe slot   C{half_open_probes} probe           -> open again, for another
                is free (takes it)   successes -> closed                 C{open_for}
    ==========  ===================  ==================================  ==============================

    open -> half_open happens on the first read after C{open_for} seconds.
    Results that arrive in half_open while no probe is outstanding come from
    requests sent before the breaker opened and say nothing about recovery,
    so they are ignored too.
    """

    __slots__ = ("failures", "openFor", "halfOpenProbes", "clock", "onTransition",
                 "_state", "_streak", "_openedAt", "_probes", "_probeSuccesses")

    def __init__(self, failures: int, openFor: float, halfOpenProbes: int, clock: IReactorTime,
                 onTransition: Callable[[str, str], None] | None = None) -> None:
        if failures < 1 or halfOpenProbes < 1 or openFor < 0:
            raise ValueError("failures and half_open_probes must be at least 1, open_for not negative")
        self.failures = failures
        self.openFor = openFor
        self.halfOpenProbes = halfOpenProbes
        self.clock = clock
        self.onTransition = onTransition
        self._state = CLOSED
        self._streak = 0          # consecutive failures while closed
        self._openedAt = 0.0
        self._probes = 0          # probes admitted in half_open and not yet answered
        self._probeSuccesses = 0  # probes answered successfully in this half_open spell

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock.seconds() >= self._openedAt + self.openFor:
            self._moveTo(HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and self._probes < self.halfOpenProbes:
            self._probes += 1
            return True
        return False

    def recordSuccess(self) -> None:
        state = self.state
        if state == CLOSED:
            self._streak = 0
        elif state == HALF_OPEN and self._probes > 0:
            self._probes -= 1
            self._probeSuccesses += 1
            if self._probeSuccesses >= self.halfOpenProbes:
                self._moveTo(CLOSED)

    def recordFailure(self) -> None:
        state = self.state
        if state == CLOSED:
            self._streak += 1
            if self._streak >= self.failures:
                self._moveTo(OPEN)
        elif state == HALF_OPEN and self._probes > 0:
            self._moveTo(OPEN)

    def release(self) -> None:
        if self.state == HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def retryAfter(self) -> float:
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._openedAt + self.openFor - self.clock.seconds())

    def adopt(self, state: str) -> None:
        """
        Take the state another worker's breaker for the same target reached
        (txgateway.fleet.sharing): it opened there, or its half-open probe
        closed it.  An open adopted here runs its C{open_for} from now.
        """
        if self._state != state:
            self._moveTo(state)

    def _moveTo(self, new: str) -> None:
        old = self._state
        self._state = new
        self._streak = 0
        self._probes = 0
        self._probeSuccesses = 0
        if new == OPEN:
            self._openedAt = self.clock.seconds()
        if self.onTransition is not None:
            try:
                self.onTransition(old, new)
            except Exception:
                # An observer's bug must not fail the request that tripped the breaker.
                log.failure("circuit breaker transition observer failed ({old} -> {new})", old=old, new=new)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._state} streak={self._streak} probes={self._probes}>"


def makeBreaker(config: BreakerConfig | None, clock: IReactorTime,
                onTransition: Callable[[str, str], None] | None = None) -> IBreaker | None:
    """A breaker for one target, or None when the upstream has none configured."""
    if config is None:
        return None
    return CircuitBreaker(config.failures, config.open_for, config.half_open_probes, clock, onTransition)
