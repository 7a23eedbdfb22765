# -*- test-case-name: tests.test_concurrency_coalescing -*-
"""
Coalescing (single flight): identical requests in flight at once are sent once.

When fifty clients ask the same question while the first answer is still
being computed, the backend should compute it once.  L{SingleFlight.call}
runs the work for the first caller of a key and gives every caller that
arrives before it finishes the same answer; the next caller after it
finishes starts a new flight (this is not a cache: nothing is kept).

Who is the leader?  Nobody, by design.  The work runs detached from any one
caller, and every caller (the first included) gets a Deferred of its own.
Cancelling a caller's Deferred (its client went away) takes that caller
out; the work goes on for the others.  Only when every caller has gone is
the work itself cancelled (its Deferred's C{cancel()}, which closes the
upstream request), since nobody is left to want it.  So a first client
that disconnects never fails the forty-nine behind it, and a flight nobody
waits for does not keep the backend busy.

Each caller gets C{copy(result)}: L{CoalescedResponse.copy} gives a new
response with its own header list (the gateway adds per-client headers to
it) and the same immutable body bytes (copying bytes would only cost
memory: nobody can change them).  A failure reaches every caller.

L{coalescingKey} is the key: method, path, query, the values of the
configured headers (C{authorization} among them by default, so answers are
never shared across credentials) and a hash of the body; L{mayCoalesce}
says which requests may share one (GET and HEAD on a route with
C{coalesce: true}, POST only where the route also says
C{idempotent_post: true}).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from txgateway.concurrency.specs import DEFAULT_KEY_HEADERS

__all__ = ["DEFAULT_KEY_HEADERS", "CoalescedResponse", "SingleFlight", "coalescingKey", "mayCoalesce"]

T = TypeVar("T")



@dataclass(frozen=True)
class CoalescedResponse:
    """A whole upstream answer, buffered so it can be given to several clients."""

    code: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def copy(self) -> CoalescedResponse:
        return CoalescedResponse(self.code, tuple(self.headers), self.body)

    def headerList(self) -> list[tuple[bytes, bytes]]:
        """A list of its headers this caller may change."""
        return list(self.headers)


def mayCoalesce(method: bytes, coalesce: bool, idempotentPost: bool) -> bool:
    """Whether a request on a route with these settings may share a flight."""
    if not coalesce:
        return False
    return method in (b"GET", b"HEAD") or (method == b"POST" and idempotentPost)


def coalescingKey(method: bytes, path: bytes, query: bytes, headers: Iterable[tuple[bytes, bytes]],
                  keyHeaders: Sequence[bytes], body: bytes) -> bytes:
    """
    The key two requests share a flight on.  C{headers} are the request's
    (name, value) pairs in any case; C{keyHeaders} are lower-case names.  A
    header absent and a header present but empty are different keys; a
    repeated header contributes every value in order.
    """
    wanted: dict[bytes, list[bytes]] = {name: [] for name in keyHeaders}
    for name, value in headers:
        values = wanted.get(name.lower())
        if values is not None:
            values.append(value)
    h = hashlib.blake2b(digest_size=16)
    for part in (method, path, query):
        h.update(b"%d:" % len(part))
        h.update(part)
    for name in keyHeaders:
        values = wanted[name]
        h.update(b"h%d:" % len(values))
        for value in values:
            h.update(b"%d:" % len(value))
            h.update(value)
    h.update(b"b")
    h.update(hashlib.blake2b(body, digest_size=16).digest())
    return h.digest()


class _Flight(Generic[T]):
    __slots__ = ("callers", "work")

    def __init__(self) -> None:
        self.callers: list[Deferred[T]] = []
        self.work: Deferred[T] | None = None


class SingleFlight(Generic[T]):
    """One run of the work per key at a time; see the module docstring."""

    def __init__(self, copy: Callable[[T], T] | None = None) -> None:
        self._copy = copy
        self._flights: dict[Hashable, _Flight[T]] = {}
        self.flights = 0   # works started
        self.joined = 0    # callers who shared a flight someone else started

    def inFlight(self) -> int:
        return len(self._flights)

    def waiting(self, key: Hashable) -> int:
        """How many callers wait for the flight of C{key} now (0: none in flight)."""
        flight = self._flights.get(key)
        return len(flight.callers) if flight is not None else 0

    def call(self, key: Hashable, work: Callable[[], Deferred[T]]) -> Deferred[T]:
        flight = self._flights.get(key)
        if flight is not None:
            self.joined += 1
            return self._join(key, flight)
        flight = _Flight()
        self._flights[key] = flight
        self.flights += 1
        d = self._join(key, flight)
        flight.work = maybeDeferred(work)
        flight.work.addBoth(self._done, key, flight)
        return d

    def _join(self, key: Hashable, flight: _Flight[T]) -> Deferred[T]:
        d: Deferred[T] = Deferred(lambda me: self._leave(key, flight, me))
        flight.callers.append(d)
        return d

    def _leave(self, key: Hashable, flight: _Flight[T], d: Deferred[T]) -> None:
        if d in flight.callers:
            flight.callers.remove(d)
        if not flight.callers and self._flights.get(key) is flight:
            # Nobody wants the answer any more: stop the work.  _done runs
            # (with the CancelledError) and forgets the flight.
            assert flight.work is not None
            flight.work.cancel()

    def _done(self, result: Any, key: Hashable, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]  # before any caller runs: a caller that calls again starts afresh
        callers, flight.callers = flight.callers, []
        for d in callers:
            if d.called:
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(self._copy(result) if self._copy is not None else result)
        return None
