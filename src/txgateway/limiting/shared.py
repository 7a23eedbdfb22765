# -*- test-case-name: tests.test_limiting -*-
"""
Shared rate limits (C{shared: true}): the local limiters' arithmetic inside
Redis, one Lua script per check, timed by Redis' own clock (see
L{_REDIS_NOW}).

When Redis is unreachable or slow the route's local limiter answers
instead: a request is never failed, or held longer than
C{stores.redis_timeout}, because of Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txgateway.interfaces import IRateLimiter
from txgateway.limiting.local import Decision, LocalLimiter
from txgateway.stores import RedisScript, StoreHealth

if TYPE_CHECKING:
    from txgateway.config import RateLimitConfig

__all__ = ["RedisRateLimiter", "SLIDING_WINDOW_SCRIPT", "TOKEN_BUCKET_SCRIPT"]

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
