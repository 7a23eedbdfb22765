# -*- test-case-name: tests.test_fleet_hub -*-
"""
The hub's rate-limit counters: the one place a local limit is counted when
several workers serve it.

Workers do not ask per request: they take small leases of tokens (see
L{txgateway.fleet.leases}) and give back what they did not use, so the
counters here see one message per lease.  The arithmetic is the local
limiters' (L{txgateway.limiting.local}) restated, because the supervisor
must not load the request path: a token bucket (C{rate}/s, C{burst}) or
a sliding window (C{count} per C{per} seconds, the previous window
weighted by its overlap).
"""

from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ["Bank", "Spec"]

# (algorithm, a, b): ("token_bucket", rate per second, burst) or
# ("sliding_window", count, per seconds), as the worker sends it.
Spec = tuple[str, float, float]

_EPSILON = 1e-9


class _Counter:
    __slots__ = ("spec", "tokens", "last", "index", "current", "previous")

    def __init__(self, spec: Spec, now: float) -> None:
        self.spec = spec
        self.tokens = spec[2]  # a full bucket
        self.last = now
        self.index = math.floor(now / spec[2]) if spec[0] == "sliding_window" else 0
        self.current = 0.0
        self.previous = 0.0


class Bank:
    """
    Counters by (route, key), least recently used first, at most C{maxKeys}
    of them: a flood of client addresses costs bounded memory in the
    supervisor, as it does in a worker.
    """

    def __init__(self, maxKeys: int = 200_000) -> None:
        self.maxKeys = maxKeys
        self.counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()

    def _counter(self, route: str, key: str, spec: Spec, now: float) -> _Counter:
        slot = (route, key)
        c = self.counters.get(slot)
        if c is None or c.spec != spec:  # new, or the route's limit changed by a reload
            c = self.counters[slot] = _Counter(spec, now)
            if len(self.counters) > self.maxKeys:
                self.counters.popitem(last=False)
        else:
            self.counters.move_to_end(slot)
        return c

    def grant(self, route: str, key: str, spec: Spec, want: int, now: float) -> tuple[int, int, float, float]:
        """
        Up to C{want} tokens for (route, key): (granted, remaining after,
        seconds until whole again, seconds until the next token when none
        was granted).
        """
        c = self._counter(route, key, spec, now)
        if spec[0] == "sliding_window":
            return _windowGrant(c, spec, want, now)
        rate, burst = spec[1], spec[2]
        if now > c.last:
            c.tokens = min(burst, c.tokens + (now - c.last) * rate)
            c.last = now
        n = max(0, min(want, int(c.tokens + _EPSILON)))
        c.tokens -= n
        retry = 0.0 if n else (1 - c.tokens) / rate
        return n, max(0, int(c.tokens + _EPSILON)), (burst - c.tokens) / rate, retry

    def giveBack(self, route: str, key: str, spec: Spec, n: int, now: float) -> None:
        """Tokens a worker leased and did not use: they count as never taken."""
        c = self.counters.get((route, key))
        if c is None or c.spec != spec or n <= 0:
            return
        if spec[0] == "sliding_window":
            if math.floor(now / spec[2]) == c.index:
                c.current = max(0.0, c.current - n)
            return
        c.tokens = min(spec[2], c.tokens + n)


def _windowGrant(c: _Counter, spec: Spec, want: int, now: float) -> tuple[int, int, float, float]:
    limit, per = spec[1], spec[2]
    index = math.floor(now / per)
    if index > c.index:
        c.previous = c.current if index == c.index + 1 else 0.0
        c.current = 0.0
        c.index = index
    elapsed = min(per, max(0.0, now - index * per))
    estimate = c.previous * (1 - elapsed / per) + c.current
    n = max(0, min(want, int(limit - estimate + _EPSILON)))
    c.current += n
    left = per - elapsed
    if n:
        return n, max(0, int(limit - estimate - n + _EPSILON)), left, 0.0
    # As the local limiter's windowRetryAfter, simplified: the earlier of
    # "the previous window's weight has faded enough" and the window's end.
    need = limit - 1
    retry = left
    if c.current <= need and c.previous > 0:
        t = per * (1 - (need - c.current) / c.previous) - elapsed
        if 0 <= t <= left:
            retry = t
    return 0, 0, max(left, retry), max(retry, 0.001)
