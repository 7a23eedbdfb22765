"""
The admission controller: permits under the limit, a bounded FIFO queue per
priority class, shedding (queue full, max_wait, stopped) with Retry-After,
cancellation, and what a release tells the limit.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txgateway.concurrency.build import makeAdmission, rebuildAdmission
from txgateway.concurrency.interfaces import IConcurrencyLimit, IPermit, Outcome
from txgateway.concurrency.limits import FixedLimit, GradientLimit
from txgateway.concurrency.queue import AdmissionController, Permit, Shed, outcomeFor
from txgateway.concurrency.specs import AdaptiveSpec, ConcurrencySpec, FixedSpec, PrioritySpec, QueueSpec


@implementer(IConcurrencyLimit)
class RecordingLimit:
    """A limit that can be set by the test and remembers every sample."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.samples: list[tuple[float, Outcome, int]] = []

    def onSample(self, latency: float, outcome: Outcome, inFlight: int) -> None:
        self.samples.append((latency, outcome, inFlight))


class AdmissionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.limit = RecordingLimit(2)
        self.waits: list[tuple[str, float]] = []
        self.sheds: list[tuple[str, str]] = []
        self.gate = AdmissionController(self.limit, self.clock, queueSize=3, maxWait=1.0,
                                        classes=("paid", "free"),
                                        onWait=lambda c, s: self.waits.append((c, s)),
                                        onShed=lambda c, r: self.sheds.append((c, r)))

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_underTheLimitAPermitAtOnce(self) -> None:
        """While fewer than limit permits are held, acquire fires at once."""
        a = self.successResultOf(self.gate.acquire("paid"))
        b = self.successResultOf(self.gate.acquire("free"))
        verifyObject(IPermit, a)
        self.assertEqual((a.priority, b.priority, a.waited), ("paid", "free", 0.0))
        self.assertEqual((self.gate.inFlight, self.gate.queued, self.gate.limit), (2, 0, 2))
        a.release()
        b.release()
        self.assertEqual(self.gate.inFlight, 0)
        self.assertEqual(self.waits, [("paid", 0.0), ("free", 0.0)])

    def test_atTheLimitRequestsWaitInOrder(self) -> None:
        """Past the limit requests queue, and each release admits the oldest."""
        held = [self.successResultOf(self.gate.acquire("free")) for _ in range(2)]
        waiting = [self.gate.acquire("free") for _ in range(3)]
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(self.gate.queued, 3)
        self.clock.advance(0.25)
        held[0].release()
        first = self.successResultOf(waiting[0])
        self.assertEqual(first.waited, 0.25)
        self.assertNoResult(waiting[1])
        held[1].release()
        first.release()
        for d in waiting[1:]:
            self.successResultOf(d).release()
        self.assertEqual((self.gate.inFlight, self.gate.queued, self.gate.admitted), (0, 0, 5))

    def test_higherClassServedFirst(self) -> None:
        """A waiting paid request gets the next slot before free ones that waited longer."""
        held = [self.successResultOf(self.gate.acquire("free")) for _ in range(2)]
        order: list[str] = []

        def served(p: Permit) -> None:
            order.append(p.priority)
            p.release()

        for cls in ("free", "free", "paid", "free", "paid"):
            self.gate.acquire(cls).addCallback(served)
        self.assertEqual(self.gate.queuedByClass(), {"paid": 2, "free": 3})
        held[0].release()
        held[1].release()
        self.assertEqual(order, ["paid", "paid", "free", "free", "free"])

    def test_eachClassHasItsOwnBoundedQueue(self) -> None:
        """A full free queue sheds free requests with queue_full but still queues paid ones."""
        held = [self.successResultOf(self.gate.acquire("free")) for _ in range(2)]
        queued = [self.gate.acquire("free") for _ in range(3)]
        f = self.failureResultOf(self.gate.acquire("free"), Shed)
        self.assertEqual((f.value.reason, f.value.priority), ("queue_full", "free"))
        self.assertGreater(f.value.retryAfter, 0)
        paid = self.gate.acquire("paid")
        self.assertNoResult(paid)
        self.assertEqual(self.gate.shed["queue_full"], 1)
        self.assertEqual(self.sheds, [("free", "queue_full")])
        held[0].release()
        self.successResultOf(paid).release()
        held[1].release()
        for d in queued:
            self.successResultOf(d).release()

    def test_waitingLongerThanMaxWaitIsShed(self) -> None:
        """A waiter that gets no slot within max_wait fails with Shed(max_wait) at exactly that time."""
        held = [self.successResultOf(self.gate.acquire("free")) for _ in range(2)]
        d = self.gate.acquire("free")
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        f = self.failureResultOf(d, Shed)
        self.assertEqual(f.value.reason, "max_wait")
        self.assertGreaterEqual(f.value.retryAfter, 0.5)
        self.assertEqual((self.gate.queued, self.gate.shed["max_wait"]), (0, 1))
        for p in held:
            p.release()
        self.assertEqual(self.gate.inFlight, 0)

    def test_retryAfterGrowsWithTheQueue(self) -> None:
        """Retry-After estimates the queue ahead at the measured pace of the backend."""
        held = [self.successResultOf(self.gate.acquire("free")) for _ in range(2)]
        self.clock.advance(2.0)
        held[0].release()  # one permit held 2s: the pace
        held[1] = self.successResultOf(self.gate.acquire("free"))
        empty = self.gate.retryAfter()
        queued = [self.gate.acquire("free") for _ in range(3)]
        self.assertEqual(empty, 2.0 * 1 / 2)
        self.assertEqual(self.gate.retryAfter(), 2.0 * 4 / 2)
        for d in queued:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        for p in held:
            p.release()

    def test_cancelledWaiterLeavesTheQueue(self) -> None:
        """A client that goes away leaves the queue: it is not granted, not shed, and its timer is gone."""
        held = self.successResultOf(self.gate.acquire("free")), self.successResultOf(self.gate.acquire("free"))
        gone = self.gate.acquire("free")
        stays = self.gate.acquire("free")
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual((self.gate.queued, self.gate.cancelled, sum(self.gate.shed.values())), (1, 1, 0))
        held[0].release()
        self.successResultOf(stays).release()
        held[1].release()
        self.assertEqual(self.gate.inFlight, 0)

    def test_cancelAfterTheGrantDoesNothing(self) -> None:
        """Cancelling a Deferred that already has its permit leaves the permit to be released."""
        d = self.gate.acquire("free")
        d.cancel()
        p = self.successResultOf(d)
        self.assertEqual(self.gate.inFlight, 1)
        p.release()
        self.assertEqual(self.gate.inFlight, 0)

    def test_releaseRecordsLatencyAndOutcomeOnce(self) -> None:
        """The limit hears each permit once: the time from grant to release, and how it went."""
        a = self.successResultOf(self.gate.acquire())
        b = self.successResultOf(self.gate.acquire())
        self.clock.advance(0.3)
        a.release("dropped")
        a.release("success")
        self.clock.advance(0.2)
        b.release()
        self.assertEqual(self.limit.samples, [(0.3, "dropped", 2), (0.5, "success", 1)])
        self.assertEqual(self.gate.inFlight, 0)

    def test_releaseWithTheBackendsLatency(self) -> None:
        """A release may say how long the backend took (time to the response head) instead of the hold time."""
        p = self.successResultOf(self.gate.acquire())
        self.clock.advance(5.0)  # a slow client read a long body
        p.release("success", latency=0.12)
        self.assertEqual(self.limit.samples, [(0.12, "success", 1)])

    def test_raisingTheLimitAdmitsWaitersOnRelease(self) -> None:
        """When a sample raises the limit, the release admits as many waiters as now fit."""
        held = [self.successResultOf(self.gate.acquire()) for _ in range(2)]
        waiting = [self.gate.acquire() for _ in range(3)]
        self.limit.limit = 4
        held[0].release()
        granted = [self.successResultOf(d) for d in waiting]
        self.assertEqual(self.gate.inFlight, 4)
        for p in granted + held[1:]:
            p.release()

    def test_releaseInsideAGrantIsSafe(self) -> None:
        """A permit released by the callback that received it (a cached answer) keeps the queue consistent."""
        held = [self.successResultOf(self.gate.acquire()) for _ in range(2)]
        seen: list[Permit] = []

        def served(p: Permit) -> None:
            seen.append(p)
            p.release()

        for _ in range(3):
            self.gate.acquire().addCallback(served)
        held[0].release()
        self.assertEqual((len(seen), self.gate.queued, self.gate.inFlight), (3, 0, 1))
        held[1].release()

    def test_unknownClassQueuesAsTheLowest(self) -> None:
        """A request without a known class waits behind every higher class."""
        held = [self.successResultOf(self.gate.acquire()) for _ in range(2)]
        d = self.gate.acquire("gold")
        self.assertEqual(self.gate.queuedByClass(), {"paid": 0, "free": 1})
        d.cancel()
        self.failureResultOf(d, CancelledError)
        for p in held:
            p.release()

    def test_queueSizeZeroShedsAtTheLimit(self) -> None:
        """queue: {size: 0} refuses at once what the limit does not admit."""
        gate = AdmissionController(FixedLimit(1), self.clock, queueSize=0, maxWait=1.0)
        p = self.successResultOf(gate.acquire())
        self.assertEqual(self.failureResultOf(gate.acquire(), Shed).value.reason, "queue_full")
        p.release()
        self.successResultOf(gate.acquire()).release()

    def test_stopShedsWaitersAndNewcomers(self) -> None:
        """A stopped controller (reload, shutdown) sheds what waits and what comes; held permits still release."""
        held = [self.successResultOf(self.gate.acquire()) for _ in range(2)]
        waiting = self.gate.acquire()
        self.gate.stop()
        self.assertEqual(self.failureResultOf(waiting, Shed).value.reason, "stopped")
        self.assertEqual(self.failureResultOf(self.gate.acquire(), Shed).value.reason, "stopped")
        for p in held:
            p.release()
        self.assertEqual((self.gate.inFlight, self.gate.shed["stopped"]), (0, 2))

    def test_waitTimesAreObserved(self) -> None:
        """Every grant reports its wait, for the wait-time histogram."""
        held = [self.successResultOf(self.gate.acquire("paid")) for _ in range(2)]
        d = self.gate.acquire("free")
        self.clock.advance(0.5)
        held[0].release()
        self.successResultOf(d).release()
        held[1].release()
        self.assertEqual(self.waits, [("paid", 0.0), ("paid", 0.0), ("free", 0.5)])


