"""Circuit breakers: every transition, driven by a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txgateway.breaking import CircuitBreaker, makeBreaker
from txgateway.config import BreakerConfig
from txgateway.interfaces import IBreaker


class BreakerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transitions: list[tuple[str, str]] = []
        self.breaker = CircuitBreaker(3, 10.0, 1, self.clock, lambda old, new: self.transitions.append((old, new)))

    def trip(self) -> None:
        for _ in range(3):
            self.assertTrue(self.breaker.allow())
            self.breaker.recordFailure()

    def test_providesIBreaker(self) -> None:
        """The breaker implements IBreaker."""
        self.assertTrue(verifyObject(IBreaker, self.breaker))

    def test_makeBreakerIsNoneWithoutConfig(self) -> None:
        """An upstream without circuit_breaker gets no breaker at all."""
        self.assertIsNone(makeBreaker(None, self.clock))
        breaker = makeBreaker(BreakerConfig(failures=2, open_for=5.0, half_open_probes=3), self.clock)
        assert isinstance(breaker, CircuitBreaker)
        self.assertEqual((breaker.failures, breaker.openFor, breaker.halfOpenProbes), (2, 5.0, 3))

    def test_startsClosedAndAdmits(self) -> None:
        """A new breaker is closed and lets every request through."""
        self.assertEqual(self.breaker.state, "closed")
        for _ in range(100):
            self.assertTrue(self.breaker.allow())
        self.assertEqual(self.breaker.retryAfter(), 0.0)

    def test_breakerOpensAfterConsecutiveFailures(self) -> None:
        """`failures` consecutive failures open the breaker, which then refuses requests."""
        self.breaker.recordFailure()
        self.breaker.recordFailure()
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.recordFailure()
        self.assertEqual(self.breaker.state, "open")
        self.assertFalse(self.breaker.allow())
        self.assertEqual(self.transitions, [("closed", "open")])

    def test_successResetsTheFailureStreak(self) -> None:
        """Failures must be consecutive: a success in between starts the count again."""
        for _ in range(10):
            self.breaker.recordFailure()
            self.breaker.recordFailure()
            self.breaker.recordSuccess()
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(self.transitions, [])

    def test_retryAfterCountsDownWhileOpen(self) -> None:
        """An open breaker says how long until it lets a probe through."""
        self.trip()
        self.assertEqual(self.breaker.retryAfter(), 10.0)
        self.clock.advance(4)
        self.assertEqual(self.breaker.retryAfter(), 6.0)

    def test_opensHalfOpenLazilyAfterOpenFor(self) -> None:
        """After open_for the breaker is half_open, without any timer having run."""
        self.trip()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(9.9)
        self.assertEqual(self.breaker.state, "open")
        self.clock.advance(0.1)
        self.assertEqual(self.breaker.state, "half_open")
        self.assertEqual(self.breaker.retryAfter(), 0.0)
        self.assertEqual(self.transitions, [("closed", "open"), ("open", "half_open")])

    def test_halfOpenProbeSuccessCloses(self) -> None:
        """A successful probe closes the breaker; traffic flows again."""
        self.trip()
        self.clock.advance(10)
        self.assertTrue(self.breaker.allow())
        self.breaker.recordSuccess()
        self.assertEqual(self.breaker.state, "closed")
        self.assertTrue(self.breaker.allow())
        self.assertEqual(self.transitions, [("closed", "open"), ("open", "half_open"), ("half_open", "closed")])

    def test_halfOpenProbeFailureReopensForAnotherOpenFor(self) -> None:
        """A failed probe reopens the breaker, and the wait starts again from then."""
        self.trip()
        self.clock.advance(15)
        self.assertTrue(self.breaker.allow())
        self.breaker.recordFailure()
        self.assertEqual(self.breaker.state, "open")
        self.assertEqual(self.breaker.retryAfter(), 10.0)
        self.clock.advance(10)
        self.assertEqual(self.breaker.state, "half_open")
        self.assertEqual(self.transitions, [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                                            ("open", "half_open")])

    def test_reopenedBreakerNeedsFullFailuresAfterClosing(self) -> None:
        """Once closed again, the failure streak starts from zero."""
        self.trip()
        self.clock.advance(10)
        self.breaker.allow()
        self.breaker.recordSuccess()
        self.breaker.recordFailure()
        self.breaker.recordFailure()
        self.assertEqual(self.breaker.state, "closed")
        self.breaker.recordFailure()
        self.assertEqual(self.breaker.state, "open")

    def test_halfOpenAdmitsOnlyHalfOpenProbesConcurrently(self) -> None:
        """With half_open_probes=2, only two requests are let through at a time while half-open."""
        breaker = CircuitBreaker(1, 5.0, 2, self.clock)
        breaker.recordFailure()
        self.clock.advance(5)
        admitted = [breaker.allow() for _ in range(10)]
        self.assertEqual(admitted.count(True), 2)
        self.assertEqual(breaker.state, "half_open")
        # One probe answers: its slot frees for one more, and one success is not yet enough.
        breaker.recordSuccess()
        self.assertEqual(breaker.state, "half_open")
        self.assertTrue(breaker.allow())
        self.assertFalse(breaker.allow())
        breaker.recordSuccess()
        self.assertEqual(breaker.state, "closed")

    def test_releaseFreesAProbeSlotWithoutAVerdict(self) -> None:
        """A probe that was never sent (client gone) frees its slot and leaves the state alone."""
        self.trip()
        self.clock.advance(10)
        self.assertTrue(self.breaker.allow())
        self.assertFalse(self.breaker.allow())
        self.breaker.release()
        self.assertEqual(self.breaker.state, "half_open")
        self.assertTrue(self.breaker.allow())

    def test_releaseWhileClosedIsHarmless(self) -> None:
        """Releasing a request admitted while closed changes nothing."""
        self.breaker.allow()
        self.breaker.release()
        self.assertEqual(self.breaker.state, "closed")

    def test_lateResultsFromBeforeOpeningAreIgnored(self) -> None:
        """Answers to requests sent before the breaker opened neither close nor extend it."""
        self.trip()
        self.breaker.recordSuccess()
        self.breaker.recordFailure()
        self.assertEqual(self.breaker.state, "open")
        self.assertEqual(self.breaker.retryAfter(), 10.0)
        self.clock.advance(10)
        # Half-open, but no probe sent yet: a straggler's success is no evidence of recovery.
        self.breaker.recordSuccess()
        self.breaker.recordFailure()
        self.assertEqual(self.breaker.state, "half_open")
        self.assertEqual(len(self.transitions), 2)

    def test_observerErrorDoesNotBreakTheBreaker(self) -> None:
        """A failing transition observer is logged, and the transition still happens."""

        def boom(old: str, new: str) -> None:
            raise RuntimeError("observer bug")

        breaker = CircuitBreaker(1, 5.0, 1, self.clock, boom)
        breaker.recordFailure()
        self.assertEqual(breaker.state, "open")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_invalidSettingsAreRefused(self) -> None:
        """Nonsense settings fail loudly at build time, not on the request path."""
        self.assertRaises(ValueError, CircuitBreaker, 0, 1.0, 1, self.clock)
        self.assertRaises(ValueError, CircuitBreaker, 1, 1.0, 0, self.clock)


class ScrapeTests(SynchronousTestCase):
    def test_scrapeShowsAnExpiredOpenAsHalfOpen(self) -> None:
        """/metrics settles the lazy open -> half-open transition: no stale 'open' after open_for has passed."""
        from twisted.internet.testing import MemoryReactorClock

        from txgateway.config import parseConfig
        from txgateway.service import GatewayService

        reactor = MemoryReactorClock()
        config = parseConfig(
            "upstreams:\n  app:\n    targets: [http://127.0.0.1:9]\n"
            "    circuit_breaker: {failures: 1, open_for: 10s}\n"
            "routes:\n  - {match: {path_prefix: /}, upstream: app}\n")
        service = GatewayService(config, reactor)
        endpoint = service.gateway.runtime.clusters["app"].endpoints[0]
        assert endpoint.breaker is not None
        self.assertTrue(endpoint.breaker.allow())
        endpoint.breaker.recordFailure()
        line = 'txgateway_circuit_state{target="http://127.0.0.1:9",upstream="app"}'
        self.assertIn(f"{line} 1.0", service.metrics.render().decode())
        reactor.advance(11)
        self.assertIn(f"{line} 2.0", service.metrics.render().decode())
