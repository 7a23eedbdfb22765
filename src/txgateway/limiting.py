"""
Rate limiting per client key: token bucket and sliding window, local or in Redis.

Local limiters keep one small slotted object per key in an LRU-ordered dict:
state is brought up to date from C{clock.seconds()} when a key is checked
(no timer per key), keys whose state has become indistinguishable from a
fresh one are dropped as the LRU end is passed, and C{max_keys} caps the
rest, so a flood of distinct client addresses costs bounded memory.

Shared limiters (C{shared: true}) run the same arithmetic inside Redis, in
one Lua script per check, timed by Redis' own clock (see L{_REDIS_NOW}).  When
Redis is unreachable or slow they answer from the route's local limiter
instead: a request is never failed, or held longer than
C{stores.redis_timeout}, because of Redis.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from txgateway import stores
from txgateway.interfaces import IRateLimiter, IRequestFilter
from txgateway.middleware import jsonResponse
from txgateway.stores import RedisScript, StoreHealth

if TYPE_CHECKING:
    from txgateway.config import RateLimitConfig
    from txgateway.context import LocalResponse, RequestContext
    from txgateway.middleware import Deps
    from txgateway.routing import CompiledRoute

log = Logger(namespace="txgateway.limiting")

ANONYMOUS = "anonymous"
# Float slack: refill arithmetic in binary floating point lands a hair under
# a whole token exactly when the client was told to come back; admitting at
# 1 - EPSILON keeps Retry-After honest and over any schedule adds at most
# EPSILON of a request to the bound (the deficit is carried, not repeated).
EPSILON = 1e-9
# Keys longer than this (a huge API key header) are stored as a digest, so one
# client cannot make each bucket cost kilobytes.
MAX_KEY_LENGTH = 128
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
    """

    def __init__(self, clock: IReactorTime, maxKeys: int) -> None:
        self.clock = clock
        self.maxKeys = maxKeys
        self.state: OrderedDict[str, Any] = OrderedDict()
        self.evictions = 0
        self.collected = 0
        self._collectAt = -math.inf

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
        self._collectAt = self._idleAt(state[next(iter(state))]) - _COLLECT_SLACK if state else -math.inf

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

    def __init__(self, rate: float, burst: int, clock: IReactorTime, maxKeys: int = 100_000) -> None:
        super().__init__(clock, maxKeys)
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

    def __init__(self, limit: int, per: float, clock: IReactorTime, maxKeys: int = 100_000) -> None:
        super().__init__(clock, maxKeys)
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


# -- shared, in Redis

# Why Redis' clock and not the gateway's: every replica then agrees on when a
# window starts and how much a bucket has refilled.  With each gateway passing
# its own time, replicas whose clocks differ by a few ms would disagree on the
# current window index and fight over rolling it, and a fast clock would
# refill the shared bucket early for everyone.  Calling TIME in a script that
# writes is fine since Redis 5 (scripts replicate their effects); the
# replicate_commands() call makes Redis 3.2/4 accept it too.
_REDIS_NOW = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

TOKEN_BUCKET_SCRIPT = RedisScript(_REDIS_NOW + """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
elseif now > last then
  tokens = math.min(burst, tokens + (now - last) * rate)
  last = now
end
local allowed = 0
local retry = 0
if tokens >= 1 - 1e-9 then
  allowed = 1
  tokens = tokens - 1
else
  retry = (1 - tokens) / rate
end
local full = (burst - tokens) / rate
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'last', string.format('%.17g', last))
redis.call('PEXPIRE', KEYS[1], math.ceil(full * 1000) + 1000)
local remaining = 0
if allowed == 1 then remaining = math.max(0, math.floor(tokens + 1e-9)) end
return {allowed, remaining, math.ceil(retry * 1000 - 1e-6), math.ceil(full * 1000 - 1e-6)}
""")

