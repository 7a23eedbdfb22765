# -*- test-case-name: tests.test_caching -*-
"""
Collapsed forwarding: concurrent misses for one key wait on one backend request,
except for keys recently found uncacheable.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed

from txgateway.deadlines import withDeadline

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.caching.policy import StoredResponse

__all__ = ["Flight", "UncacheableMarks"]


class Flight:
    """
    One backend request that concurrent misses for the same key wait on.
    Released exactly once: with the stored response when there is one,
    with None as soon as it is known there will not be one.
    """

    __slots__ = ("waiters", "released", "result")

    def __init__(self) -> None:
        self.waiters: list[Deferred[StoredResponse | None]] = []
        self.released = False
        self.result: StoredResponse | None = None

    def wait(self, timeout: float, clock: IReactorTime) -> Deferred[StoredResponse | None]:
        if self.released:  # the leader already knows; its body may still be streaming
            return succeed(self.result)
        def cancel(d: Deferred[Any]) -> None:
            if d in self.waiters:
                self.waiters.remove(d)

        d: Deferred[StoredResponse | None] = Deferred(cancel)
        self.waiters.append(d)
        return withDeadline(d, timeout, clock)

    def release(self, entry: StoredResponse | None) -> None:
        if self.released:
            return
        self.released = True
        self.result = entry
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if not d.called:
                d.callback(entry)


class UncacheableMarks:
    """
    Keys whose last response could not be stored ("hit-for-miss" marks):
    their misses are not collapsed for C{seconds}.  Without them every burst
    for an uncacheable URL would wait for one request before all go anyway.
    At most C{limit} keys are kept, the oldest mark dropped first.
    """

    __slots__ = ("clock", "seconds", "limit", "_until")

    def __init__(self, clock: IReactorTime, seconds: float, limit: int) -> None:
        self.clock = clock
        self.seconds = seconds
        self.limit = limit
        self._until: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self.clock.seconds():
            del self._until[key]
            return False
        return True

    def mark(self, key: bytes) -> None:
        self._until.pop(key, None)
        self._until[key] = self.clock.seconds() + self.seconds
        while len(self._until) > self.limit:
            self._until.popitem(last=False)

    def clear(self, key: bytes) -> None:
        self._until.pop(key, None)
