"""
The access log's hand-written JSON line against json.dumps of its entry, for any time and duration.

L{AccessLog.jsonLine} writes the timestamp's milliseconds from a table and
the duration without rounding through a float; these properties hold both
to what C{json.dumps(entry)} writes, over the whole range of values.
"""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgateway.context import RequestContext
from txgateway.observe.accesslog import AccessLog, accessText


class _Request:
    bytesIn = 0


class _Route:
    name = "r"


def context() -> RequestContext:
    c = RequestContext(_Request(), 0.0, "rid", "192.0.2.1", "192.0.2.1", b"GET", "h", "/p", None)  # type: ignore[arg-type]
    c.route, c.upstream, c.target, c.targetsTried = _Route(), "up", "http://t:1", ["http://t:1"]  # type: ignore[assignment]
    c.status, c.attempts = 200, 1
    return c


class JsonLineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = [1700000000.0]
        self.log = AccessLog(True, now=lambda: self.now[0])
        self.context = context()

    def assertSameAsJsonDumps(self, duration: float) -> None:
        line = self.log.jsonLine(self.context, duration)
        self.assertEqual(line, json.dumps(self.log.entry(self.context, duration), separators=(",", ":")) + "\n")

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(st.floats(min_value=-1e3, max_value=1e13, allow_nan=False),
                     st.integers(min_value=0, max_value=10**9).map(lambda us: us / 1e6),
                     st.integers(min_value=0, max_value=10**7).map(lambda n: n / 2e6)))
    @example(0.0)
    @example(-0.0)
    @example(-1e-7)
    @example(0.0000005)
    @example(0.0000015)
    @example(1.0)
    @example(999999999.9999995)
    @example(1e9 - 1e-7)
    @example(1e12)
    @example(1e20)
    def test_durationWrittenAsJsonDumpsWritesIt(self, duration: float) -> None:
        """duration_ms is json.dumps' round(ms, 3), halves, whole numbers, negatives and huge values included."""
        self.assertSameAsJsonDumps(duration)

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(st.floats(min_value=0.0, max_value=4e9, allow_nan=False),
                     st.integers(min_value=0, max_value=4 * 10**12).map(lambda ms: ms / 1000)))
    @example(1700000000.9996)
    @example(1700000000.9999999)
    @example(1700000001.0)
    @example(0.0)
    def test_timeWrittenAsEntryWritesIt(self, t: float) -> None:
        """The time field is the entry's, at any instant and across second boundaries."""
        self.now[0] = t
        self.assertSameAsJsonDumps(0.001)
        self.now[0] = t + 1
        self.assertSameAsJsonDumps(0.001)

    def test_notedFieldsWrittenAsJsonDumpsWritesThem(self) -> None:
        """Fields a request noted (issue 24's queue_ms, batch_id, batch_size, coalesced) come last, as json.dumps writes them."""
        self.context.note("queue_ms", 12.5)
        self.context.note("batch_id", "batch-7")
        self.context.note("batch_size", 3)
        self.context.note("coalesced", True)
        self.assertSameAsJsonDumps(0.001)
        self.assertTrue(self.log.jsonLine(self.context, 0.001).endswith(
            ',"queue_ms":12.5,"batch_id":"batch-7","batch_size":3,"coalesced":true}\n'))

    def test_notedFieldsInTheTextFormat(self) -> None:
        """format: text writes them as key=value too, a flag as JSON writes it."""
        self.assertEqual(accessText({"queue_ms": 0.0, "batch_id": "batch-7", "coalesced": True}),
                         "queue_ms=0.0 batch_id=batch-7 coalesced=true")