SLIDING_WINDOW_SCRIPT = RedisScript(_REDIS_NOW + """
local limit = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local index = math.floor(now / per)
local state = redis.call('HMGET', KEYS[1], 'index', 'current', 'previous')
local w = tonumber(state[1])
local current = tonumber(state[2]) or 0
local previous = tonumber(state[3]) or 0
if w == nil then
  w = index
  current = 0
  previous = 0
elseif index > w then
  if index == w + 1 then previous = current else previous = 0 end
  current = 0
  w = index
end
local elapsed = math.max(0, math.min(per, now - w * per))
local left = per - elapsed
local estimate = previous * (1 - elapsed / per) + current
local allowed = 0
local retry = 0
local remaining = 0
if estimate + 1 <= limit + 1e-9 then
  allowed = 1
  current = current + 1
  estimate = estimate + 1
  remaining = math.max(0, math.floor(limit - estimate + 1e-9))
else
  local need = limit - 1
  retry = -1
  if current <= need and previous > 0 then
    local t = per * (1 - (need - current) / previous) - elapsed
    if t <= left then retry = math.max(0, t) end
  end
  if retry < 0 then
    if current <= need then retry = left else retry = left + per * (1 - need / current) end
  end
end
redis.call('HSET', KEYS[1], 'index', string.format('%d', w), 'current', current, 'previous', previous)
redis.call('PEXPIRE', KEYS[1], math.ceil(((w + 2) * per - now) * 1000) + 1000)
return {allowed, remaining, math.ceil(retry * 1000 - 1e-6), math.ceil(math.max(left, retry) * 1000 - 1e-6)}
""")


@implementer(IRateLimiter)
class RedisRateLimiter:
    """
    One limit shared by every replica, kept in Redis; the route's local
    limiter answers whenever Redis cannot (see L{StoreHealth}).
    """

    def __init__(self, pool: Any, config: RateLimitConfig, prefix: str, local: LocalLimiter,
                 clock: IReactorTime, timeout: float, health: StoreHealth) -> None:
        self.pool = pool
        self.prefix = prefix
        self.local = local
        self.clock = clock
        self.timeout = timeout
        self.health = health
        if config.algorithm == "sliding_window":
            self.script = SLIDING_WINDOW_SCRIPT
            self.limit = config.rate.count
            self.args = [str(config.rate.count), repr(float(config.rate.per))]
        else:
            self.script = TOKEN_BUCKET_SCRIPT
            self.limit = config.burst
            self.args = [repr(config.rate.perSecond), str(config.burst)]

    def check(self, key: str) -> Deferred[Decision] | Decision:
        health = self.health
        if not health.shouldTry(self.pool):
            health.fellBack()
            return self.local.check(key)
        d = self.script.run(self.pool, [self.prefix + key], self.args, self.clock, self.timeout)
        d.addCallback(self._decided)
        d.addErrback(self._fallBack, key)
        return d

    def _decided(self, reply: Any) -> Decision:
        allowed, remaining, retryMs, resetMs = (int(x) for x in reply)
        self.health.succeeded()
        return Decision(bool(allowed), self.limit, remaining, resetMs / 1000, retryMs / 1000)

    def _fallBack(self, failure: Any, key: str) -> Decision | Any:
        if failure.check(CancelledError):
            # The client went away and the request was cancelled: says
            # nothing about Redis.  (Our own timeout arrives as TimeoutError.)
            self.health.abandoned()
            return failure
        reason = failure.value
        if isinstance(reason, DeferredTimeout):
            reason = f"no answer within {self.timeout:g}s"
        self.health.failed(reason)
        self.health.fellBack()
        return self.local.check(key)


# -- keys and the chain filter


def keyFunction(parts: tuple[str, ...], routeName: str) -> Callable[[RequestContext], str]:
    """What C{rate_limit.key} means, compiled once per route."""
    if parts == ("client_ip",):
        return _clientIPKey  # the default key, read without the generic wrapping below
    getters: list[Callable[[RequestContext], str]] = []
    for part in parts:
        if part == "client_ip":
            getters.append(_clientIP)
        elif part == "route":
            getters.append(_constant(routeName))
        elif part == "consumer":
            getters.append(_consumer)
        elif part.startswith("header:"):
            getters.append(_headerGetter(part[len("header:"):].lower().encode("ascii")))
        else:
            raise ValueError(f"unknown rate_limit key part {part!r}")
    if len(getters) == 1:
        only = getters[0]
        return lambda context: _bounded(only(context))
    # Header values never contain a newline, so joined keys cannot collide.
    return lambda context: _bounded("\n".join([g(context) for g in getters]))


def _clientIP(context: RequestContext) -> str:
    return context.clientIP


def _clientIPKey(context: RequestContext) -> str:
    key = context.clientIP
    return key if len(key) <= MAX_KEY_LENGTH else _bounded(key)


def _constant(value: str) -> Callable[[RequestContext], str]:
    def get(context: RequestContext) -> str:
        return value

    return get