class OutcomeTests(SynchronousTestCase):
    def test_outcomeOfAttempts(self) -> None:
        """Overload anywhere is a drop; an answer is a success; a client gone or a broken target says nothing."""
        self.assertEqual(outcomeFor([200]), "success")
        self.assertEqual(outcomeFor([404]), "success")
        self.assertEqual(outcomeFor(["timeout", 200]), "dropped")
        self.assertEqual(outcomeFor([503]), "dropped")
        self.assertEqual(outcomeFor([429]), "dropped")
        self.assertEqual(outcomeFor(["connect_failure", 200]), "success")
        self.assertEqual(outcomeFor(["cancelled"]), "ignored")
        self.assertEqual(outcomeFor([500]), "ignored")
        self.assertEqual(outcomeFor(["reset"]), "ignored")
        self.assertEqual(outcomeFor([]), "ignored")


class BuildTests(SynchronousTestCase):
    def test_fixedSpec(self) -> None:
        """A fixed spec builds a controller with that limit, queue and classes."""
        spec = ConcurrencySpec(FixedSpec(8), QueueSpec(5, 0.25), PrioritySpec(("a", "b"), "b"))
        gate = makeAdmission(spec, Clock())
        self.assertIsInstance(gate.limiter, FixedLimit)
        self.assertEqual((gate.limit, gate.queueSize, gate.maxWait, gate.classes), (8, 5, 0.25, ("a", "b")))

    def test_adaptiveSpec(self) -> None:
        """An adaptive spec builds a gradient limit starting at its initial value."""
        gate = makeAdmission(ConcurrencySpec(AdaptiveSpec(min=2, max=50, initial=10)), Clock())
        self.assertIsInstance(gate.limiter, GradientLimit)
        self.assertEqual(gate.limit, 10)



