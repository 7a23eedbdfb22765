# -*- test-case-name: tests.test_retrying -*-
"""
Retry policy: whether a failed attempt is tried again (on another target).

A retry is only ever a bet that another target (or the same one a moment
later) will do better, and every retry is extra load on an upstream that is
already in trouble.  So the policy says yes only when all of these hold:

  - the failure is one of C{retries.on} (connect_failure, timeout, reset, a
    status, or 5xx for any 5xx);
  - the method is one of C{retries.methods}, unless nothing was sent (a
    connect failure): then even a POST is safe, the backend never saw it;
  - fewer than C{retries.attempts} retries were made for this request;
  - the jittered backoff still fits in the request's remaining time;
  - the upstream's retry budget has room (see L{RetryBudget}).
"""

from __future__ import annotations

import math
import random as _random
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txgateway.config import RetryConfig
from txgateway.interfaces import IRetryPolicy

if TYPE_CHECKING:
    from txgateway.context import RequestContext

__all__ = ["RetryBudget", "RetryPolicy"]


class RetryBudget:
    """
    Retries may add at most C{ratio} of the first attempts seen in the last
    C{window} seconds, plus a reserve of C{minPerSecond} x C{window} so that
    an upstream with little traffic can still retry at all.

    Counts live in a ring of C{buckets} slots of C{window / buckets} seconds,
    advanced lazily from the clock: memory is fixed whatever the traffic,
    and no timer runs.  The window slides one bucket at a time, which is
    precise enough for a safety limit.
    """

    __slots__ = ("ratio", "window", "reserve", "clock", "_width", "_n", "_requests", "_retries", "_current")

    def __init__(self, ratio: float, window: float, minPerSecond: float, clock: IReactorTime,
                 buckets: int = 10) -> None:
        self.ratio = ratio
        self.window = window
        self.reserve = minPerSecond * window
        self.clock = clock
        self._n = buckets
        self._width = window / buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._current = int(clock.seconds() // self._width)

    def _slot(self) -> int:
        """The ring slot for now, after emptying the slots that slid out of the window."""
        index = int(self.clock.seconds() // self._width)
        gap = index - self._current
        if gap > 0:
            n = self._n
            for i in range(1, min(gap, n) + 1):
                s = (self._current + i) % n
                self._requests[s] = 0
                self._retries[s] = 0
            self._current = index
        return self._current % self._n

    def deposit(self) -> None:
        """One first attempt was made."""
        self._requests[self._slot()] += 1

    def available(self) -> float:
        """How many more retries the budget allows right now."""
        self._slot()
        return self.ratio * sum(self._requests) + self.reserve - sum(self._retries)

    def withdraw(self) -> bool:
        """Spend one retry if the budget has room for it."""
        if self.available() < 1:
            return False
        self._retries[self._current % self._n] += 1  # available() just moved to now
        return True


@implementer(IRetryPolicy)
class RetryPolicy:
    """The C{retries:} section of one upstream, with its budget."""

    def __init__(self, config: RetryConfig, clock: IReactorTime, rng: _random.Random) -> None:
        self.config = config
        self.clock = clock
        self.random = rng
        self._conditions = frozenset(c for c in config.on if isinstance(c, str))
        self._statuses = frozenset(c for c in config.on if isinstance(c, int))
        self._any5xx = "5xx" in self._conditions
        self._methods = frozenset(m.upper().encode("ascii") for m in config.methods)
        self.budget = RetryBudget(config.budget, config.budget_window, config.min_retries_per_second, clock)

    def recordRequest(self) -> None:
        self.budget.deposit()

    def retryable(self, method: bytes, outcome: str | int, bodySent: bool) -> bool:
        """Is this failure, for this method, one the config says to retry (budget aside)?"""
        if isinstance(outcome, int):
            if outcome not in self._statuses and not (self._any5xx and 500 <= outcome <= 599):
                return False
        elif outcome not in self._conditions:
            return False
        elif outcome[:5] == "grpc:":
            return True  # a gRPC status the config names: retried whatever the method, as gRPC's retry policy does
        # Nothing reached the backend: replaying cannot do anything twice.
        return not bodySent or method in self._methods

    def backoff(self, retry: int) -> float:
        """
        The pause before retry number C{retry} (1 for the first): "full
        jitter", uniform between 0 and C{backoff} x 2^(retry-1) capped at
        C{max_backoff}.  Spreading retries over the whole interval keeps
        many clients that failed at the same moment from coming back at the
        same moment.
        """
        base = self.config.backoff
        if base <= 0:
            return 0.0
        cap = min(self.config.max_backoff, base * 2.0 ** min(retry - 1, 60))
        return self.random.uniform(0.0, cap)

    def shouldRetry(self, context: RequestContext, outcome: str | int, bodySent: bool,
                    remaining: float = math.inf) -> float | None:
        retry = context.attempts  # attempts made so far = the number of the retry to come
        if retry > self.config.attempts:
            return None
        if not self.retryable(context.method, outcome, bodySent):
            return None
        delay = self.backoff(retry)
        if delay >= remaining:
            return None
        if not self.budget.withdraw():
            return None
        return delay
