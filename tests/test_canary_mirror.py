"""
The mirror sender, driven by a Clock and a fake send: nothing is sent in
the primary's turn, the queue and the in-flight bound drop (and count)
what does not fit, a slow or down mirror is timed out or failed once and
never retried, and comparison results land in the counts and samples.
"""

from __future__ import annotations

import json
from random import Random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txgateway.canary.build import BodyKeeper, RouteCanary, buildRouteCanary
from txgateway.canary.compare import mirrorsReport
from txgateway.canary.interfaces import Answer, IMirror, MirrorRequest
from txgateway.canary.mirror import Mirror
from txgateway.canary.specs import CanaryRouteSpec, CompareSpec, JsonCompareSpec, MirrorSpec, WeightedUpstream


class FakeMirrorUpstream:
    """The injected send: records each request and hands back a Deferred the test fires (or not)."""

    def __init__(self) -> None:
        self.requests: list[MirrorRequest] = []
        self.pending: list[Deferred[Answer]] = []
        self.cancelled = 0

    def send(self, request: MirrorRequest) -> Deferred[Answer]:
        self.requests.append(request)

        def cancel(d: Deferred[Answer]) -> None:
            self.cancelled += 1

        d: Deferred[Answer] = Deferred(cancel)
        self.pending.append(d)
        return d


def request(body: bytes = b'{"x": 1}', path: bytes = b"/v1/predict?key=secret") -> MirrorRequest:
    return MirrorRequest(b"POST", path, ((b"Content-Type", b"application/json"),
                                         (b"Authorization", b"Bearer hunter2")), body, "req-1")


def answer(doc: Any, status: int = 200) -> Answer:
    return Answer(status, ((b"Content-Type", b"application/json"),), json.dumps(doc).encode())


class MirrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.upstream = FakeMirrorUpstream()
        self.events: list[str] = []

    def mirror(self, **kw: Any) -> Mirror:
        spec = MirrorSpec(**{"upstream": "model-v2", **kw})
        return Mirror("predict", spec, self.upstream.send, self.clock, Random(7), observe=self.events.append)

    def test_provides(self) -> None:
        verifyObject(IMirror, self.mirror())

    def test_notSentInThePrimarysTurn(self) -> None:
        """submit only enqueues: the copy goes out in a later reactor turn."""
        m = self.mirror()
        ticket = m.submit(request())
        self.assertIsNotNone(ticket)
        self.assertEqual(self.upstream.requests, [])
        self.clock.advance(0)
        self.assertEqual(self.upstream.requests, [request()])
        self.assertEqual(m.report()["sent"], 1)

    def test_percentSampled(self) -> None:
        """percent: 10 mirrors 100 +- 47 (5 sd) of 1,000 requests, with the injected Random."""
        m = self.mirror(percent=10.0, queue=10_000, concurrency=10_000)
        mirrored = sum(m.submit(request()) is not None for _ in range(1000))
        self.assertTrue(53 <= mirrored <= 147, mirrored)
        self.clock.advance(0)
        self.assertEqual(len(self.upstream.requests), mirrored)
        self.assertEqual(self.mirror(percent=0.0).submit(request()), None)

    def test_bodyOverMaxBodySkipped(self) -> None:
        """A body over max_body is not copied, and counted as skipped (also when only its length is known)."""
        m = self.mirror(max_body=4)
        self.assertIsNone(m.submit(request(b"12345")))
        self.assertIsNone(m.submit(request(b""), bodyLength=10))
        self.assertIsNotNone(m.submit(request(b"1234")))
        self.clock.advance(0)
        self.assertEqual((m.report()["skipped"], m.report()["sent"]), (2, 1))

    def test_queueFullDropped(self) -> None:
        """Beyond queue copies waiting, further copies are dropped and counted, never waited for."""
        m = self.mirror(queue=2, concurrency=1)
        tickets = [m.submit(request()) for _ in range(4)]
        self.assertEqual([t is not None for t in tickets], [True, True, False, False])
        self.clock.advance(0)
        r = m.report()
        self.assertEqual((r["sent"], r["queued"], r["dropped"], r["in_flight"]), (1, 1, 2, 1))
        self.upstream.pending[0].callback(answer({}))
        self.clock.advance(0)
        self.assertEqual((m.report()["sent"], m.report()["queued"]), (2, 0))

    def test_slowMirrorTimedOutAndStaleCopiesDropped(self) -> None:
        """
        A mirror that never answers: the copies in flight time out after
        timeout, the ones that waited that long in the queue are dropped
        rather than sent late, and nothing is left scheduled.
        """
        m = self.mirror(timeout=5.0, queue=3, concurrency=2)
        for _ in range(2):
            m.submit(request())
        self.clock.advance(0)
        self.clock.advance(1)
        for _ in range(4):
            m.submit(request())  # three wait, the fourth does not fit
        self.clock.advance(4)  # the first two reach their 5 s
        r = m.report()
        self.assertEqual((r["sent"], r["timed_out"], r["dropped"]), (4, 2, 1))
        self.assertEqual(r["last_error"], "no answer within 5s")
        self.assertEqual(self.upstream.cancelled, 2)
        self.clock.advance(5)  # the two sent at t=5 time out; the third waited 5 s: dropped, not sent
        r = m.report()
        self.assertEqual((r["sent"], r["timed_out"], r["dropped"], r["queued"], r["in_flight"]), (4, 4, 2, 0, 0))
        self.assertEqual(len(self.upstream.requests), 4)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_mirrorDownFailedOnceNoRetry(self) -> None:
        """A refused connection is one failure: counted, last_error kept, not sent again."""
        calls: list[MirrorRequest] = []

        def down(r: MirrorRequest) -> Deferred[Answer]:
            calls.append(r)
            return fail(ConnectionRefusedError("127.0.0.1:9"))

        m = Mirror("predict", MirrorSpec("model-v2"), down, self.clock, Random(1))
        ticket = m.submit(request())
        self.clock.advance(0)
        self.clock.advance(60)
        assert ticket is not None
        ticket.primaryAnswered(answer({}))
        r = m.report()
        self.assertEqual((len(calls), r["sent"], r["failed"], r["compared"]), (1, 1, 1, 0))
        self.assertIn("Connection was refused", r["last_error"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sendRaising(self) -> None:
        """A send that raises is a failure of the mirror, not of the gateway."""

        def broken(r: MirrorRequest) -> Deferred[Answer]:
            raise RuntimeError("no such upstream")

        m = Mirror("predict", MirrorSpec("model-v2"), broken, self.clock, Random(1))
        m.submit(request())
        self.clock.advance(0)
        self.assertEqual((m.report()["failed"], m.report()["in_flight"]), (1, 0))
        self.flushLoggedErrors(RuntimeError)

    def test_compareMatchAndMismatch(self) -> None:
        """Both answers in (in either order): compared; a difference is counted and kept as a sample."""
        compare = CompareSpec(body="json", json=JsonCompareSpec(ignore=("$.meta",), absolute=1e-6))
        m = self.mirror(compare=compare)
        same, differs = m.submit(request()), m.submit(request())
        assert same is not None and differs is not None
        self.clock.advance(0)
        same.primaryAnswered(answer({"score": 0.5, "meta": {"latency": 3}}))
        self.upstream.pending[0].callback(answer({"score": 0.5000001, "meta": {"latency": 9}}))
        self.upstream.pending[1].callback(answer({"score": 0.7}))
        differs.primaryAnswered(answer({"score": 0.5}))
        r = m.report()
        self.assertEqual((r["sent"], r["compared"], r["mismatched"]), (2, 2, 1))
        [sample] = r["samples"]
        self.assertEqual(sample["differences"], ["$.score"])
        self.assertEqual((sample["primary"]["body"], sample["mirror"]["body"]), ({"score": 0.5}, {"score": 0.7}))
        self.assertEqual(sample["path"], "/v1/predict")
        self.assertIn(["Authorization", "[redacted]"], sample["request_headers"])
        self.assertEqual(self.events.count("mismatched"), 1)

    def test_truncatedNotCompared(self) -> None:
        """A primary body over max_body cannot be compared: counted as not_compared."""
        m = self.mirror(compare=CompareSpec())
        t = m.submit(request())
        assert t is not None
        self.clock.advance(0)
        self.upstream.pending[0].callback(Answer(200, (), b"x" * 10))
        t.primaryAnswered(Answer(200, (), b"x" * 5, truncated=True))
        self.assertEqual((m.report()["compared"], m.report()["not_compared"]), (0, 1))

    def test_primaryFailedNothingCompared(self) -> None:
        m = self.mirror(compare=CompareSpec())
        t = m.submit(request())
        assert t is not None
        t.primaryFailed()
        self.clock.advance(0)
        self.upstream.pending[0].callback(answer({}))
        self.assertEqual((m.report()["sent"], m.report()["compared"]), (1, 0))

    def test_withoutCompareTicketIsInert(self) -> None:
        """Without compare nothing is compared, and the body is let go once sent."""
        m = self.mirror()
        t = m.submit(request(b"big body"))
        assert t is not None
        self.clock.advance(0)
        self.assertEqual(t.request.body, b"")
        self.upstream.pending[0].callback(answer({}))
        t.primaryAnswered(answer({"other": 1}))
        self.assertEqual((m.report()["compared"], m.report()["samples"]), (0, []))

    def test_stop(self) -> None:
        """stop() cancels what is in flight and forgets the queue, counting neither as a failure."""
        m = self.mirror(concurrency=1)
        m.submit(request())
        m.submit(request())
        self.clock.advance(0)
        m.stop()
        m.stop()
        r = m.report()
        self.assertEqual((r["sent"], r["failed"], r["timed_out"], r["queued"], r["in_flight"]), (1, 0, 0, 0, 0))
        self.assertIsNone(m.submit(request()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_continueFromCarriesCountsAndSamples(self) -> None:
        """Over a reload the counts and samples carry on, unless the mirror upstream changed."""
        old = self.mirror(compare=CompareSpec(), queue=1, concurrency=1)
        t = old.submit(request())
        old.submit(request())  # dropped
        assert t is not None
        self.clock.advance(0)
        self.upstream.pending[0].callback(answer({"a": 2}))
        t.primaryAnswered(answer({"a": 1}))
        new = self.mirror(compare=CompareSpec())
        new.continueFrom(old)
        r = new.report()
        self.assertEqual((r["sent"], r["dropped"], r["mismatched"], len(r["samples"])), (1, 1, 1, 1))
        other = Mirror("predict", MirrorSpec("model-v3"), self.upstream.send, self.clock, Random(1))
        other.continueFrom(old)
        self.assertEqual(other.report()["sent"], 0)

    def test_synchronousAnswer(self) -> None:
        """A send that answers at once is fine too."""
        m = Mirror("predict", MirrorSpec("model-v2", compare=CompareSpec()), lambda r: succeed(answer({"a": 1})),
                   self.clock, Random(1))
        t = m.submit(request())
        assert t is not None
        self.clock.advance(0)
        t.primaryAnswered(answer({"a": 1}))
        self.assertEqual((m.report()["compared"], m.report()["mismatched"]), (1, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_apiMirrorsShape(self) -> None:
        """GET /api/mirrors: per route sent, dropped, compared, mismatched and samples."""
        m = self.mirror(compare=CompareSpec())
        doc = mirrorsReport({"predict": m})
        entry = doc["mirrors"]["predict"]
        for key in ("sent", "dropped", "compared", "mismatched", "samples"):
            self.assertIn(key, entry)
        self.assertEqual(entry["upstream"], "model-v2")
        json.dumps(doc)


class BuildTests(SynchronousTestCase):
    def test_buildRouteCanary(self) -> None:
        """A route with a split and a mirror gets both; a plain route neither; metrics hear each outcome."""
        clock, upstream, heard = Clock(), FakeMirrorUpstream(), []
        spec = CanaryRouteSpec((WeightedUpstream("model-v1", 95), WeightedUpstream("model-v2", 5)),
                               mirror=MirrorSpec("model-v3"))
        sends: list[str] = []

        def mirrorSend(name: str) -> Any:
            sends.append(name)
            return upstream.send

        built = buildRouteCanary("predict", spec, clock, Random(1), mirrorSend,
                                 observe=lambda route, outcome: heard.append((route, outcome)))
        assert built.splitter is not None and built.mirror is not None
        self.assertEqual((built.splitter.split.names, sends), (("model-v1", "model-v2"), ["model-v3"]))
        built.mirror.submit(request())
        clock.advance(0)
        self.assertEqual(heard, [("predict", "sent")])
        self.assertEqual(buildRouteCanary("plain", CanaryRouteSpec(), clock, Random(1)), RouteCanary())
        self.assertRaises(ValueError, buildRouteCanary, "predict", spec, clock, Random(1))

    def test_bodyKeeper(self) -> None:
        """The first max_body bytes are kept for the comparison; more marks the answer truncated."""
        keeper = BodyKeeper(5)
        for chunk in (b"ab", b"cd", b"efgh", b"ij"):
            keeper.write(chunk)
        self.assertEqual(keeper.answer(200, [(b"A", b"1")]), Answer(200, ((b"A", b"1"),), b"abcde", True))
        exact = BodyKeeper(4)
        exact.write(b"abcd")
        self.assertEqual(exact.answer(204, []), Answer(204, (), b"abcd", False))
