"""
The gateway's lock-free metric classes against prometheus-client's own.

L{FastCounter}, L{FastGauge} and L{FastHistogram} change how an update is
made, never what is exported: each test feeds the same updates into a
registry of stock classes and one of ours and holds the expositions to the
same bytes.  prometheus-client's clock is pinned so that C{_created} and
exemplar timestamps agree too.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client import metrics as prometheusMetrics
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as generateOpenMetrics
from twisted.trial.unittest import SynchronousTestCase

from txgateway.http.fastmetrics import FastCounter, FastGauge, FastHistogram, _MmapValue, _PlainValue, _unlocked
from txgateway.observe.metrics import LATENCY_BUCKETS, Metrics

Kinds = tuple[type[Counter], type[Gauge], type[Histogram]]
STOCK: Kinds = (Counter, Gauge, Histogram)
OURS: Kinds = (FastCounter, FastGauge, FastHistogram)


class _FixedTime:
    """Stands in for the C{time} module inside prometheus_client.metrics."""

    @staticmethod
    def time() -> float:
        return 1700000000.25


def families(kinds: Kinds, registry: CollectorRegistry) -> dict[str, Any]:
    """The same shapes of family the gateway declares, built from C{kinds}."""
    counter, gauge, histogram = kinds
    return {
        "requests": counter("t_requests", "Requests.", ["route", "method", "status"], registry=registry),
        "plain": counter("t_plain", "An unlabelled counter.", registry=registry),
        "duration": histogram("t_duration_seconds", "Latency.", ["route"], buckets=LATENCY_BUCKETS, registry=registry),
        "sizes": histogram("t_size_bytes", "Default buckets, no labels.", registry=registry),
        "healthy": gauge("t_healthy", "Health.", ["target"], multiprocess_mode="livemin", registry=registry),
        "inFlight": gauge("t_in_flight", "In flight.", multiprocess_mode="livesum", registry=registry),
        "recent": gauge("t_recent", "Most recent.", ["k"], multiprocess_mode="mostrecent", registry=registry),
    }


def traffic(f: dict[str, Any]) -> None:
    """A mix of every kind of update the gateway makes, and a few it does not."""
    ok = f["requests"].labels("api", "GET", "200")
    for _ in range(5):
        ok.inc()
    f["requests"].labels("api", "POST", "503").inc(2)
    f["requests"].labels(route="web", method="GET", status="404").inc(0.5)
    f["plain"].inc()
    f["plain"].inc(0)
    for amount in (0.0, 0.001, 0.0010001, 0.003, 0.1, 0.25, 9.99, 10.0, 10.5, 1e9, math.inf, -1.0, 3):
        f["duration"].labels("api").observe(amount)
    f["duration"].labels("web").observe(0.02)
    f["duration"].labels("idle")
    for amount in (1, 512, 0.0751):
        f["sizes"].observe(amount)
    f["healthy"].labels("http://a:1").set(1)
    f["healthy"].labels("http://b:1").set(True)
    f["healthy"].labels("http://b:1").set(0)
    f["inFlight"].inc()
    f["inFlight"].inc(3)
    f["inFlight"].dec()
    f["inFlight"].dec(0.5)
    f["recent"].labels("x").set(7)


def expositions(registry: CollectorRegistry) -> tuple[bytes, bytes]:
    return generate_latest(registry), generateOpenMetrics(registry)


class ExpositionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(prometheusMetrics, "time", _FixedTime)

    def both(self, updates: Callable[[dict[str, Any]], None]) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
        out = []
        for kinds in (STOCK, OURS):
            registry = CollectorRegistry()
            updates(families(kinds, registry))
            out.append(expositions(registry))
        return out[0], out[1]

    def test_sameExpositionAsPrometheusClient(self) -> None:
        """Counters, gauges and histograms, labelled or not, export the bytes prometheus-client's classes do."""
        stock, ours = self.both(traffic)
        self.assertIn(b't_requests_total{method="GET",route="api",status="200"} 5.0', stock[0])
        self.assertEqual(ours, stock)

    def test_untouchedFamiliesExportTheSame(self) -> None:
        """Families without updates (and children never updated) export the same, too."""
        stock, ours = self.both(lambda f: None)
        self.assertEqual(ours, stock)

    def test_exemplarsTakeTheStockPath(self) -> None:
        """An exemplar on a counter or histogram comes out as prometheus-client writes it."""

        def updates(f: dict[str, Any]) -> None:
            f["requests"].labels("api", "GET", "200").inc(1, {"trace_id": "abc"})
            f["duration"].labels("api").observe(0.3, {"trace_id": "def"})
            f["duration"].labels("api").observe(0.2)

        stock, ours = self.both(updates)
        self.assertIn(b'trace_id="def"', stock[1])
        self.assertEqual(ours, stock)

    def test_nanObservedAsPrometheusClientDoes(self) -> None:
        """NaN lands in no bucket but in the sum, exactly as the linear walk does it."""
        stock, ours = self.both(lambda f: f["duration"].labels("api").observe(math.nan))
        self.assertIn(b"NaN", stock[0])
        self.assertEqual(ours, stock)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.one_of(st.sampled_from(LATENCY_BUCKETS),
                              st.floats(allow_nan=True, allow_infinity=True),
                              st.integers(min_value=-5, max_value=20)), max_size=30))
    def test_anyObservationsBucketedAsTheLinearWalkDoes(self, amounts: list[float]) -> None:
        """Bisection finds the bucket the linear walk finds, bounds, infinities and integers included."""

        def updates(f: dict[str, Any]) -> None:
            for amount in amounts:
                f["duration"].labels("api").observe(amount)
                f["sizes"].observe(amount)

        stock, ours = self.both(updates)
        self.assertEqual(ours, stock)

    def test_resetAndRemoveAsPrometheusClient(self) -> None:
        """Counter.reset, labels().remove and clear keep working on the lock-free children."""

        def updates(f: dict[str, Any]) -> None:
            traffic(f)
            f["plain"].reset()
            f["plain"].inc(4)
            f["requests"].remove("api", "POST", "503")
            f["healthy"].clear()

        stock, ours = self.both(updates)
        self.assertEqual(ours, stock)

    def test_setFunctionGauge(self) -> None:
        """A gauge reading a callback exports the callback's value, as in prometheus-client."""

        def updates(f: dict[str, Any]) -> None:
            f["inFlight"].inc(5)
            f["inFlight"].set_function(lambda: 42)

        stock, ours = self.both(updates)
        self.assertEqual(ours, stock)

    def test_sameErrors(self) -> None:
        """Misuse raises what prometheus-client raises: a negative count, a labelled parent updated."""
        registry = CollectorRegistry()
        f = families(OURS, registry)
        with self.assertRaises(ValueError):
            f["requests"].labels("api", "GET", "200").inc(-1)
        with self.assertRaises(ValueError):
            f["plain"].inc(-0.5)
        with self.assertRaises(ValueError):
            f["requests"].inc()
        with self.assertRaises(ValueError):
            f["healthy"].set(1)
        with self.assertRaises(ValueError):
            f["healthy"].inc()
        with self.assertRaises(ValueError):
            f["duration"].observe(1)
        with self.assertRaises(RuntimeError):
            f["recent"].labels("x").inc()
        self.assertEqual(registry.get_sample_value("t_plain_total"), 0.0)

    def test_childrenHoldNoLock(self) -> None:
        """In a single process every child's value is the lock-free one, read back through get()."""
        f = families(OURS, CollectorRegistry())
        child = f["requests"].labels("api", "GET", "200")
        child.inc(3)
        self.assertIsInstance(child._value, _PlainValue)
        self.assertEqual(child._value.get(), 3)
        self.assertIsInstance(f["inFlight"]._value, _PlainValue)
        hist = f["duration"].labels("api")
        self.assertIsInstance(hist._sum, _PlainValue)
        self.assertTrue(all(isinstance(b, _PlainValue) for b in hist._buckets))

    def test_gatewayMetricsUseTheLockFreeClasses(self) -> None:
        """Every family Metrics declares is one of the lock-free classes."""
        m = Metrics(processMetrics=False)
        declared = [v for v in vars(m).values() if isinstance(v, (Counter, Gauge, Histogram))]
        self.assertEqual(len(declared), 45)  # 18, issue 24's ten, issue 27's four, issue 22's two, issue 23's three, issue 21's three, issue 20's five
        for family in declared:
            self.assertIsInstance(family, OURS)


