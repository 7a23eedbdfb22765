# -*- test-case-name: tests.test_limiting -*-
"""
Local rate limiters: token bucket and sliding window, one small slotted
object per key in an LRU-ordered dict.

State is brought up to date from C{clock.seconds()} when a key is checked
(no timer per key), keys whose state has become indistinguishable from a
fresh one are dropped as the LRU end is passed, and C{max_keys} caps the
rest, so a flood of distinct client addresses costs bounded memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txgateway.interfaces import IRateLimiter

if TYPE_CHECKING:
    from txgateway.config import RateLimitConfig

__all__ = ["Decision", "LocalLimiter", "SlidingWindowLimiter", "TokenBucketLimiter", "localLimiter",
           "wholeSeconds", "windowRetryAfter"]

# Float slack: refill arithmetic in binary floating point lands a hair under
# a whole token exactly when the client was told to come back; admitting at
# 1 - EPSILON keeps Retry-After honest and over any schedule adds at most
# EPSILON of a request to the bound (the deficit is carried, not repeated).
EPSILON = 1e-9
# How many least-recently-used entries each check looks at for idle state.
COLLECT_PER_CHECK = 2
# How much earlier than its computed idle time the cold end is looked at:
# float rounding must never make collection later than an exact test.
_COLLECT_SLACK = 1e-6
# Float dust ignored when a delay is rounded up to whole seconds.
_DUST = 1e-6


def wholeSeconds(seconds: float) -> int:
    """Round a delay up to whole seconds (HTTP delta-seconds), ignoring float dust."""
    return max(0, math.ceil(seconds - _DUST))


class Decision:
    """The answer of a limiter for one request."""

    __slots__ = ("allowed", "limit", "remaining", "resetSeconds", "retryAfter")

    def __init__(self, allowed: bool, limit: int, remaining: int, resetSeconds: float, retryAfter: float) -> None:
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        # Seconds until the quota is whole again (token bucket: full; sliding
        # window: the current window ends), never less than retryAfter.
        self.resetSeconds = resetSeconds
        # Seconds until a refused request would be admitted (0 when allowed).
        self.retryAfter = retryAfter

    @property
    def retryAfterSeconds(self) -> int:
        """C{Retry-After}: whole seconds, rounded up, at least 1 for a refusal."""
        return max(1, wholeSeconds(self.retryAfter)) if not self.allowed else 0

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"RateLimit-Limit", b"%d" % self.limit),
            (b"RateLimit-Remaining", b"%d" % self.remaining),
            (b"RateLimit-Reset", b"%d" % wholeSeconds(self.resetSeconds)),
        ]

    def __repr__(self) -> str:
        return (f"<Decision allowed={self.allowed} limit={self.limit} remaining={self.remaining} "
                f"reset={self.resetSeconds:.3f} retryAfter={self.retryAfter:.3f}>")


class _Bucket:
    __slots__ = ("tokens", "last")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class _Window:
    __slots__ = ("index", "current", "previous")

    def __init__(self, index: int) -> None:
        self.index = index
        self.current = 0
        self.previous = 0


class _KeyedState:
    """
    Per-key state in least-recently-used order.

    Each check first drops up to L{COLLECT_PER_CHECK} idle entries from the
    cold end (amortised O(1), no timer), then the cap evicts the coldest
    entry when a new key would exceed C{maxKeys}.  Evicting an idle entry is
    free; evicting a busy one forgets a client's debt, which is why the cap
    should be sized above the number of keys active within a refill period.

    The cold end is only looked at from C{_collectAt} on, the time its
    entry becomes idle (a hair early, against float rounding), so the usual
    check skips collection with one comparison.  Entries behind it were
    checked later and become idle no sooner, and a hit or an eviction only
    moves a later entry to the cold end, so nothing there is idle before
    then: what is collected, and when, is the same as looking every time.
    (If the clock steps back, the cold end may be passed a little later:
    memory only, since an idle entry answers exactly as a fresh one.)
    C{lookEveryCheck=True} turns that skipping off (the plain behaviour a
    test holds the skipping to).
    """

    def __init__(self, clock: IReactorTime, maxKeys: int, lookEveryCheck: bool = False) -> None:
        self.clock = clock
        self.maxKeys = maxKeys
        self.state: OrderedDict[str, Any] = OrderedDict()
        self.evictions = 0
        self.collected = 0
        self._collectAt = -math.inf
        self._lookEveryCheck = lookEveryCheck

    def __len__(self) -> int:
        return len(self.state)

    def _idle(self, entry: Any, now: float) -> bool:
        raise NotImplementedError

    def _idleAt(self, entry: Any) -> float:
        """When C{entry} becomes idle if it is not checked again."""
        raise NotImplementedError

    def _fresh(self, now: float) -> Any:
        raise NotImplementedError

    def _collect(self, now: float) -> None:
        state = self.state
        for _ in range(COLLECT_PER_CHECK):
            if not state:
                break
            oldest = next(iter(state))
            if not self._idle(state[oldest], now):
                break
            del state[oldest]
            self.collected += 1
        # An empty table looks again at the next check (when it has an entry).
        if state and not self._lookEveryCheck:
            self._collectAt = self._idleAt(state[next(iter(state))]) - _COLLECT_SLACK
        else:
            self._collectAt = -math.inf

    def _entry(self, key: str, now: float) -> Any:
        state = self.state
        if now >= self._collectAt:
            self._collect(now)
        entry = state.get(key)
        if entry is None:
            entry = state[key] = self._fresh(now)
            if len(state) > self.maxKeys:
                state.popitem(last=False)
                self.evictions += 1
        else:
            state.move_to_end(key)
        return entry


@implementer(IRateLimiter)
class TokenBucketLimiter(_KeyedState):
    """
    C{burst} tokens per key, refilled at C{rate} per second; a request takes one.

    Over any interval of length T a key is admitted at most
    C{rate * T + burst} times.
    """

    def __init__(self, rate: float, burst: int, clock: IReactorTime, maxKeys: int = 100_000, *,
                 lookEveryCheck: bool = False) -> None:
        super().__init__(clock, maxKeys, lookEveryCheck)
        self.rate = rate
        self.burst = burst
        # A bucket untouched this long is full again, i.e. the same as a new one.
        self._fillTime = burst / rate

    def _fresh(self, now: float) -> _Bucket:
        return _Bucket(float(self.burst), now)

    def _idle(self, entry: _Bucket, now: float) -> bool:
        return now - entry.last >= self._fillTime

    def _idleAt(self, entry: _Bucket) -> float:
        return entry.last + self._fillTime

    def check(self, key: str) -> Decision:
        now = self.clock.seconds()
        b = self._entry(key, now)
        rate = self.rate
        burst = self.burst
        tokens = b.tokens
        if now > b.last:
            tokens += (now - b.last) * rate
            if tokens > burst:
                tokens = burst
            b.last = now
        if tokens >= 1 - EPSILON:
            tokens -= 1
            b.tokens = tokens
            # tokens >= -EPSILON here and int() truncates toward zero: never negative.
            return Decision(True, burst, int(tokens + EPSILON), (burst - tokens) / rate, 0.0)
        b.tokens = tokens
        retry = (1 - tokens) / rate
        return Decision(False, burst, 0, (burst - tokens) / rate, retry)


@implementer(IRateLimiter)
class SlidingWindowLimiter(_KeyedState):
    """
    At most C{limit} requests per C{per} seconds, counted in fixed windows
    with the previous window's count weighted by how much of it still
    overlaps the sliding window: two integers per key, whatever the rate.
    """

    def __init__(self, limit: int, per: float, clock: IReactorTime, maxKeys: int = 100_000, *,
                 lookEveryCheck: bool = False) -> None:
        super().__init__(clock, maxKeys, lookEveryCheck)
        self.limit = limit
        self.per = per

    def _fresh(self, now: float) -> _Window:
        return _Window(math.floor(now / self.per))

    def _idle(self, entry: _Window, now: float) -> bool:
        return math.floor(now / self.per) >= entry.index + 2

    def _idleAt(self, entry: _Window) -> float:
        return (entry.index + 2) * self.per

    def check(self, key: str) -> Decision:
        now = self.clock.seconds()
        w = self._entry(key, now)
        per = self.per
        index = math.floor(now / per)
        if index > w.index:
            w.previous = w.current if index == w.index + 1 else 0
            w.current = 0
            w.index = index
        elapsed = min(per, max(0.0, now - w.index * per))
        return _windowDecision(w, self.limit, per, elapsed)


LocalLimiter = TokenBucketLimiter | SlidingWindowLimiter


def _windowDecision(w: _Window, limit: int, per: float, elapsed: float) -> Decision:
    left = per - elapsed
    estimate = w.previous * (1 - elapsed / per) + w.current
    if estimate + 1 <= limit + EPSILON:
        w.current += 1
        estimate += 1
        return Decision(True, limit, max(0, int(limit - estimate + EPSILON)), left, 0.0)
    retry = windowRetryAfter(w.previous, w.current, limit, per, elapsed)
    return Decision(False, limit, 0, max(left, retry), retry)


def windowRetryAfter(previous: int, current: int, limit: int, per: float, elapsed: float) -> float:
    """
    Seconds until the weighted estimate leaves room for one more request,
    if nothing else arrives meanwhile.

    In the current window only the previous count's weight falls; in the
    next one the current count becomes the previous and starts to fade.
    """
    need = limit - 1  # the estimate must fall to this
    left = per - elapsed
    if current <= need and previous > 0:
        t = per * (1 - (need - current) / previous) - elapsed
        if t <= left:
            return max(0.0, t)
    if current <= need:
        return left
    return left + per * (1 - need / current)


def localLimiter(config: RateLimitConfig, clock: IReactorTime, *, lookEveryCheck: bool = False) -> LocalLimiter:
    if config.algorithm == "sliding_window":
        return SlidingWindowLimiter(config.rate.count, config.rate.per, clock, config.max_keys,
                                    lookEveryCheck=lookEveryCheck)
    return TokenBucketLimiter(config.rate.perSecond, config.burst, clock, config.max_keys,
                              lookEveryCheck=lookEveryCheck)
