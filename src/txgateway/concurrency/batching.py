# -*- test-case-name: tests.test_concurrency_batching -*-
"""
Micro-batching: single JSON requests collected into one backend call.

A model server computes a batch of 32 in about the time of one; clients
send one item each.  L{MicroBatcher.submit} takes one item (a decoded JSON
value) and answers with its own result: items are collected until
C{maxSize} of them wait or the first has waited C{maxWait}, whichever comes
first, then C{send(items)} is called once and the list it answers is split
back, result C{i} to the waiter of item C{i}.  The timer starts with the
first item of a batch, so no request is held longer than C{maxWait} before
its batch leaves.

When the batch call fails, or answers with something other than a list of
exactly as many results as items, every waiter of that batch fails with a
L{BatchError} saying why (the gateway's 502), or, with
C{onError="single"}, each item is sent on its own through C{sendOne} and
gets that answer (the route's normal forward), so one bad batch degrades to
unbatched traffic instead of to errors.

A waiter whose Deferred is cancelled (the client went away) before its
batch leaves is taken out of it; after, its result is dropped.

The wire format is two pure functions, L{encodeBatch} and L{decodeBatch}:
envelope C{None} is a bare JSON array both ways; envelope C{"instances"} is
the TensorFlow Serving / KServe v1 protocol, C{{"instances": [...]}} in and
C{{"predictions": [...]}} out (an answer C{{"error": "..."}} is that
protocol's error and is reported as such).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

__all__ = ["BAD_RESPONSE", "ENVELOPES", "FAILED", "WRONG_COUNT", "BatchError", "MicroBatcher", "decodeBatch", "encodeBatch"]

ENVELOPES = (None, "instances")

#: C{send(items)}: the whole batch, one backend call; fires with the list of results.
SendBatch = Callable[[list[Any]], "Deferred[list[Any]]"]
#: C{sendOne(item)}: one item the normal way, for C{onError="single"}.
SendOne = Callable[[Any], "Deferred[Any]"]
#: C{observe(size, waited)}: each batch as it leaves, and how long its first item waited.
BatchObserver = Callable[[int, float], None]


FAILED = "failed"
WRONG_COUNT = "wrong_count"
BAD_RESPONSE = "bad_response"


class BatchError(Exception):
    """
    A batch call that gave no usable answer; C{reason} is said to each
    client.  C{kind} (C{failed}, C{wrong_count}, C{bad_response}) is the
    metric label; C{cause} is the exception the batch call failed with, if
    any, so the gateway can answer as that failure deserves (a shed batch
    is a 503 with Retry-After, a timed-out one a 504) instead of a 502.
    """

    def __init__(self, reason: str, kind: str = FAILED, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.cause = cause


def encodeBatch(items: list[Any], envelope: str | None) -> bytes:
    """The request body of one batch call."""
    body: Any = items if envelope is None else {envelope: items}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decodeBatch(body: bytes, envelope: str | None, expected: int) -> list[Any]:
    """
    The results of one batch call, in item order; raises L{BatchError} when
    the body is not JSON, not in the envelope's shape, or counts wrong.
    """
    try:
        value = json.loads(body)
    except ValueError as e:
        raise BatchError(f"batch response is not JSON: {e}", BAD_RESPONSE) from None
    if envelope is not None:
        if isinstance(value, dict) and "predictions" in value:
            value = value["predictions"]
        elif isinstance(value, dict) and "error" in value:
            raise BatchError(f"batch call failed: {value['error']}")
        else:
            raise BatchError('batch response has no "predictions" list', BAD_RESPONSE)
    if not isinstance(value, list):
        raise BatchError("batch response is not a JSON array", BAD_RESPONSE)
    if len(value) != expected:
        raise BatchError(f"batch of {expected} items answered with {len(value)} results", WRONG_COUNT)
    return value


class _Waiter:
    __slots__ = ("deferred", "item")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.deferred: Deferred[Any] | None = None


class MicroBatcher:
    """Collects items for one route's batch target; see the module docstring."""

    def __init__(self, send: SendBatch, clock: IReactorTime, *, maxSize: int = 32, maxWait: float = 0.005,
                 onError: str = "fail", sendOne: SendOne | None = None,
                 observe: BatchObserver | None = None, onFailure: Callable[[str], None] | None = None) -> None:
        if maxSize < 1:
            raise ValueError("max_size is at least 1")
        if onError not in ("fail", "single"):
            raise ValueError("on_error is fail or single")
        if onError == "single" and sendOne is None:
            raise ValueError('on_error "single" needs sendOne')
        self.send = send
        self.clock = clock
        self.maxSize = maxSize
        self.maxWait = maxWait
        self.onError = onError
        self.sendOne = sendOne
        self.observe = observe
        self.onFailure = onFailure  # onFailure(kind) per failed batch: txgateway_batch_failures_total
        self._pending: list[_Waiter] = []
        self._firstAt = 0.0
        self._timer: IDelayedCall | None = None
        self.batches = 0     # batch calls made
        self.items = 0       # items sent in them
        self.failed = 0      # batch calls that failed or counted wrong
        self.inFlight = 0    # batch calls not answered yet

    def submit(self, item: Any) -> Deferred[Any]:
        """This item's result once its batch is answered; fails with L{BatchError}."""
        w = _Waiter(item)
        d: Deferred[Any] = Deferred(lambda _: self._cancel(w))
        w.deferred = d
        pending = self._pending
        pending.append(w)
        if len(pending) >= self.maxSize:
            if len(pending) == 1:
                self._firstAt = self.clock.seconds()
            self.flush()
        elif len(pending) == 1:
            self._firstAt = self.clock.seconds()
            self._timer = self.clock.callLater(self.maxWait, self._timeUp)
        return d

    def flush(self) -> None:
        """Send what waits now (the timer or a full batch calls this; so may shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        self.batches += 1
        self.items += len(batch)
        self.inFlight += 1
        if self.observe is not None:
            self.observe(len(batch), self.clock.seconds() - self._firstAt)
        d = maybeDeferred(self.send, [w.item for w in batch])
        d.addCallbacks(self._answered, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    # -- internals

    def _timeUp(self) -> None:
        self._timer = None
        self.flush()

    def _cancel(self, w: _Waiter) -> None:
        if w in self._pending:
            self._pending.remove(w)
            if not self._pending and self._timer is not None and self._timer.active():
                self._timer.cancel()
                self._timer = None
        # Deferred.cancel errbacks with CancelledError; a result arriving later is dropped.

    def _answered(self, results: Any, batch: list[_Waiter]) -> None:
        self.inFlight -= 1
        if not isinstance(results, list):
            self._fallback(batch, BatchError("batch response is not a list", BAD_RESPONSE))
        elif len(results) != len(batch):
            self._fallback(batch, BatchError(f"batch of {len(batch)} items answered with {len(results)} results",
                                             WRONG_COUNT))
        else:
            for w, result in zip(batch, results, strict=True):
                assert w.deferred is not None
                if not w.deferred.called:
                    w.deferred.callback(result)

    def _failed(self, failure: Failure, batch: list[_Waiter]) -> None:
        self.inFlight -= 1
        error = failure.value
        if not isinstance(error, BatchError):
            error = BatchError(f"batch call failed: {failure.getErrorMessage() or type(error).__name__}", FAILED,
                               error)
        self._fallback(batch, error)

    def _fallback(self, batch: list[_Waiter], error: BatchError) -> None:
        self.failed += 1
        if self.onFailure is not None:
            self.onFailure(error.kind)
        for w in batch:
            d = w.deferred
            assert d is not None
            if d.called:
                continue
            if self.onError == "single":
                assert self.sendOne is not None
                maybeDeferred(self.sendOne, w.item).addBoth(_give, d)
            else:
                d.errback(BatchError(error.reason, error.kind, error.cause))


def _give(result: Any, d: Deferred[Any]) -> None:
    """Pass a one-by-one answer to its waiter, unless the client has gone meanwhile."""
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)
