"""The status page's timeline: a fixed-size ring fed once a second from the gateway's counters."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.observe.metrics import Metrics
from txgateway.observe.timeline import Timeline


def running(size: int = 900) -> tuple[Timeline, Metrics, Clock]:
    clock = Clock()
    clock.advance(1000)
    metrics = Metrics(processMetrics=False)
    t = Timeline(metrics, clock, size=size)
    t.startService()
    return t, metrics, clock


class TimelineTests(SynchronousTestCase):
    def test_onePointASecondWithRatesErrorsAndPercentiles(self) -> None:
        """Ten requests in a second, one a 502: 10 req/s, 10% errors, percentiles inside their buckets."""
        t, m, clock = running()
        for i in range(10):
            m.observeRequest("api", b"GET", 502 if i == 0 else 200, 0.02 if i < 9 else 0.4)
        clock.advance(1)
        doc = t.document()
        self.assertEqual(doc["t"], [1001.0])
        for key in ("gateway", "route:api"):
            s = doc["series"][key]
            self.assertEqual(s["rps"], [10.0])
            self.assertEqual(s["err"], [0.1])
            self.assertTrue(10 < s["p50"][0] <= 25, s["p50"])
            self.assertTrue(250 < s["p99"][0] <= 500, s["p99"])
        clock.advance(1)
        doc = t.document(since=1001.0)
        self.assertEqual(doc["t"], [1002.0])
        self.assertEqual(doc["series"]["gateway"]["rps"], [0.0])
        self.assertEqual(doc["series"]["gateway"]["p50"], [None])
        t.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_targetsRateLimitsCacheAndMarks(self) -> None:
        """Per target errors, per route 429s and cache hit ratio, breaker changes as marks."""
        t, m, clock = running()
        m.upstreamRequests.labels("app", "http://a", "200").inc(3)
        m.upstreamRequests.labels("app", "http://a", "timeout").inc(1)
        m.rateLimited.labels("api").inc(2)
        m.cacheRequests.labels("api", "hit").inc(3)
        m.cacheRequests.labels("api", "miss").inc(1)
        m.breakerTransitions.labels("app", "http://a", "open").inc()
        clock.advance(1)
        doc = t.document()
        self.assertEqual(doc["series"]["target:app http://a"]["err"], [0.25])
        self.assertEqual(doc["routes"]["api"], {"limited": [2.0], "cache_hit": [0.75]})
        self.assertEqual(doc["marks"], [{"t": 1001.0, "kind": "breaker", "upstream": "app", "target": "http://a",
                                         "to": "open"}])
        t.stopService()

    def test_ringIsBounded(self) -> None:
        """Only the last `size` points are kept."""
        t, m, clock = running(size=5)
        for _ in range(12):
            m.observeRequest("api", b"GET", 200, 0.01)
            clock.advance(1)
        self.assertEqual(len(t.document()["t"]), 5)
        self.assertEqual(t.document()["t"][0], 1008.0)
        t.stopService()