def _consumer(context: RequestContext) -> str:
    return context.identity or ANONYMOUS


def _headerGetter(name: bytes) -> Callable[[RequestContext], str]:
    def get(context: RequestContext) -> str:
        value = context.header(name)
        return value.decode("latin-1") if value else ANONYMOUS

    return get


def _bounded(key: str) -> str:
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "\x00" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@implementer(IRequestFilter)
class RateLimitFilter:
    """Adds the RateLimit-* headers to every response of the route, answers 429 when over."""

    __slots__ = ("limiter", "keyOf", "rateLimited")

    def __init__(self, limiter: IRateLimiter, keyOf: Callable[[RequestContext], str], rateLimited: Any) -> None:
        self.limiter = limiter
        self.keyOf = keyOf
        self.rateLimited = rateLimited

    def filterRequest(self, context: RequestContext) -> Deferred[LocalResponse | None] | LocalResponse | None:
        decision = self.limiter.check(self.keyOf(context))
        if isinstance(decision, Deferred):
            return decision.addCallback(self._apply, context).addErrback(self._broken, context)
        return self._apply(decision, context)

    def _apply(self, decision: Decision, context: RequestContext) -> LocalResponse | None:
        context.responseHeaders += decision.headers()
        if decision.allowed:
            return None
        self.rateLimited.inc()
        retry = decision.retryAfterSeconds
        return jsonResponse(context, 429, "too many requests", [(b"Retry-After", b"%d" % retry)],
                            retry_after=retry)

    def _broken(self, failure: Any, context: RequestContext) -> Any:
        if failure.check(CancelledError):
            return failure  # the request was cancelled (client gone): not a limiter problem
        # Limiters never fail by contract; if one does anyway, a limiter bug
        # must not take the route down with it.
        log.failure("rate limiter failed; request let through", failure)
        return None


def localLimiter(config: RateLimitConfig, clock: IReactorTime) -> LocalLimiter:
    if config.algorithm == "sliding_window":
        return SlidingWindowLimiter(config.rate.count, config.rate.per, clock, config.max_keys)
    return TokenBucketLimiter(config.rate.perSecond, config.burst, clock, config.max_keys)


_SHARED_PREFIX = "rate_limit:"
_HEALTH_KEY = "stores.redis.rate_limit"


def rateLimitFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's rate limiter as a chain filter, or None when it has no C{rate_limit:}."""
    config = route.config.rate_limit
    if config is None:
        return None
    limiter = _limiterFor(route.name, config, deps)
    return RateLimitFilter(limiter, keyFunction(config.key, route.name), deps.metrics.rateLimited.labels(route.name))


def _limiterFor(name: str, config: RateLimitConfig, deps: Deps) -> IRateLimiter:
    """
    The route's limiter, kept in C{deps.shared} so that a reload leaves the
    counters of an unchanged C{rate_limit:} alone (a reload must not hand
    every client a fresh burst); a changed one starts over.
    """
    live = {r.name for r in deps.config.routes if r.rate_limit is not None}
    for slot in [k for k in deps.shared if k.startswith(_SHARED_PREFIX)]:
        if slot[len(_SHARED_PREFIX):] not in live:
            del deps.shared[slot]  # the route, or its limit, is gone: free its keys
    pool = deps.redis if config.shared else None
    timeout = deps.config.stores.redis_timeout
    slot = _SHARED_PREFIX + name
    kept = deps.shared.get(slot)
    if kept is not None and kept[0] == config and kept[1] == timeout and kept[2] is pool:
        return kept[3]  # type: ignore[no-any-return]
    local = localLimiter(config, deps.clock)
    limiter: IRateLimiter = local
    if config.shared:
        if pool is None:
            log.warn("route {route}: shared rate limit without a Redis connection (stores.redis added by a "
                     "reload? restart to connect): limiting locally", route=name)
        else:
            health = deps.shared.get(_HEALTH_KEY)
            if health is None:
                # The pool's first connection is given as long as a connect may take.
                health = deps.shared[_HEALTH_KEY] = StoreHealth(deps.clock, deps.metrics, "redis", "rate_limit",
                                                                startGrace=stores.connectTimeout(deps.config.stores))
            prefix = f"txgw:rl:{config.algorithm}:{name}:"
            limiter = RedisRateLimiter(pool, config, prefix, local, deps.clock, timeout, health)
    deps.shared[slot] = (config, timeout, pool, limiter)
    return limiter
