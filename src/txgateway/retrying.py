"""
Retry policy: whether a failed attempt is tried again on another target.

Foundation version: connect failures are retried (nothing was sent, so any
method is safe), as often as C{retries.attempts} says.  The resilience issue
adds status/timeout conditions, jittered backoff and the budget.
"""

from __future__ import annotations

import random as _random
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from .config import RetryConfig
from .interfaces import IRetryPolicy

if TYPE_CHECKING:
    from .context import RequestContext


@implementer(IRetryPolicy)
class RetryPolicy:
    def __init__(self, config: RetryConfig, clock: IReactorTime, rng: _random.Random) -> None:
        self.config = config
        self.clock = clock
        self.random = rng

    def recordRequest(self) -> None:
        pass

    def shouldRetry(self, context: RequestContext, outcome: str | int, bodySent: bool) -> float | None:
        if context.attempts > self.config.attempts:
            return None
        if outcome == "connect_failure" and "connect_failure" in self.config.on:
            return 0.0
        return None
