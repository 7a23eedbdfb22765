# -*- test-case-name: tests.test_caching -*-
"""
Collapsed forwarding: concurrent misses for one key wait on one backend request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed

from txgateway.deadlines import withDeadline

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.caching.policy import StoredResponse

__all__ = ["Flight"]


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
