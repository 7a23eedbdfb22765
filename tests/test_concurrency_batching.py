"""
Micro-batching: items collected up to max_size or max_wait, one backend call,
results split back in order; wrong counts and errors; one-by-one fallback;
the envelope wire format.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.concurrency.batching import BatchError, MicroBatcher, decodeBatch, encodeBatch


class Backend:
    """A batch endpoint the test answers by hand; by default it echoes each item doubled."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[Any]]] = []
        self.pending: list[Deferred[list[Any]]] = []
        self.auto = True
        self.clock: Clock | None = None

    def send(self, items: list[Any]) -> Deferred[list[Any]]:
        self.calls.append((self.clock.seconds() if self.clock else 0.0, list(items)))
        if self.auto:
            return succeed([{"y": item["x"] * 2} for item in items])
        d: Deferred[list[Any]] = Deferred()
        self.pending.append(d)
        return d


class BatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = Backend()
        self.backend.clock = self.clock
        self.observed: list[tuple[int, float]] = []
        self.batcher = MicroBatcher(self.backend.send, self.clock, maxSize=32, maxWait=0.005,
                                    observe=lambda n, w: self.observed.append((n, w)))

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hundredConcurrentSubmitsInBatchesOfAtMostMaxSize(self) -> None:
        """100 requests at once go as batches of 32, 32, 32 and 4, and every client gets its own result."""
        waiters = [self.batcher.submit({"x": i}) for i in range(100)]
        self.assertEqual([len(items) for _, items in self.backend.calls], [32, 32, 32])
        self.clock.advance(0.005)
        self.assertEqual([len(items) for _, items in self.backend.calls], [32, 32, 32, 4])
        self.assertEqual([self.successResultOf(d) for d in waiters], [{"y": 2 * i} for i in range(100)])
        self.assertEqual(self.observed, [(32, 0.0), (32, 0.0), (32, 0.0), (4, 0.005)])
        self.assertEqual((self.batcher.batches, self.batcher.items, self.batcher.inFlight), (4, 100, 0))

    def test_neverHeldPastMaxWait(self) -> None:
        """A lone request leaves at max_wait after it came, and one that comes later starts a new wait."""
        first = self.batcher.submit({"x": 1})
        self.clock.advance(0.003)
        second = self.batcher.submit({"x": 2})
        self.clock.advance(0.002)
        self.assertEqual(self.backend.calls, [(0.005, [{"x": 1}, {"x": 2}])])
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ({"y": 2}, {"y": 4}))
        third = self.batcher.submit({"x": 3})
        self.clock.advance(0.004)
        self.assertNoResult(third)
        self.clock.advance(0.001)
        self.assertEqual(self.successResultOf(third), {"y": 6})
        self.assertAlmostEqual(self.backend.calls[-1][0], 0.01)

    def test_wrongCountFailsEveryWaiter(self) -> None:
        """A batch answered with the wrong number of results fails each request of it with the reason."""
        self.backend.auto = False
        waiters = [self.batcher.submit({"x": i}) for i in range(3)]
        self.clock.advance(0.005)
        self.backend.pending[0].callback([{"y": 0}, {"y": 2}])
        for d in waiters:
            f = self.failureResultOf(d, BatchError)
            self.assertEqual((f.value.reason, f.value.kind), ("batch of 3 items answered with 2 results", "wrong_count"))
        self.assertEqual(self.batcher.failed, 1)

    def test_errorFailsEveryWaiter(self) -> None:
        """A batch call that fails (connection refused, a 500) fails each request of it, saying so."""
        self.backend.auto = False
        waiters = [self.batcher.submit({"x": i}) for i in range(2)]
        self.clock.advance(0.005)
        self.backend.pending[0].errback(ConnectionRefusedError("connection refused"))
        for d in waiters:
            error = self.failureResultOf(d, BatchError).value
            self.assertIn("batch call failed: connection refused", error.reason)
            self.assertEqual(error.kind, "failed")
            # The cause is kept, so a shed or timed-out batch can be answered 503 / 504 rather than 502.
            self.assertIsInstance(error.cause, ConnectionRefusedError)

    def test_notAList(self) -> None:
        """A batch answer that is not a list fails the batch."""
        kinds: list[str] = []
        notAList: Any = {"oops": 1}
        batcher = MicroBatcher(lambda items: succeed(notAList), self.clock, maxSize=2, onFailure=kinds.append)
        waiters = [batcher.submit(1), batcher.submit(2)]
        for d in waiters:
            self.assertEqual(self.failureResultOf(d, BatchError).value.reason, "batch response is not a list")
        self.assertEqual(kinds, ["bad_response"])

    def test_fallBackToOneByOne(self) -> None:
        """With on_error: single, a failed batch sends each item alone and each client gets that answer."""
        singles: list[Any] = []

        def sendOne(item: Any) -> Deferred[Any]:
            singles.append(item)
            return succeed({"single": item["x"]}) if item["x"] else fail(BatchError("upstream said 500"))

        batcher = MicroBatcher(lambda items: succeed([]), self.clock, maxSize=3, onError="single", sendOne=sendOne)
        waiters = [batcher.submit({"x": i}) for i in range(3)]
        self.assertEqual(singles, [{"x": 0}, {"x": 1}, {"x": 2}])
        self.assertEqual(self.failureResultOf(waiters[0], BatchError).value.reason, "upstream said 500")
        self.assertEqual([self.successResultOf(d) for d in waiters[1:]], [{"single": 1}, {"single": 2}])

    def test_singleNeedsSendOne(self) -> None:
        """on_error single without a way to send one item is a programming error."""
        self.assertRaises(ValueError, MicroBatcher, self.backend.send, self.clock, onError="single")

    def test_cancelBeforeTheBatchLeavesTakesTheItemOut(self) -> None:
        """A client gone before its batch leaves is not sent; the last one gone stops the timer."""
        a = self.batcher.submit({"x": 1})
        b = self.batcher.submit({"x": 2})
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.clock.advance(0.005)
        self.assertEqual(self.backend.calls, [(0.005, [{"x": 2}])])
        self.successResultOf(b)
        c = self.batcher.submit({"x": 3})
        c.cancel()
        self.failureResultOf(c, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelAfterTheBatchLeftDropsTheResult(self) -> None:
        """A client gone after its batch left gets nothing; the others get theirs."""
        self.backend.auto = False
        a = self.batcher.submit({"x": 1})
        b = self.batcher.submit({"x": 2})
        self.clock.advance(0.005)
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.backend.pending[0].callback([{"y": 2}, {"y": 4}])
        self.assertEqual(self.successResultOf(b), {"y": 4})

    def test_maxSizeOneSendsAtOnce(self) -> None:
        """max_size 1 sends each item at once, without a timer."""
        batcher = MicroBatcher(self.backend.send, self.clock, maxSize=1, maxWait=1.0)
        self.assertEqual(self.successResultOf(batcher.submit({"x": 3})), {"y": 6})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flushSendsAtOnce(self) -> None:
        """flush() (shutdown) sends what waits without waiting for the timer."""
        d = self.batcher.submit({"x": 5})
        self.batcher.flush()
        self.assertEqual(self.successResultOf(d), {"y": 10})


class WireFormatTests(SynchronousTestCase):
    def test_bareArray(self) -> None:
        """envelope null: a JSON array in, a JSON array out."""
        self.assertEqual(encodeBatch([{"a": 1}, 2], None), b'[{"a":1},2]')
        self.assertEqual(decodeBatch(b"[1, 2]", None, 2), [1, 2])

    def test_instancesEnvelope(self) -> None:
        """envelope instances: TF Serving / KServe v1, {"instances": [...]} in, {"predictions": [...]} out."""
        self.assertEqual(json.loads(encodeBatch(["é"], "instances")), {"instances": ["é"]})
        self.assertEqual(decodeBatch(b'{"predictions": [[0.1], [0.9]]}', "instances", 2), [[0.1], [0.9]])

    def test_envelopeErrors(self) -> None:
        """The protocol's error object, and an answer without predictions, are clear batch errors."""
        e = self.assertRaises(BatchError, decodeBatch, b'{"error": "input too large"}', "instances", 1)
        self.assertEqual(e.reason, "batch call failed: input too large")
        e = self.assertRaises(BatchError, decodeBatch, b"[1]", "instances", 1)
        self.assertEqual(e.reason, 'batch response has no "predictions" list')

    def test_badBodies(self) -> None:
        """Not JSON, not an array, the wrong count: each says which."""
        self.assertIn("not JSON", self.assertRaises(BatchError, decodeBatch, b"<html>", None, 1).reason)
        self.assertEqual(self.assertRaises(BatchError, decodeBatch, b'{"a": 1}', None, 1).reason,
                         "batch response is not a JSON array")
        self.assertEqual(self.assertRaises(BatchError, decodeBatch, b"[1, 2, 3]", None, 2).reason,
                         "batch of 2 items answered with 3 results")
