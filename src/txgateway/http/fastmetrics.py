# -*- test-case-name: tests.test_observe_metrics -*-
"""
prometheus-client's Counter, Gauge and Histogram, updated without a lock.

The gateway updates its metrics from the reactor thread only, so the lock
prometheus-client takes around every update guards nothing here, and
taking it was most of an update's cost.  These classes change how an update
is made, never what is exported: tests/test_observe_metrics.py holds their
expositions to the stock classes' bytes.

Private prometheus-client names read or written here (the lead's
private-name rule must allow them in this module, or it moves):

  - L{values.MutexValue} (the stock in-process value: public module, its
    attributes are not used) and, of the multiprocess C{MmapedValue}:
    C{_multiprocess}, C{_file}, C{_key}, C{_value}; of its C{MmapedDict}:
    C{_positions}, C{_m} (the mapping) and the C{dd} (value, timestamp)
    layout of a sample;
  - of the metric classes: C{_metric_init}, C{_value}, C{_sum},
    C{_buckets}, C{_upper_bounds}, C{_multiprocess_mode},
    C{_MOST_RECENT_MODES};
  - the C{time} module as C{prometheus_client.metrics} imported it: an
    exemplar is time-stamped by the same clock as the stock classes' ones.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    values,
)
from prometheus_client import metrics as _stockMetrics
from prometheus_client.samples import Exemplar


class _PlainValue:
    """
    A metric child's value without a lock: what L{values.MutexValue} is, minus the mutex.

    The gateway updates its metrics from the reactor thread only, so the
    lock prometheus-client takes around every increment guards nothing
    here, and taking it was most of an increment's cost.  (A scrape reads
    a float attribute, which the GIL keeps whole.)
    """

    __slots__ = ("_value", "_exemplar")

    _multiprocess = False

    def __init__(self, value: float = 0.0) -> None:
        self._value = value
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


_TWO_DOUBLES = struct.Struct("dd")  # a sample's value and timestamp, as prometheus-client's MmapedDict stores them


class _MmapValue:
    """
    A worker's metric child value: prometheus-client's L{MmapedValue} without
    its lock and its fork check.

    With workers every update goes to a memory-mapped file that /metrics in
    any worker sums.  The stock value takes a lock and calls C{os.getpid()}
    (a system call) on every update to notice a fork; together that was
    about 1.5 us an update, eight updates a request.  A worker updates its
    metrics from the reactor thread only, and is spawned, not forked, after
    its metrics exist, so neither guards anything here.  What is written is
    what the stock value writes, at the same place in the same file: the
    sample's new value and a zero timestamp (C{mostrecent} gauges, which
    time-stamp their samples, keep the stock value).

    Assigning C{_value} writes through, so the C{Fast*} metrics' inline
    C{plain._value += amount} works on either kind of value.
    """

    __slots__ = ("_file", "_pos", "_v")

    _multiprocess = True

    def __init__(self, stock: Any) -> None:
        self._file = stock._file  # the MmapedDict of this metric type, shared by its values
        self._pos = stock._file._positions[stock._key]  # allocated when the stock value read its start
        self._v = float(stock._value)
        _TWO_DOUBLES.unpack_from(self._file._m, self._pos)  # the layout is the one written to below

    @property
    def _value(self) -> float:
        return self._v

    @_value.setter
    def _value(self, value: float) -> None:
        self._v = value
        # Read each time: the file's mapping is replaced when it grows.
        _TWO_DOUBLES.pack_into(self._file._m, self._pos, value, 0.0)

    def inc(self, amount: float) -> None:
        self._value = self._v + amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._v = value
        _TWO_DOUBLES.pack_into(self._file._m, self._pos, value, timestamp or 0.0)

    def set_exemplar(self, exemplar: Any) -> None:
        pass  # multiprocess mode has no exemplars

    def get(self) -> float:
        return self._v

    def get_exemplar(self) -> Any:
        return None


def _unlocked(value: Any) -> _PlainValue | _MmapValue | None:
    """
    A lock-free replacement for C{value}: a plain in-process one, or (with
    workers, C{PROMETHEUS_MULTIPROC_DIR}) one writing straight to the
    worker's mmap file; None for anything else, which stays as it is.
    """
    if type(value) is values.MutexValue:
        return _PlainValue(value.get())
    if getattr(value, "_multiprocess", False):
        try:
            return _MmapValue(value)
        except (AttributeError, KeyError, TypeError):
            return None  # a prometheus-client whose values are laid out otherwise: its own value stays
    return None


class FastCounter(Counter):
    """
    A Counter whose label children count without a lock (L{_PlainValue},
    or L{_MmapValue} with workers).

    Anything out of the ordinary (a negative amount, an exemplar, a parent
    without label values) takes prometheus-client's own path, so errors and
    the exposition stay exactly its own.
    """

    _plain: _PlainValue | _MmapValue | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        plain = _unlocked(self._value)
        if plain is not None:
            self._value = self._plain = plain

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        plain = self._plain
        if plain is not None and amount >= 0 and not exemplar:
            plain._value += amount
            return
        super().inc(amount, exemplar)


class FastGauge(Gauge):
    """A Gauge updated without a lock (see L{FastCounter})."""

    _plain: _PlainValue | _MmapValue | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        # The most-recent modes time-stamp every set; leave those to the base class.
        if self._multiprocess_mode not in self._MOST_RECENT_MODES:
            plain = _unlocked(self._value)
            if plain is not None:
                self._value = self._plain = plain

    def inc(self, amount: float = 1) -> None:
        plain = self._plain
        if plain is None:
            super().inc(amount)
        else:
            plain._value += amount

    def dec(self, amount: float = 1) -> None:
        plain = self._plain
        if plain is None:
            super().dec(amount)
        else:
            plain._value -= amount

    def set(self, value: float) -> None:
        plain = self._plain
        if plain is None:
            super().set(value)
        else:
            plain._value = float(value)


class FastHistogram(Histogram):
    """
    A Histogram observed without locks (see L{FastCounter}), its bucket found by bisection.

    prometheus-client walks the bounds one by one (an observation in the
    last buckets compares against all of them) and locks twice; the first
    bound not below the amount is what C{bisect_left} finds.  NaN, which
    no bucket takes, goes through the base class.  An exemplar (the trace
    id of a sampled request) is stored on its bucket's value as the base
    class stores it; with workers (mmap values) it is dropped, as
    prometheus-client's multiprocess mode has no exemplars.
    """

    _plainBuckets: list[_PlainValue | _MmapValue] | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        plainSum = _unlocked(self._sum)
        if plainSum is None:
            return
        buckets = [_unlocked(b) for b in self._buckets]
        if any(b is None for b in buckets):  # pragma: no cover - all or none are replaced
            return
        self._sum = plainSum
        self._buckets = self._plainBuckets = buckets  # type: ignore[assignment]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        buckets = self._plainBuckets
        if buckets is None or amount != amount:
            super().observe(amount, exemplar)
            return
        self._sum._value += amount
        bucket = buckets[bisect_left(self._upper_bounds, amount)]
        bucket._value += 1
        if exemplar:
            # What the base class stores (an Exemplar time-stamped now), without
            # its label re-validation: the gateway's exemplar is one short trace id.
            bucket.set_exemplar(Exemplar(exemplar, amount, _stockMetrics.time.time()))


__all__ = ["FastCounter", "FastGauge", "FastHistogram"]