class ReloadTests(SynchronousTestCase):
    """A reload that changes the concurrency spec neither drops the queue nor doubles the backend's load."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.spec = ConcurrencySpec(FixedSpec(2), QueueSpec(10, 1.0), PrioritySpec(("paid", "free"), "free"))
        self.old = makeAdmission(self.spec, self.clock)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unchangedSpecKeepsTheController(self) -> None:
        """An equal spec keeps the running controller, queue and all."""
        same = ConcurrencySpec(FixedSpec(2), QueueSpec(10, 1.0), PrioritySpec(("paid", "free"), "free"))
        self.assertIs(rebuildAdmission((self.spec, self.old), same, self.clock), self.old)

    def test_queueChangeKeepsTheLearntLimit(self) -> None:
        """Changing only the queue keeps the (adaptive) limit object and what it learnt."""
        spec = ConcurrencySpec(AdaptiveSpec(), QueueSpec(10, 1.0))
        old = makeAdmission(spec, self.clock)
        new = rebuildAdmission((spec, old), ConcurrencySpec(AdaptiveSpec(), QueueSpec(5, 0.5)), self.clock)
        self.assertIsNot(new, old)
        self.assertIs(new.limiter, old.limiter)
        self.assertEqual((new.queueSize, new.maxWait), (5, 0.5))

    def test_newControllerTakesOverPermitsAndWaiters(self) -> None:
        """Permits held under the old spec count against the new limit; waiters keep their place and deadline."""
        held = [self.successResultOf(self.old.acquire()) for _ in range(2)]
        self.clock.advance(0.1)
        early = self.old.acquire("free")
        self.clock.advance(0.1)
        paid = self.old.acquire("paid")
        spec = ConcurrencySpec(FixedSpec(3), QueueSpec(10, 0.5), PrioritySpec(("paid", "free"), "free"))
        new = rebuildAdmission((self.spec, self.old), spec, self.clock)
        # The limit is 3: one slot free at once, for the higher class.
        self.assertEqual((new.inFlight, new.queued), (3, 1))
        granted = self.successResultOf(paid)
        self.assertNoResult(early)
        # The free waiter came at 0.1 and may wait min(1.0, 0.5): shed at 0.6.
        self.clock.advance(0.3999)
        self.assertNoResult(early)
        self.clock.advance(0.0001)
        self.assertEqual(self.failureResultOf(early, Shed).value.reason, "max_wait")
        # Old permits release into the new controller; a late request to the old one is passed on.
        held[0].release()
        self.assertEqual(new.inFlight, 2)
        late = self.successResultOf(self.old.acquire())
        self.assertEqual(new.inFlight, 3)
        for p in [held[1], granted, late]:
            p.release()
        self.assertEqual((new.inFlight, self.old.inFlight), (0, 0))

    def test_cancelAfterTakeOver(self) -> None:
        """A waiter that moved can still leave its (new) queue."""
        held = [self.successResultOf(self.old.acquire()) for _ in range(2)]
        d = self.old.acquire()
        new = rebuildAdmission((self.spec, self.old), ConcurrencySpec(FixedSpec(2), QueueSpec(3, 1.0)), self.clock)
        self.assertEqual(new.queued, 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((new.queued, new.cancelled), (0, 1))
        for p in held:
            p.release()
