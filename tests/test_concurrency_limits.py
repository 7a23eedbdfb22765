"""
Concurrency limits: the fixed cap, the gradient limit's rules one by one,
and the adaptive limit protecting a simulated model server at 3x overload.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txgateway.concurrency.interfaces import IConcurrencyLimit
from txgateway.concurrency.limits import FixedLimit, GradientLimit
from txgateway.concurrency.queue import AdmissionController, Permit, Shed


class FixedLimitTests(SynchronousTestCase):
    def test_fixed(self) -> None:
        """A fixed limit is what it was given, whatever the samples say."""
        limit = FixedLimit(8)
        verifyObject(IConcurrencyLimit, limit)
        limit.onSample(30.0, "dropped", 8)
        self.assertEqual(limit.limit, 8)

    def test_atLeastOne(self) -> None:
        """A limit of 0 would admit nothing: refused."""
        self.assertRaises(ValueError, FixedLimit, 0)


def feed(limit: GradientLimit, clock: Clock, latency: float, inFlight: int, count: int = 16,
         outcome: str = "success") -> None:
    """
    One window of C{count} samples, each finishing C{latency} after it
    started, ending one window later.  (A sample of a request let in before
    the limit last moved does not count: for a C{latency} longer than the
    spacing, move the clock on by it first.)
    """
    for _ in range(count):
        clock.advance(limit.window / count)
        limit.onSample(latency, outcome, inFlight)  # type: ignore[arg-type]


class GradientLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limit = GradientLimit(self.clock, minLimit=1, maxLimit=50, initial=4, probeInterval=0)

    def test_interface(self) -> None:
        """It is an IConcurrencyLimit and starts at its initial value."""
        verifyObject(IConcurrencyLimit, self.limit)
        self.assertEqual(self.limit.limit, 4)

    def test_growsWhileLatencyStaysAtItsMinimum(self) -> None:
        """With flat latency and every permit in use, each window adds about sqrt(limit)."""
        seen = []
        for _ in range(6):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
            seen.append(self.limit.limit)
        self.assertEqual(seen, [6, 8, 11, 14, 18, 22])
        self.assertAlmostEqual(self.limit.minRTT or 0, 0.1)

    def test_cutWhenLatencyRises(self) -> None:
        """Latency at twice its minimum cuts the limit in proportion (tolerance 1.25: to 0.625 of it)."""
        for _ in range(6):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
        before = self.limit._estimate
        feed(self.limit, self.clock, 0.2, self.limit.limit)
        self.assertEqual(self.limit.limit, int(before * 0.625))

    def test_pastACutGrowthIsOnePerWindow(self) -> None:
        """
        Once latency has risen, the limit grows again by one per window past
        the cut, not by its square root: it stays within a step of the
        backend's parallelism instead of swinging sqrt(limit) over it.
        """
        for _ in range(6):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
        feed(self.limit, self.clock, 0.2, self.limit.limit)  # 22.9 -> 14.3
        seen = []
        for _ in range(3):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
            seen.append(self.limit.limit)
        self.assertEqual(seen, [15, 16, 17])
        self.clock.advance(1.0)
        feed(self.limit, self.clock, 1.0, self.limit.limit)  # 17.3 -> 8.6: halved
        feed(self.limit, self.clock, 0.1, self.limit.limit)
        self.assertEqual(self.limit.limit, 9)  # 8.6 + 1: the latest cut is the one that counts

    def test_cutIsAtMostHalf(self) -> None:
        """However bad one window is, the limit falls by at most half, never below min."""
        for _ in range(6):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
        before = self.limit._estimate
        self.clock.advance(10.0)  # requests let in after the limit last moved, answered in 10 s
        feed(self.limit, self.clock, 10.0, self.limit.limit)
        self.assertEqual(self.limit.limit, int(before * 0.5))
        for _ in range(20):
            self.clock.advance(10.0)
            feed(self.limit, self.clock, 10.0, self.limit.limit)
        self.assertGreaterEqual(self.limit.limit, 1)
        self.assertLessEqual(self.limit.limit, 4)

    def test_droppedRequestsBackOff(self) -> None:
        """A window with a timeout or a 503 from the backend cuts the limit by 10%, latency aside."""
        for _ in range(6):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
        before = self.limit._estimate
        feed(self.limit, self.clock, 0.1, 22, count=15)
        self.clock.advance(0.0625)
        self.limit.onSample(0.1, "dropped", 22)
        self.assertEqual(self.limit.limit, int(before * 0.9))

    def test_unusedLimitIsNotRaised(self) -> None:
        """While less than half of the permits are used, the limit stays where it is."""
        for _ in range(10):
            feed(self.limit, self.clock, 0.1, 1)
        self.assertEqual(self.limit.limit, 4)

    def test_staysWithinMax(self) -> None:
        """However long latency stays flat, the limit stops at max."""
        for _ in range(100):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
        self.assertEqual(self.limit.limit, 50)

    def test_aCutIsNotCutAgainForRequestsLetInBeforeIt(self) -> None:
        """
        After a cut, slow answers of requests let in under the higher limit
        before it are not judged again: a stall costs one cut, and the next
        window is judged on the requests the lower limit let in.
        """
        for _ in range(6):
            feed(self.limit, self.clock, 0.1, self.limit.limit)
        before = self.limit._estimate
        self.clock.advance(0.2)
        feed(self.limit, self.clock, 0.2, self.limit.limit)  # latency doubled: 22.9 -> 14.3
        cut = self.limit.limit
        self.assertEqual(cut, int(before * 0.625))
        # The requests let in before the cut (the feed cut at its 13th sample,
        # 3/16 s ago) are still answering slowly: nothing moves.
        for _ in range(20):
            self.clock.advance(0.015)
            self.limit.onSample(0.5, "success", cut)
        self.assertEqual(self.limit.limit, cut)
        # Those let in since answer in the normal time: the limit grows again.
        feed(self.limit, self.clock, 0.1, cut)
        self.assertEqual(self.limit.limit, cut + 1)

    def test_ignoredSamplesSayNothing(self) -> None:
        """A client that went away is no latency measurement."""
        for _ in range(30):
            self.clock.advance(0.1)
            self.limit.onSample(5.0, "ignored", 4)
        self.assertEqual((self.limit.limit, self.limit.windows, self.limit.minRTT), (4, 0, None))

    def test_windowNeedsEnoughSamples(self) -> None:
        """A window does not end on too few samples, however long it has been."""
        self.clock.advance(5)
        for _ in range(9):
            self.limit.onSample(0.1, "success", 4)
        self.assertEqual(self.limit.windows, 0)
        self.limit.onSample(0.1, "success", 4)
        self.assertEqual(self.limit.windows, 1)

    def test_probeRemeasuresTheMinimum(self) -> None:
        """Every probe_interval the limit drops to min for one window, and what it measures there is the new minimum."""
        limit = GradientLimit(self.clock, minLimit=2, maxLimit=50, initial=10, probeInterval=30)
        while self.clock.seconds() < 29:
            feed(limit, self.clock, 0.1, limit.limit)
        grown = limit.limit
        feed(limit, self.clock, 0.1, limit.limit)  # this window ends past 30s: the probe starts
        self.assertTrue(limit.probing)
        self.assertEqual(limit.limit, 2)
        before = limit._beforeProbe
        # Requests admitted before the probe, under the old limit, do not count.
        self.clock.advance(0.5)
        for _ in range(20):
            limit.onSample(0.9, "success", 20)
        self.assertTrue(limit.probing)
        # The backend got slower (0.3s unloaded): the probe believes it.
        feed(limit, self.clock, 0.3, 2)
        self.assertFalse(limit.probing)
        self.assertAlmostEqual(limit.minRTT or 0, 0.3)
        self.assertEqual(limit.limit, int(before))
        self.assertGreaterEqual(grown, 20)
        self.assertEqual(limit.probes, 1)


class ModelServer:
    """
    A model server with C{workers} workers and a queue inside: each request
    takes C{service} seconds (+-10%) once a worker is free, so past
    C{workers} requests at once its latency grows with its concurrency.
    """

    def __init__(self, clock: Clock, workers: int, service: float, rng: random.Random,
                 stall: tuple[float, float, float] | None = None) -> None:
        self.clock = clock
        self.workers = workers
        self.service = service
        self.rng = rng
        self.stall = stall  # (from, to, extra seconds): computing started then takes that much longer
        self.busy = 0
        self.waiting: deque[Callable[[], None]] = deque()
        self.peak = 0

    def request(self, done: Callable[[], None]) -> None:
        self.peak = max(self.peak, self.busy + len(self.waiting) + 1)
        if self.busy < self.workers:
            self._start(done)
        else:
            self.waiting.append(done)

    def _start(self, done: Callable[[], None]) -> None:
        self.busy += 1
        extra = 0.0
        if self.stall is not None and self.stall[0] <= self.clock.seconds() < self.stall[1]:
            extra = self.stall[2]
        self.clock.callLater(self.service * self.rng.uniform(0.9, 1.1) + extra, self._finish, done)

    def _finish(self, done: Callable[[], None]) -> None:
        self.busy -= 1
        if self.waiting:
            self._start(self.waiting.popleft())
        done()


class Run:
    """Poisson arrivals at C{rate} per second for C{duration} seconds after C{warmup}, every event in Clock time."""

    def __init__(self, rate: float, duration: float, gate: AdmissionController | None, clock: Clock,
                 warmup: float = 20.0, workers: int = 8, service: float = 0.1, seed: int = 24,
                 stall: tuple[float, float, float] | None = None) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.server = ModelServer(clock, workers, service, self.rng, stall)
        self.gate = gate
        self.rate = rate
        self.start = warmup
        self.end = warmup + duration
        self.duration = duration
        self.latencies: list[float] = []
        self.shed = 0
        self.arrive()
        while calls := clock.getDelayedCalls():
            clock.advance(max(0.0, min(c.getTime() for c in calls) - clock.seconds()))
        self.latencies.sort()

    def arrive(self) -> None:
        t0 = self.clock.seconds()
        measured = t0 >= self.start

        def done(permit: Permit | None = None) -> None:
            if permit is not None:
                permit.release("success")
            if measured:
                self.latencies.append(self.clock.seconds() - t0)

        def refused(f: Failure) -> None:
            f.trap(Shed)
            if measured:
                self.shed += 1

        if self.gate is None:
            self.server.request(done)
        else:
            self.gate.acquire().addCallbacks(lambda p: self.server.request(lambda: done(p)), refused)
        if t0 < self.end:
            self.clock.callLater(self.rng.expovariate(self.rate), self.arrive)

    def p99(self) -> float:
        return self.latencies[int(0.99 * len(self.latencies))]

    def throughput(self) -> float:
        return len(self.latencies) / self.duration


class OverloadTests(SynchronousTestCase):
    """
    A backend of 8 workers at 100ms serves 80 requests a second.  Nominal
    load is 70% of that; overload is 3x capacity (240/s).
    """

    capacity = 80.0

    def adaptive(self) -> tuple[AdmissionController, Clock]:
        clock = Clock()
        limit = GradientLimit(clock, minLimit=1, maxLimit=200)
        return AdmissionController(limit, clock, queueSize=100, maxWait=0.05), clock

    def test_aStallIsOverWhenItIsOver(self) -> None:
        """
        A model of 8 workers at 200 ms under 30 requests a second; for one
        second everything it starts takes 600 ms longer.  The limit is cut
        for that once, not again for the slow answers of requests let in
        before the cut, so from a second after the stall the load is served
        again with (almost) no shedding.  Cut twice (a window judging answers
        of requests let in under the limit before), the limit fell below
        what the load needs and grew back by one a window: 19 of these 300
        requests were shed.
        """
        gate, clock = self.adaptive()
        run = Run(30, 10, gate, clock, warmup=22, service=0.2, stall=(20.0, 21.0, 0.6))
        self.assertLessEqual(run.shed, 0.02 * 30 * 10)
        self.assertGreaterEqual(gate.limit, 8)

    def test_withoutALimitOverloadRuinsLatency(self) -> None:
        """The baseline: at 3x overload the backend's own queue grows and p99 goes to tens of seconds."""
        nominal = Run(0.7 * self.capacity, 60, None, Clock())
        overload = Run(3 * self.capacity, 20, None, Clock())
        self.assertLess(nominal.p99(), 0.2)
        self.assertGreater(overload.p99(), 20 * nominal.p99())

    def test_adaptiveLimitKeepsLatencyAtOverload(self) -> None:
        """With an adaptive limit, p99 at 3x overload stays within 2x of nominal p99 and the excess is shed."""
        nominalGate, clock = self.adaptive()
        nominal = Run(0.7 * self.capacity, 60, nominalGate, clock)
        overloadGate, clock = self.adaptive()
        overload = Run(3 * self.capacity, 60, overloadGate, clock)
        self.assertLess(overload.p99(), 2 * nominal.p99())
        # The backend is kept busy (goodput near its capacity) and the rest is refused before it.
        self.assertGreater(overload.throughput(), 0.9 * self.capacity)
        offered = 3 * self.capacity * 60
        self.assertGreater(overload.shed, 0.6 * offered)
        self.assertEqual(overloadGate.shed["max_wait"] + overloadGate.shed["queue_full"], sum(overloadGate.shed.values()))
        # The limit settled a little above the backend's 8 workers, far below its max of 200.
        self.assertTrue(8 <= overloadGate.limit <= 20, overloadGate.limit)
        self.assertLessEqual(overload.server.peak, 30)
        # At nominal load almost nothing is shed (the probe's one window at min costs a little).
        self.assertLess(nominal.shed, 0.02 * 0.7 * self.capacity * 60)
        self.assertEqual(overloadGate.inFlight, 0)