class MultiprocessTests(SynchronousTestCase):
    """With workers the values stay prometheus-client's mmap-backed ones, summed by every /metrics."""

    def setUp(self) -> None:
        self.patch(prometheusMetrics, "time", _FixedTime)
        self.saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.addCleanup(self.restoreEnvironment)

    def restoreEnvironment(self) -> None:
        values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]
        if self.saved is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.saved

    def multiprocessDirectory(self) -> str:
        """A fresh directory and value class, as a worker gets them at start-up."""
        directory = tempfile.mkdtemp(prefix="txgw-mp-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        self.patch(values, "ValueClass", values.MultiProcessValue())
        return directory

    def merged(self, directory: str) -> bytes:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)

    def test_mmapValuesKeptAndMergedTheSame(self) -> None:
        """Our classes write the same mmap files as prometheus-client's, so the merged /metrics is the same."""
        out = []
        for kinds in (STOCK, OURS):
            directory = self.multiprocessDirectory()
            f = families(kinds, CollectorRegistry())
            traffic(f)
            if kinds is OURS:
                # Written straight to the mmap file, but still a multiprocess value.
                child = f["requests"].labels("api", "GET", "200")
                self.assertIsInstance(child._value, _MmapValue)
                self.assertTrue(child._value._multiprocess)
                self.assertTrue(all(isinstance(b, _MmapValue) for b in f["duration"].labels("api")._buckets))
                self.assertIsInstance(f["inFlight"]._value, _MmapValue)
                self.assertNotIsInstance(f["recent"].labels("x")._value, _MmapValue)  # time-stamped: stock
            out.append(self.merged(directory))
        self.assertIn(b't_requests_total{method="GET",route="api",status="200"} 5.0', out[0])
        self.assertEqual(out[1], out[0])

    def test_anotherValueLayoutIsLeftAlone(self) -> None:
        """A multiprocess value laid out otherwise (another prometheus-client) keeps its own, locked path."""

        class Other:
            _multiprocess = True
            _value = 0.0

        self.assertIsNone(_unlocked(Other()))

    def test_mmapValuesWrittenAfterTheFileGrows(self) -> None:
        """Enough children to grow (and remap) the worker's file: every value still lands where stock puts it."""
        out = []
        for kinds in (STOCK, OURS):
            directory = self.multiprocessDirectory()
            f = families(kinds, CollectorRegistry())
            first = f["requests"].labels("first", "GET", "200")
            first.inc()
            for i in range(1000):  # 15 samples of ~140 bytes each: past the file's first 1 MiB
                f["duration"].labels(f"route-{i}").observe(0.01)
            first.inc(2)
            self.assertGreater(max(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)),
                               1 << 20)
            out.append(self.merged(directory))
        self.assertIn(b't_requests_total{method="GET",route="first",status="200"} 3.0', out[0])
        self.assertEqual(out[1], out[0])

    def test_gatewayRenderSumsTheWorkersFiles(self) -> None:
        """Metrics.render in a worker reports what went into the mmap files, not an in-process registry."""
        self.multiprocessDirectory()
        m = Metrics(processMetrics=False)
        m.observeRequest("api", b"GET", 200, 0.004, upstream="app")
        m.observeRequest("api", b"GET", 200, 0.2, upstream="app")
        m.inFlight.inc()
        text = m.render()
        self.assertIn(b'txgateway_http_requests_total{method="GET",route="api",status="200",upstream="app"} 2.0', text)
        self.assertIn(b'txgateway_http_request_duration_seconds_bucket{le="0.005",method="GET",route="api",upstream="app"} 1.0', text)
        self.assertIn(b"txgateway_in_flight_requests 1.0", text)
