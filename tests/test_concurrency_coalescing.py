"""
Coalescing: identical requests in flight at once are sent once; cancellation
of one caller, of the first caller, of all; the key and who may coalesce.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from txgateway.concurrency.coalescing import CoalescedResponse, SingleFlight, coalescingKey, mayCoalesce
from txgateway.concurrency.specs import DEFAULT_KEY_HEADERS


class Origin:
    """Counts calls; answers when the test says."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0
        self.pending: list[Deferred[CoalescedResponse]] = []

    def fetch(self) -> Deferred[CoalescedResponse]:
        self.calls += 1

        def cancel(d: Deferred[CoalescedResponse]) -> None:
            self.cancelled += 1

        d: Deferred[CoalescedResponse] = Deferred(cancel)
        self.pending.append(d)
        return d


ANSWER = CoalescedResponse(200, ((b"content-type", b"application/json"),), b'{"label": "cat"}')


class SingleFlightTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.origin = Origin()
        self.flight: SingleFlight[CoalescedResponse] = SingleFlight(copy=CoalescedResponse.copy)

    def test_fiftyIdenticalCallsOneBackendCall(self) -> None:
        """50 identical requests in flight together reach the origin once; each client gets the answer, its own object."""
        waiters = [self.flight.call(b"k", self.origin.fetch) for _ in range(50)]
        self.assertEqual(self.origin.calls, 1)
        self.origin.pending[0].callback(ANSWER)
        answers = [self.successResultOf(d) for d in waiters]
        self.assertEqual({(a.code, a.body) for a in answers}, {(200, b'{"label": "cat"}')})
        self.assertEqual(len({id(a) for a in answers}), 50)
        self.assertEqual((self.flight.flights, self.flight.joined, self.flight.inFlight()), (1, 49, 0))

    def test_differentKeysFlySeparately(self) -> None:
        """Only identical requests share."""
        self.flight.call(b"a", self.origin.fetch)
        self.flight.call(b"b", self.origin.fetch)
        self.assertEqual(self.origin.calls, 2)
        for d in self.origin.pending:
            d.callback(ANSWER)

    def test_afterTheAnswerANewFlight(self) -> None:
        """Single flight is not a cache: a request after the answer asks the origin again."""
        first = self.flight.call(b"k", self.origin.fetch)
        self.origin.pending[0].callback(ANSWER)
        self.successResultOf(first)
        second = self.flight.call(b"k", self.origin.fetch)
        self.assertEqual(self.origin.calls, 2)
        self.origin.pending[1].callback(ANSWER)
        self.successResultOf(second)

    def test_cancelledFollowerLeavesTheOthers(self) -> None:
        """A client that goes away while sharing a flight fails alone; the origin call goes on."""
        first = self.flight.call(b"k", self.origin.fetch)
        gone = self.flight.call(b"k", self.origin.fetch)
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual(self.origin.cancelled, 0)
        self.origin.pending[0].callback(ANSWER)
        self.assertEqual(self.successResultOf(first).body, ANSWER.body)

    def test_cancelledFirstCallerDoesNotFailTheOthers(self) -> None:
        """The client that started the flight going away does not cancel it for those who joined."""
        first = self.flight.call(b"k", self.origin.fetch)
        others = [self.flight.call(b"k", self.origin.fetch) for _ in range(3)]
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.origin.cancelled, 0)
        self.origin.pending[0].callback(ANSWER)
        for d in others:
            self.successResultOf(d)

    def test_everyoneGoneCancelsTheWork(self) -> None:
        """When every caller has gone, nobody wants the answer: the origin call is cancelled and forgotten."""
        waiters = [self.flight.call(b"k", self.origin.fetch) for _ in range(3)]
        for d in waiters:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        self.assertEqual(self.origin.cancelled, 1)
        self.assertEqual(self.flight.inFlight(), 0)
        self.flight.call(b"k", self.origin.fetch)
        self.assertEqual(self.origin.calls, 2)
        self.origin.pending[1].callback(ANSWER)

    def test_failureReachesEveryCaller(self) -> None:
        """An origin error is every caller's error."""
        waiters = [self.flight.call(b"k", self.origin.fetch) for _ in range(3)]
        self.origin.pending[0].errback(ConnectionRefusedError())
        for d in waiters:
            self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(self.flight.inFlight(), 0)

    def test_workThatRaises(self) -> None:
        """Work that raises at once is a failed flight, not an exception out of call()."""

        def broken() -> Deferred[CoalescedResponse]:
            raise ValueError("bad")

        self.failureResultOf(self.flight.call(b"k", broken), ValueError)
        self.assertEqual(self.flight.inFlight(), 0)

    def test_callerMayChangeItsCopy(self) -> None:
        """Per-client headers added to one answer's copy do not appear in another's."""
        a = self.flight.call(b"k", self.origin.fetch)
        b = self.flight.call(b"k", self.origin.fetch)
        self.origin.pending[0].callback(ANSWER)
        mine = self.successResultOf(a).headerList()
        mine.append((b"x-request-id", b"1"))
        self.assertEqual(self.successResultOf(b).headers, ANSWER.headers)


class KeyTests(SynchronousTestCase):
    def key(self, method: bytes = b"POST", path: bytes = b"/predict", query: bytes = b"",
            headers: tuple[tuple[bytes, bytes], ...] = ((b"Authorization", b"Bearer a"),),
            body: bytes = b'{"x": 1}') -> bytes:
        return coalescingKey(method, path, query, headers, DEFAULT_KEY_HEADERS, body)

    def test_sameRequestSameKey(self) -> None:
        """Identical requests share a key, whatever the case of header names or headers not in the key."""
        self.assertEqual(self.key(), self.key(headers=((b"authorization", b"Bearer a"), (b"X-Request-Id", b"7"))))

    def test_eachPartCounts(self) -> None:
        """Method, path, query, a key header's value, and the body each tell requests apart."""
        base = self.key()
        self.assertNotEqual(base, self.key(method=b"GET"))
        self.assertNotEqual(base, self.key(path=b"/predict2"))
        self.assertNotEqual(base, self.key(query=b"v=2"))
        self.assertNotEqual(base, self.key(headers=((b"Authorization", b"Bearer b"),)))
        self.assertNotEqual(base, self.key(headers=()))
        self.assertNotEqual(self.key(headers=()), self.key(headers=((b"Authorization", b""),)))
        self.assertNotEqual(base, self.key(body=b'{"x": 2}'))

    def test_partsDoNotRunTogether(self) -> None:
        """Moving bytes between path and query gives another key."""
        self.assertNotEqual(self.key(path=b"/a", query=b"bc"), self.key(path=b"/ab", query=b"c"))

    def test_whoMayCoalesce(self) -> None:
        """GET and HEAD with coalesce on; POST only if declared idempotent; never anything else."""
        self.assertTrue(mayCoalesce(b"GET", True, False))
        self.assertTrue(mayCoalesce(b"HEAD", True, False))
        self.assertFalse(mayCoalesce(b"POST", True, False))
        self.assertTrue(mayCoalesce(b"POST", True, True))
        self.assertFalse(mayCoalesce(b"PUT", True, True))
        self.assertFalse(mayCoalesce(b"GET", False, True))
