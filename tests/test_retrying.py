"""Retry policy: conditions, methods, attempts, backoff and the budget, driven by a Clock."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txgateway.config import ConfigError, RetryConfig, parseConfig
from txgateway.context import RequestContext
from txgateway.interfaces import IRetryPolicy
from txgateway.retrying import RetryBudget, RetryPolicy


def context(method: bytes = b"GET", attempts: int = 1) -> RequestContext:
    c = RequestContext(None, 0.0, "rid", "127.0.0.1", "127.0.0.1", method, "h", "/", None)  # type: ignore[arg-type]
    c.attempts = attempts
    return c


def policy(clock: Clock | None = None, seed: int = 1, **kw: Any) -> RetryPolicy:
    kw.setdefault("budget", 1.0)
    kw.setdefault("min_retries_per_second", 100.0)
    return RetryPolicy(RetryConfig(**kw), clock or Clock(), random.Random(seed))


class ConditionTests(SynchronousTestCase):
    def test_providesIRetryPolicy(self) -> None:
        """RetryPolicy implements IRetryPolicy."""
        self.assertTrue(verifyObject(IRetryPolicy, policy()))

    def test_defaultsRetryConnectFailuresAndIdempotentResets(self) -> None:
        """Out of the box: connect failures (nothing was sent) and resets of idempotent requests; not timeouts or statuses."""
        p = policy()
        self.assertIsNotNone(p.shouldRetry(context(), "connect_failure", False))
        self.assertIsNotNone(p.shouldRetry(context(), "reset", True))
        self.assertIsNone(p.shouldRetry(context(b"POST"), "reset", True))
        self.assertIsNone(p.shouldRetry(context(), "timeout", True))
        self.assertIsNone(p.shouldRetry(context(), 503, True))

    def test_listedStatusesAndConditionsAreRetried(self) -> None:
        """Conditions in retries.on are retried, others are not."""
        p = policy(on=("connect_failure", "timeout", 502, 503, 429))
        for outcome in ("connect_failure", "timeout", 502, 503, 429):
            self.assertIsNotNone(p.shouldRetry(context(), outcome, outcome != "connect_failure"), outcome)
        for outcome in ("reset", 500, 504):
            self.assertIsNone(p.shouldRetry(context(), outcome, True), outcome)

    def test_5xxCoversEveryServerError(self) -> None:
        """`5xx` in retries.on stands for every 5xx status but not 429."""
        p = policy(on=("5xx",))
        for code in (500, 502, 503, 504, 599):
            self.assertIsNotNone(p.shouldRetry(context(), code, True), code)
        self.assertIsNone(p.shouldRetry(context(), 429, True))
        self.assertIsNone(p.shouldRetry(context(), "timeout", True))

    def test_postIsNotRetriedAfterA503(self) -> None:
        """POST is not in retries.methods: a 503 the backend answered is final."""
        p = policy(on=("connect_failure", 503))
        self.assertIsNone(p.shouldRetry(context(b"POST"), 503, True))
        self.assertIsNotNone(p.shouldRetry(context(b"PUT"), 503, True))

    def test_postIsRetriedAfterAConnectFailure(self) -> None:
        """Nothing was sent after a connect failure, so even POST is retried."""
        p = policy(on=("connect_failure", 503))
        self.assertIsNotNone(p.shouldRetry(context(b"POST"), "connect_failure", False))

    def test_connectFailureMustStillBeListed(self) -> None:
        """Without connect_failure in retries.on, not even a connect failure is retried."""
        p = policy(on=(503,))
        self.assertIsNone(p.shouldRetry(context(b"GET"), "connect_failure", False))

    def test_attemptsBoundTheRetries(self) -> None:
        """retries.attempts is the number of extra tries: attempts=2 allows a second and a third attempt."""
        p = policy(attempts=2)
        self.assertIsNotNone(p.shouldRetry(context(attempts=1), "connect_failure", False))
        self.assertIsNotNone(p.shouldRetry(context(attempts=2), "connect_failure", False))
        self.assertIsNone(p.shouldRetry(context(attempts=3), "connect_failure", False))

    def test_zeroAttemptsNeverRetries(self) -> None:
        """retries: false (attempts 0) turns retries off."""
        self.assertIsNone(policy(attempts=0).shouldRetry(context(), "connect_failure", False))

    def test_noRetryWhenTheBackoffWouldOutlastTheDeadline(self) -> None:
        """A retry whose pause does not fit in the time left is refused (and costs no budget)."""
        p = policy(backoff=1.0, max_backoff=1.0, budget=0.0, min_retries_per_second=0.1, budget_window=10.0)
        self.assertIsNone(p.shouldRetry(context(), "connect_failure", False, remaining=0.0))
        self.assertEqual(p.budget.available(), 1.0)
        self.assertIsNotNone(p.shouldRetry(context(), "connect_failure", False, remaining=5.0))


class BackoffTests(SynchronousTestCase):
    def test_backoffGrowsExponentiallyWithinItsBounds(self) -> None:
        """Retry n pauses between 0 and backoff x 2^(n-1), capped at max_backoff."""
        p = policy(backoff=0.025, max_backoff=0.15)
        for retry, cap in ((1, 0.025), (2, 0.05), (3, 0.1), (4, 0.15), (10, 0.15), (1000, 0.15)):
            delays = [p.backoff(retry) for _ in range(500)]
            self.assertTrue(all(0 <= d <= cap for d in delays), (retry, max(delays)))
            # Jittered: spread over the interval, not stuck at one value.
            self.assertGreater(max(delays) - min(delays), cap * 0.8)

    def test_jitterComesFromTheInjectedRandom(self) -> None:
        """The same seed gives the same pauses: no hidden global randomness."""
        a = [policy(seed=7, backoff=0.1).backoff(2) for _ in range(3)]
        b = [policy(seed=7, backoff=0.1).backoff(2) for _ in range(3)]
        self.assertEqual(a, b)
        self.assertEqual(a[0], random.Random(7).uniform(0, 0.2))

    def test_zeroBackoffRetriesAtOnce(self) -> None:
        """backoff: 0 means no pause."""
        self.assertEqual(policy(backoff=0.0).shouldRetry(context(), "connect_failure", False), 0.0)

    def test_shouldRetryReturnsTheBackoff(self) -> None:
        """The delay shouldRetry gives is the jittered backoff for that retry number."""
        p = policy(seed=3, attempts=3, backoff=0.1, max_backoff=10.0)
        expected = random.Random(3)
        self.assertEqual(p.shouldRetry(context(attempts=2), "connect_failure", False), expected.uniform(0, 0.2))


class _ReferenceBudget:
    """The budget's meaning, written plainly: counts per slot, summed over the last C{buckets} slots."""

    def __init__(self, ratio: float, window: float, minPerSecond: float, clock: Clock, buckets: int) -> None:
        self.ratio, self.reserve, self.clock, self.n = ratio, minPerSecond * window, clock, buckets
        self.width = window / buckets
        self.counts: dict[int, list[int]] = {}
        self.current = int(clock.seconds() // self.width)

    def _now(self) -> int:
        # The slot never moves back: a clock stepping back counts in the latest slot.
        self.current = max(self.current, int(self.clock.seconds() // self.width))
        return self.current

    def deposit(self) -> None:
        self.counts.setdefault(self._now(), [0, 0])[0] += 1

    def available(self) -> float:
        now = self._now()
        live = [c for i, c in self.counts.items() if now - self.n < i <= now]
        return self.ratio * sum(c[0] for c in live) + self.reserve - sum(c[1] for c in live)

    def withdraw(self) -> bool:
        if self.available() < 1:
            return False
        self.counts.setdefault(self.current, [0, 0])[1] += 1
        return True


class BudgetTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([0.0, 0.0, 0.25, 0.999, 1.0, 3.5, 9.0, 10.0, 25.0, -0.5, -3.0]),
                              st.sampled_from(["deposit", "deposit", "withdraw", "available"])), max_size=80),
           st.sampled_from([0.1, 0.5, 1.0]), st.sampled_from([0.0, 0.2]), st.sampled_from([1, 3, 10]))
    def test_budgetMatchesItsPlainMeaning(self, steps: list[tuple[float, str]], ratio: float,
                                          minPerSecond: float, buckets: int) -> None:
        """Over any schedule (the clock stepping back too), the ring answers as counts summed over the last slots."""
        clock = Clock()
        clock.advance(1000.0)
        budget = RetryBudget(ratio, 10.0, minPerSecond, clock, buckets)
        reference = _ReferenceBudget(ratio, 10.0, minPerSecond, clock, buckets)
        for gap, op in steps:
            clock.rightNow += gap
            if op == "deposit":
                budget.deposit()
                reference.deposit()
            elif op == "withdraw":
                self.assertEqual(budget.withdraw(), reference.withdraw())
            self.assertAlmostEqual(budget.available(), reference.available())


    def test_budgetStopsRetriesBeyondItsShare(self) -> None:
        """With budget 20% and no reserve, 10 requests allow 2 retries and no third."""
        clock = Clock()
        p = policy(clock, budget=0.2, min_retries_per_second=0.0, budget_window=10.0)
        for _ in range(10):
            p.recordRequest()
        self.assertIsNotNone(p.shouldRetry(context(), "connect_failure", False))
        self.assertIsNotNone(p.shouldRetry(context(), "connect_failure", False))
        self.assertIsNone(p.shouldRetry(context(), "connect_failure", False))
        # More traffic earns more retries.
        for _ in range(5):
            p.recordRequest()
        self.assertIsNotNone(p.shouldRetry(context(), "connect_failure", False))
        self.assertIsNone(p.shouldRetry(context(), "connect_failure", False))

    def test_budgetRefillsAsTheWindowSlides(self) -> None:
        """Retries spent leave the window after budget_window seconds; so do the requests that paid for them."""
        clock = Clock()
        budget = RetryBudget(0.5, 10.0, 0.0, clock)
        for _ in range(4):
            budget.deposit()
        self.assertTrue(budget.withdraw())
        self.assertTrue(budget.withdraw())
        self.assertFalse(budget.withdraw())
        clock.advance(5)
        for _ in range(2):
            budget.deposit()
        self.assertTrue(budget.withdraw())
        self.assertFalse(budget.withdraw())
        # The first four requests and two retries slide out; two requests and one retry remain.
        clock.advance(5)
        self.assertEqual(budget.available(), 0.0)
        clock.advance(5)
        self.assertEqual(budget.available(), 0.0)  # nothing left in the window at all
        budget.deposit()
        budget.deposit()
        self.assertTrue(budget.withdraw())

    def test_reserveLetsLowTrafficRetry(self) -> None:
        """min_retries_per_second x budget_window retries are allowed even with no traffic."""
        clock = Clock()
        p = policy(clock, budget=0.2, min_retries_per_second=0.5, budget_window=10.0)
        allowed = [p.shouldRetry(context(), "connect_failure", False) for _ in range(8)]
        self.assertEqual(sum(a is not None for a in allowed), 5)

    def test_budgetMemoryIsBoundedAfterLongIdle(self) -> None:
        """A long quiet spell empties the ring without walking every missed slot."""
        clock = Clock()
        budget = RetryBudget(1.0, 10.0, 0.0, clock)
        budget.deposit()
        clock.advance(10**9)
        self.assertEqual(budget.available(), 0.0)
        self.assertEqual(len(budget._requests), 10)

    def test_retriesRefusedByTheBudgetAreNotCharged(self) -> None:
        """A refused retry leaves the budget as it was."""
        clock = Clock()
        p = policy(clock, budget=0.0, min_retries_per_second=0.1, budget_window=10.0)
        self.assertIsNone(p.shouldRetry(context(b"POST"), 503, True))
        self.assertEqual(p.budget.available(), 1.0)


class ConfigTests(SynchronousTestCase):
    def parse(self, retries: str) -> RetryConfig:
        text = f"""
upstreams:
  u:
    targets: [http://127.0.0.1:9]
    retries: {retries}
routes:
  - {{name: r, match: {{path_prefix: /}}, upstream: u}}
"""
        return parseConfig(text).upstreams["u"].retries

    def test_totalTimeoutIsParsed(self) -> None:
        """retries.total_timeout takes a duration; it is unset by default."""
        self.assertIsNone(self.parse("{attempts: 2}").total_timeout)
        self.assertEqual(self.parse("{total_timeout: 1500ms}").total_timeout, 1.5)

    def test_badTotalTimeoutNamesTheKey(self) -> None:
        """A zero total_timeout is rejected with its key path."""
        with self.assertRaises(ConfigError) as e:
            self.parse("{total_timeout: 0s}")
        self.assertIn("upstreams.u.retries.total_timeout", str(e.exception))
