"""
Rate limiting: local token bucket and sliding window driven by a Clock, the
chain filter, reload behaviour, and the Redis-backed limiter against a real
redis-server (tests/redisserver.py), including Redis dying, hanging and
coming back.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from tests.redisserver import RedisServer, spin, waitUntil
from txgateway import limiting, stores
from txgateway.config import GatewayConfig, RateLimitConfig, StoresConfig, parseConfig, rate
from txgateway.context import LocalResponse, RequestContext
from txgateway.interfaces import IRateLimiter, IRequestFilter
from txgateway.limiting import (
    Decision,
    RateLimitFilter,
    RedisRateLimiter,
    SlidingWindowLimiter,
    TokenBucketLimiter,
    keyFunction,
    rateLimitFilter,
)
from txgateway.middleware import Deps
from txgateway.observe import Metrics
from txgateway.routing import CompiledRoute
from txgateway.stores import StoreHealth


class _FakeRequest:
    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.requestHeaders = Headers()
        for k, v in (headers or {}).items():
            self.requestHeaders.addRawHeader(k.encode(), v.encode())


def makeContext(ip: str = "192.0.2.1", headers: dict[str, str] | None = None,
                identity: str | None = None) -> RequestContext:
    c = RequestContext(_FakeRequest(headers), 0.0, "req-1", ip, ip, b"GET", "example.com", "/x", None)  # type: ignore[arg-type]
    c.identity = identity
    return c


def gatewayConfig(rateLimit: str, redis: str | None = None, routeName: str = "api") -> GatewayConfig:
    stores_ = f"stores: {{redis: \"{redis}\", redis_timeout: 250ms}}\n" if redis else ""
    return parseConfig(f"""\
{stores_}upstreams:
  app:
    targets: [http://127.0.0.1:9]
routes:
  - name: {routeName}
    match: {{path_prefix: /}}
    upstream: app
    rate_limit: {rateLimit}
""")


def makeDeps(config: GatewayConfig, clock: Clock, redis: Any = None, shared: dict[str, Any] | None = None,
             metrics: Metrics | None = None) -> Deps:
    return Deps(clock=clock, reactor=clock, metrics=metrics or Metrics(processMetrics=False), config=config,
                rng=random.Random(1), redis=redis, shared=shared if shared is not None else {})


def limitConfig(algorithm: str = "token_bucket", rateText: str = "2/s", burst: int = 3,
                maxKeys: int = 100_000) -> RateLimitConfig:
    return RateLimitConfig(algorithm, rate(rateText), burst, ("client_ip",), False, maxKeys)


def counterValue(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


class TokenBucketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.limiter = TokenBucketLimiter(2.0, 3, self.clock)

    def test_implementsIRateLimiter(self) -> None:
        """The token bucket provides IRateLimiter."""
        self.assertTrue(verifyObject(IRateLimiter, self.limiter))

    def test_startsFullThenRefuses(self) -> None:
        """A new key gets the whole burst, then is refused with the exact wait for one token."""
        decisions = [self.limiter.check("k") for _ in range(4)]
        self.assertEqual([d.allowed for d in decisions], [True, True, True, False])
        self.assertEqual([d.remaining for d in decisions], [2, 1, 0, 0])
        self.assertAlmostEqual(decisions[3].retryAfter, 0.5)
        self.assertEqual(decisions[3].retryAfterSeconds, 1)
        self.assertEqual(decisions[3].limit, 3)

    def test_refillsLazilyAtTheRate(self) -> None:
        """Tokens come back at rate per second from the clock, and only when checked."""
        for _ in range(3):
            self.limiter.check("k")
        self.clock.advance(0.49)
        self.assertFalse(self.limiter.check("k").allowed)
        self.clock.advance(0.01)
        d = self.limiter.check("k")
        self.assertTrue(d.allowed)
        self.assertEqual(d.remaining, 0)
        self.clock.advance(0.25)
        refused = self.limiter.check("k")
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retryAfter, 0.25)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_neverRefillsBeyondBurst(self) -> None:
        """However long a key is idle, it gets at most burst requests at once."""
        self.limiter.check("k")
        self.clock.advance(3600)
        self.assertEqual([self.limiter.check("k").allowed for _ in range(4)], [True, True, True, False])

    def test_resetIsTimeUntilFull(self) -> None:
        """RateLimit-Reset tells when the bucket is full again, rounded up."""
        self.limiter.check("k")
        d = self.limiter.check("k")
        self.assertAlmostEqual(d.resetSeconds, 1.0)
        self.assertIn((b"RateLimit-Reset", b"1"), d.headers())
        self.assertIn((b"RateLimit-Remaining", b"1"), d.headers())
        self.assertIn((b"RateLimit-Limit", b"3"), d.headers())

    def test_keysAreIndependent(self) -> None:
        """One client's exhausted bucket does not touch another's."""
        for _ in range(3):
            self.limiter.check("a")
        self.assertFalse(self.limiter.check("a").allowed)
        self.assertTrue(self.limiter.check("b").allowed)

    def test_clockGoingBackwardsGivesNoTokens(self) -> None:
        """A clock stepping back (NTP) neither refills nor breaks the bucket."""
        limiter = TokenBucketLimiter(1.0, 1, _SettableClock(100.0))
        self.assertTrue(limiter.check("k").allowed)
        limiter.clock.now = 50.0  # type: ignore[attr-defined]
        self.assertFalse(limiter.check("k").allowed)
        limiter.clock.now = 101.0  # type: ignore[attr-defined]
        self.assertTrue(limiter.check("k").allowed)


class _SettableClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


class SlidingWindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)  # a window boundary for per=10
        self.limiter = SlidingWindowLimiter(10, 10.0, self.clock)

    def test_implementsIRateLimiter(self) -> None:
        """The sliding window provides IRateLimiter."""
        self.assertTrue(verifyObject(IRateLimiter, self.limiter))

    def test_limitWithinOneWindow(self) -> None:
        """limit requests pass in a window, the next is refused."""
        results = [self.limiter.check("k") for _ in range(11)]
        self.assertEqual(sum(d.allowed for d in results), 10)
        self.assertEqual(results[9].remaining, 0)
        self.assertEqual(results[0].remaining, 9)
        self.assertFalse(results[10].allowed)

    def test_previousWindowWeighsByOverlap(self) -> None:
        """In the next window the previous count counts for the share of it still inside the sliding window."""
        for _ in range(10):
            self.limiter.check("k")
        refused = self.limiter.check("k")
        # current=10 > 9: wait for the next window (10s) and then for 10 * 0.1 to fade (1s).
        self.assertAlmostEqual(refused.retryAfter, 11.0)
        self.assertEqual(refused.retryAfterSeconds, 11)
        self.clock.advance(10.99)
        self.assertFalse(self.limiter.check("k").allowed)
        self.clock.advance(0.01)
        d = self.limiter.check("k")
        self.assertTrue(d.allowed)  # estimate 10 * 0.9 = 9, plus this one = 10
        self.assertEqual(d.remaining, 0)

    def test_retryWithinTheWindow(self) -> None:
        """Refused early in a window, the wait is for the previous count to fade enough."""
        for _ in range(10):
            self.limiter.check("k")
        self.clock.advance(10)  # next window starts: previous=10, estimate 10
        refused = self.limiter.check("k")
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retryAfter, 1.0)
        self.clock.advance(1.0)
        self.assertTrue(self.limiter.check("k").allowed)

    def test_countsFadeAfterTwoWindows(self) -> None:
        """After two whole windows a key starts over."""
        for _ in range(10):
            self.limiter.check("k")
        self.clock.advance(20)
        self.assertEqual(sum(self.limiter.check("k").allowed for _ in range(11)), 10)

    def test_constantMemoryPerKey(self) -> None:
        """A key's state is two counters and a window index, however many requests it made."""
        for _ in range(1000):
            self.limiter.check("k")
        entry = self.limiter.state["k"]
        self.assertEqual(type(entry).__slots__, ("index", "current", "previous"))
        self.assertFalse(hasattr(entry, "__dict__"))


def _admittedWithinBound(times: list[float], admitted: list[bool], ratePerSecond: float, burst: float) -> bool:
    ok = [t for t, a in zip(times, admitted, strict=True) if a]
    for i in range(len(ok)):
        for j in range(i, len(ok)):
            if j - i + 1 > ratePerSecond * (ok[j] - ok[i]) + burst + 1e-6:
                return False
    return True


schedules = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=60)


class BoundTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(schedules, st.integers(1, 20), st.integers(1, 10), st.sampled_from([1.0, 2.0, 60.0]))
    def test_tokenBucketNeverAdmitsMoreThanRateTimesTimePlusBurst(
            self, gaps: list[float], count: int, burst: int, per: float) -> None:
        """Over any schedule and any interval in it, admitted <= rate * time + burst."""
        clock = Clock()
        clock.advance(12345.678)
        limiter = TokenBucketLimiter(count / per, burst, clock)
        times, admitted = [], []
        for gap in gaps:
            clock.advance(gap)
            times.append(clock.seconds())
            admitted.append(limiter.check("k").allowed)
        self.assertTrue(_admittedWithinBound(times, admitted, count / per, burst))

    @settings(max_examples=150, deadline=None)
    @given(schedules, st.integers(1, 20), st.sampled_from([1.0, 2.0, 10.0]))
    def test_slidingWindowNeverAdmitsMoreThanRateTimesTimePlusLimit(
            self, gaps: list[float], count: int, per: float) -> None:
        """Over any schedule and any interval in it, admitted <= rate * time + the window's limit."""
        clock = Clock()
        clock.advance(777.25)
        limiter = SlidingWindowLimiter(count, per, clock)
        times, admitted = [], []
        for gap in gaps:
            clock.advance(gap)
            times.append(clock.seconds())
            admitted.append(limiter.check("k").allowed)
        self.assertTrue(_admittedWithinBound(times, admitted, count / per, count))

    @settings(max_examples=100, deadline=None)
    @given(schedules, st.integers(1, 20), st.integers(1, 10), st.sampled_from(["token_bucket", "sliding_window"]))
    def test_retryAfterIsAccurate(self, gaps: list[float], count: int, burst: int, algorithm: str) -> None:
        """A refused client that waits exactly retryAfter is admitted, and one that waits 1ms less is not."""
        for gap in gaps:
            clock = Clock()
            clock.advance(500.5)
            limiter = limiting.localLimiter(limitConfig(algorithm, f"{count}/s", burst), clock)
            clock.advance(gap)
            d = limiter.check("k")
            while d.allowed:
                d = limiter.check("k")
            if d.retryAfter > 0.001:
                clock.advance(d.retryAfter - 0.001)
                self.assertFalse(limiter.check("k").allowed)
                clock.advance(0.001)
            else:
                clock.advance(d.retryAfter)
            self.assertTrue(limiter.check("k").allowed)

    @settings(max_examples=100, deadline=None)
    @given(st.integers(1, 20), st.integers(1, 10), st.floats(0.0, 5.0))
    def test_remainingIsNeverNegative(self, count: int, burst: int, start: float) -> None:
        """Admitted just as the token comes back (a hair under whole), a bucket reports 0 remaining, not -1."""
        clock = Clock()
        clock.advance(500.5 + start)
        limiter = TokenBucketLimiter(float(count), burst, clock)
        d = limiter.check("k")
        while d.allowed:
            self.assertGreaterEqual(d.remaining, 0)
            d = limiter.check("k")
        clock.advance(d.retryAfter)
        d = limiter.check("k")
        self.assertTrue(d.allowed)
        self.assertEqual(d.remaining, 0)


class MemoryTests(SynchronousTestCase):
    def test_lruCapEvictsLeastRecentlyUsed(self) -> None:
        """Past max_keys, the least recently used key is forgotten."""
        clock = Clock()
        limiter = TokenBucketLimiter(1.0, 1, clock, maxKeys=3)
        for key in ("a", "b", "c"):
            limiter.check(key)
        limiter.check("a")  # a is now the most recent
        limiter.check("d")
        self.assertEqual(list(limiter.state), ["c", "a", "d"])
        self.assertEqual(limiter.evictions, 1)
        self.assertTrue(limiter.check("b").allowed)  # b was forgotten: a fresh bucket

    def test_millionsOfKeysStayBounded(self) -> None:
        """A flood of distinct keys never holds more than max_keys entries."""
        clock = Clock()
        limiter = SlidingWindowLimiter(5, 1.0, clock, maxKeys=1000)
        for i in range(20_000):
            limiter.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        self.assertEqual(len(limiter), 1000)

    def test_idleBucketsAreCollectedLazily(self) -> None:
        """A bucket that has refilled completely is dropped when a later check passes it, without a timer."""
        clock = Clock()
        limiter = TokenBucketLimiter(1.0, 2, clock)
        limiter.check("a")
        limiter.check("b")
        clock.advance(1.5)
        limiter.check("c")
        self.assertEqual(set(limiter.state), {"a", "b", "c"})  # a, b not yet full
        clock.advance(0.5)
        limiter.check("c")
        self.assertEqual(set(limiter.state), {"c"})
        self.assertEqual(limiter.collected, 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idleWindowsAreCollected(self) -> None:
        """A window key untouched for two windows is dropped as later keys are checked."""
        clock = Clock()
        limiter = SlidingWindowLimiter(5, 1.0, clock)
        limiter.check("old")
        clock.advance(2.0)
        limiter.check("new")
        self.assertEqual(list(limiter.state), ["new"])


class CollectionScheduleTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([0.0, 0.001, 0.1, 0.5, 1.0, 1.999, 2.0, 3.0]), st.integers(0, 6)),
                    max_size=60),
           st.sampled_from(["token_bucket", "sliding_window"]), st.integers(2, 5))
    def test_collectionSkippedOnlyWhenNothingIsIdle(self, steps: list[tuple[float, int]], algorithm: str,
                                                     maxKeys: int) -> None:
        """Looking at the cold end only from its idle time on collects, evicts and answers exactly as looking at every check."""
        clock = Clock()
        clock.advance(1000.25)
        config = limitConfig(algorithm, "1/s", 2)
        fast = limiting.localLimiter(config, clock)
        slow = limiting.localLimiter(config, clock, lookEveryCheck=True)
        fast.maxKeys = slow.maxKeys = maxKeys
        for gap, k in steps:
            clock.advance(gap)
            a, b = fast.check(f"k{k}"), slow.check(f"k{k}")
            self.assertEqual((a.allowed, a.remaining, a.resetSeconds, a.retryAfter),
                             (b.allowed, b.remaining, b.resetSeconds, b.retryAfter))
            self.assertEqual(list(fast.state), list(slow.state))
            self.assertEqual((fast.collected, fast.evictions), (slow.collected, slow.evictions))


class KeyTests(SynchronousTestCase):
    def test_clientIP(self) -> None:
        """client_ip keys on the resolved client address."""
        self.assertEqual(keyFunction(("client_ip",), "r")(makeContext("198.51.100.7")), "198.51.100.7")

    def test_clientIPKeyIsBoundedLikeOtherKeys(self) -> None:
        """An over-long client_ip key is digested exactly as a header key with the same text would be."""
        ip = "x" * 200
        header = keyFunction(("header:X-Client",), "r")(makeContext(headers={"X-Client": ip}))
        self.assertEqual(keyFunction(("client_ip",), "r")(makeContext(ip)), header)
        self.assertLessEqual(len(header), 40)

    def test_headerMissingIsAnonymous(self) -> None:
        """Requests without the key's header share one anonymous bucket."""
        f = keyFunction(("header:X-API-Key",), "r")
        self.assertEqual(f(makeContext(headers={"X-Api-Key": "abc"})), "abc")
        self.assertEqual(f(makeContext()), "anonymous")

    def test_consumer(self) -> None:
        """consumer keys on the identity auth set, anonymous without one."""
        f = keyFunction(("consumer",), "r")
        self.assertEqual(f(makeContext(identity="alice")), "alice")
        self.assertEqual(f(makeContext()), "anonymous")

    def test_routeIsOneKey(self) -> None:
        """route makes every client share the route's one bucket."""
        f = keyFunction(("route",), "batch")
        self.assertEqual(f(makeContext("1.1.1.1")), f(makeContext("2.2.2.2")))

    def test_combined(self) -> None:
        """Several parts make one key per combination."""
        f = keyFunction(("client_ip", "header:X-Tenant"), "r")
        a = f(makeContext("1.1.1.1", {"X-Tenant": "t"}))
        self.assertNotEqual(a, f(makeContext("1.1.1.2", {"X-Tenant": "t"})))
        self.assertNotEqual(a, f(makeContext("1.1.1.1", {"X-Tenant": "u"})))
        self.assertEqual(a, f(makeContext("1.1.1.1", {"X-Tenant": "t"})))

    def test_longKeysAreDigested(self) -> None:
        """A huge header value costs a fixed-size key."""
        f = keyFunction(("header:X-API-Key",), "r")
        k1 = f(makeContext(headers={"X-API-Key": "a" * 10_000}))
        k2 = f(makeContext(headers={"X-API-Key": "a" * 9_999 + "b"}))
        self.assertLessEqual(len(k1), 40)
        self.assertNotEqual(k1, k2)


class FilterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.config = gatewayConfig("{algorithm: token_bucket, rate: 1/s, burst: 2, key: client_ip}")
        self.deps = makeDeps(self.config, self.clock)
        self.route = CompiledRoute(self.config.routes[0])
        f = rateLimitFilter(self.route, self.deps)
        assert f is not None
        self.filter = f

    def test_implementsIRequestFilter(self) -> None:
        """The rate limit filter provides IRequestFilter."""
        self.assertTrue(verifyObject(IRequestFilter, self.filter))

    def test_noRateLimitNoFilter(self) -> None:
        """A route without rate_limit gets no filter."""
        config = parseConfig("upstreams: {app: {targets: [http://127.0.0.1:9]}}\n"
                             "routes: [{name: r, match: {path_prefix: /}, upstream: app}]\n")
        self.assertIsNone(rateLimitFilter(CompiledRoute(config.routes[0]), makeDeps(config, self.clock)))

    def test_allowedRequestsCarryHeaders(self) -> None:
        """An admitted request continues, with RateLimit-* headers for its response."""
        context = makeContext()
        self.assertIsNone(self.filter.filterRequest(context))
        self.assertEqual(context.responseHeaders, [(b"RateLimit-Limit", b"2"), (b"RateLimit-Remaining", b"1"),
                                                   (b"RateLimit-Reset", b"1")])

    def test_headersAreTheDecisionsHeaders(self) -> None:
        """The filter adds exactly Decision.headers(), whatever limit each decision carries."""
        decisions = [Decision(True, 5, 4, 0.2, 0.0), Decision(True, 5, 3, 0.0000001, 0.0),
                     Decision(False, 7, 0, 2.5, 1.5), Decision(True, 5, 0, 1.0, 0.0)]
        limiter = _Scripted(decisions)
        f = RateLimitFilter(limiter, lambda context: "k", _Counter())
        for d in decisions:
            context = makeContext()
            f.filterRequest(context)
            self.assertEqual(context.responseHeaders, d.headers())

    def test_overTheLimitIs429(self) -> None:
        """Over the limit: 429 JSON with Retry-After, the RateLimit-* headers, and the metric."""
        self.filter.filterRequest(makeContext())
        self.filter.filterRequest(makeContext())
        self.clock.advance(0.2)
        context = makeContext()
        response = self.filter.filterRequest(context)
        assert isinstance(response, LocalResponse)
        self.assertEqual(response.code, 429)
        self.assertIn((b"Retry-After", b"1"), response.headers)
        self.assertIn((b"Content-Type", b"application/json"), response.headers)
        body = json.loads(response.body)
        self.assertEqual(body["status"], 429)
        self.assertEqual(body["retry_after"], 1)
        self.assertEqual(dict(context.responseHeaders)[b"RateLimit-Remaining"], b"0")
        self.assertEqual(counterValue(self.deps.metrics, "txgateway_rate_limited_total", {"route": "api"}), 1)

    def test_retryAfterRoundsUp(self) -> None:
        """Retry-After is the wait rounded up to whole seconds."""
        config = gatewayConfig("{algorithm: token_bucket, rate: 1/m, burst: 1}")
        f = rateLimitFilter(CompiledRoute(config.routes[0]), makeDeps(config, self.clock))
        assert f is not None
        f.filterRequest(makeContext())
        self.clock.advance(30.5)
        response = f.filterRequest(makeContext())
        assert isinstance(response, LocalResponse)
        self.assertIn((b"Retry-After", b"30"), response.headers)

    def test_stateSurvivesReloadWithSameConfig(self) -> None:
        """A reload with the same rate_limit keeps the counters: no fresh burst for everyone."""
        self.filter.filterRequest(makeContext())
        self.filter.filterRequest(makeContext())
        reloaded = rateLimitFilter(CompiledRoute(self.config.routes[0]),
                                   makeDeps(self.config, self.clock, shared=self.deps.shared))
        assert reloaded is not None
        self.assertIsInstance(reloaded.filterRequest(makeContext()), LocalResponse)

    def test_changedConfigStartsOver(self) -> None:
        """A changed rate_limit starts with fresh state; a removed one frees its keys."""
        self.filter.filterRequest(makeContext())
        self.filter.filterRequest(makeContext())
        config = gatewayConfig("{algorithm: token_bucket, rate: 1/s, burst: 3, key: client_ip}")
        f = rateLimitFilter(CompiledRoute(config.routes[0]), makeDeps(config, self.clock, shared=self.deps.shared))
        assert f is not None
        self.assertIsNone(f.filterRequest(makeContext()))
        other = gatewayConfig("{rate: 1/s}", routeName="other")
        rateLimitFilter(CompiledRoute(other.routes[0]), makeDeps(other, self.clock, shared=self.deps.shared))
        self.assertNotIn("rate_limit:api", self.deps.shared)

    def test_sharedWithoutPoolLimitsLocally(self) -> None:
        """shared: true with no Redis pool (added by a reload) still limits, locally."""
        config = gatewayConfig("{rate: 1/m, burst: 1, shared: true}", redis="redis://127.0.0.1:1/0")
        f = rateLimitFilter(CompiledRoute(config.routes[0]), makeDeps(config, self.clock, redis=None))
        assert f is not None
        self.assertIsNone(f.filterRequest(makeContext()))
        self.assertIsInstance(f.filterRequest(makeContext()), LocalResponse)

    def test_brokenLimiterLetsRequestsThrough(self) -> None:
        """A limiter that fails against its contract does not fail the request."""
        f = RateLimitFilter(_FailingLimiter(), lambda c: "k", Metrics(processMetrics=False).rateLimited.labels("r"))
        self.assertIsNone(self.successResultOf(f.filterRequest(makeContext())))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Scripted:
    """A limiter answering the given decisions in turn."""

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = list(decisions)

    def check(self, key: str) -> Decision:
        return self.decisions.pop(0)


class _Counter:
    def inc(self) -> None:
        pass


class _FailingLimiter:
    def check(self, key: str) -> Deferred[Any]:
        return fail(RuntimeError("bug"))


class _FakePool:
    """Stands for a RedisClient: answers (or not) as the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answers: list[Deferred[Any]] = []

    def evalsha(self, sha: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        self.calls.append(("evalsha", sha))
        return self.answers.pop(0) if self.answers else Deferred()

    def eval(self, source: bytes, keys: list[str], args: list[str]) -> Deferred[Any]:
        self.calls.append(("eval", source[:10]))
        return succeed([1, 4, 0, 1000])


def _healthWithLog(clock: Clock, metrics: Metrics | None = None) -> tuple[StoreHealth, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return StoreHealth(clock, metrics, "redis", "rate_limit", log=Logger(observer=events.append)), events


class FallbackTests(SynchronousTestCase):
    """The shared limiter's behaviour when Redis misbehaves, with a fake pool and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = _FakePool()
        self.metrics = Metrics(processMetrics=False)
        self.health, self.events = _healthWithLog(self.clock, self.metrics)
        config = limitConfig("token_bucket", "1/m", 2)
        self.limiter = RedisRateLimiter(self.pool, config, "p:", TokenBucketLimiter(1 / 60, 2, self.clock),
                                        self.clock, 0.25, self.health)

    def test_implementsIRateLimiter(self) -> None:
        """The Redis-backed limiter provides IRateLimiter."""
        self.assertTrue(verifyObject(IRateLimiter, self.limiter))

    def test_slowRedisFallsBackAfterTheTimeout(self) -> None:
        """A check never waits for Redis longer than stores.redis_timeout; then the local limiter decides."""
        d = self.limiter.check("k")
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        decision = self.successResultOf(d)
        self.assertTrue(decision.allowed)
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.assertIn("0.25s", str(self.events[0]["reason"]))

    def test_whileDownOnlyOneProbePerInterval(self) -> None:
        """After a failure, checks decide locally at once; one probe per interval tries Redis again."""
        d = self.limiter.check("k")
        self.clock.advance(0.25)
        self.successResultOf(d)  # type: ignore[arg-type]
        immediate = [self.limiter.check("k") for _ in range(3)]
        self.assertEqual([type(x) for x in immediate], [Decision] * 3)
        self.assertEqual([x.allowed for x in immediate], [True, False, False])  # type: ignore[union-attr]
        self.clock.advance(1.0)
        self.pool.answers.append(succeed([1, 0, 0, 60000]))
        probe = self.limiter.check("k")
        self.assertTrue(self.successResultOf(probe).allowed)  # type: ignore[arg-type]
        self.assertEqual(len(self.pool.calls), 2)
        self.assertEqual([e["log_level"] for e in self.events], [LogLevel.warn, LogLevel.info])
        self.assertEqual(counterValue(self.metrics, "txgateway_store_fallbacks_total",
                                      {"store": "redis", "use": "rate_limit"}), 4)

    def test_redisErrorFallsBack(self) -> None:
        """A Redis error reply is a fallback, not a failed request; the outage is logged once."""
        self.pool.answers.extend([fail(RuntimeError("READONLY")), fail(RuntimeError("READONLY"))])
        self.assertTrue(self.successResultOf(self.limiter.check("k")).allowed)  # type: ignore[arg-type]
        self.clock.advance(1.0)
        self.assertTrue(self.successResultOf(self.limiter.check("k")).allowed)  # type: ignore[arg-type]
        self.assertEqual(len(self.events), 1)

    def test_noScriptLoadsTheScript(self) -> None:
        """NOSCRIPT (Redis restarted or flushed) makes one EVAL with the source, then it goes on."""
        self.pool.answers.append(fail(stores.NoScript("NOSCRIPT No matching script")))
        decision = self.successResultOf(self.limiter.check("k"))  # type: ignore[arg-type]
        self.assertEqual([c[0] for c in self.pool.calls], ["evalsha", "eval"])
        self.assertEqual((decision.allowed, decision.remaining, decision.resetSeconds), (True, 4, 1.0))
        self.assertEqual(self.events, [])

    def test_redisDecisionIsUsed(self) -> None:
        """Redis' answer becomes the decision, with its retry and reset in seconds."""
        self.pool.answers.append(succeed([0, 0, 1500, 61000]))
        decision = self.successResultOf(self.limiter.check("k"))  # type: ignore[arg-type]
        self.assertFalse(decision.allowed)
        self.assertEqual(decision.retryAfterSeconds, 2)
        self.assertEqual(decision.limit, 2)


class _RedisCase(SynchronousTestCase):
    """Starts a real redis-server per test and cleans everything up."""

    def setUp(self) -> None:
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)
        self.clock = Clock()

    def pool(self) -> Any:
        pool = stores.makeRedis(StoresConfig(redis=self.redis.url, redis_timeout=0.25), globalReactor)
        self.addCleanup(lambda: spin(stores.closeRedis(pool)))
        waitUntil(lambda: stores.isConnected(pool), what="redis pool connected")
        return pool

    def sharedLimiter(self, pool: Any, config: RateLimitConfig, health: StoreHealth | None = None) -> RedisRateLimiter:
        health = health or StoreHealth(self.clock, None, "redis", "rate_limit")
        return RedisRateLimiter(pool, config, f"txgw:rl:{config.algorithm}:test:",
                                limiting.localLimiter(config, self.clock), self.clock, 0.25, health)

    def decide(self, limiter: RedisRateLimiter, key: str) -> Decision:
        result = limiter.check(key)
        if isinstance(result, Deferred):
            return spin(result)  # type: ignore[no-any-return]
        return result


class SharedRedisTests(_RedisCase):
    def test_oneLimitAcrossTwoReplicas(self) -> None:
        """Two limiters with their own pools (two replicas) enforce one token bucket together."""
        config = limitConfig("token_bucket", "1/m", 5)
        a = self.sharedLimiter(self.pool(), config)
        b = self.sharedLimiter(self.pool(), config)
        decisions = [self.decide(a if i % 2 else b, "client") for i in range(12)]
        self.assertEqual(sum(d.allowed for d in decisions), 5)
        self.assertEqual([d.remaining for d in decisions[:5]], [4, 3, 2, 1, 0])
        refused = decisions[-1]
        self.assertTrue(58 <= refused.retryAfter <= 60, refused)
        ttl = self.redis.command("PTTL", "txgw:rl:token_bucket:test:client")
        self.assertTrue(0 < ttl <= 301_000, ttl)

    def test_slidingWindowAcrossTwoReplicas(self) -> None:
        """The sliding window, shared, admits the limit once across replicas, and sets a TTL."""
        config = limitConfig("sliding_window", "4/h", 4)
        a = self.sharedLimiter(self.pool(), config)
        b = self.sharedLimiter(self.pool(), config)
        decisions = [self.decide(a if i % 2 else b, "client") for i in range(8)]
        self.assertEqual([d.allowed for d in decisions], [True] * 4 + [False] * 4)
        self.assertEqual(decisions[3].remaining, 0)
        self.assertGreater(decisions[-1].retryAfter, 0)
        ttl = self.redis.command("PTTL", "txgw:rl:sliding_window:test:client")
        self.assertTrue(3600_000 < ttl <= 3 * 3600_000 + 1000, ttl)

    def test_scriptFlushIsSurvived(self) -> None:
        """After SCRIPT FLUSH the limiter loads its script again and keeps deciding in Redis."""
        config = limitConfig("token_bucket", "1/m", 3)
        limiter = self.sharedLimiter(self.pool(), config)
        self.assertEqual(self.decide(limiter, "k").remaining, 2)
        self.redis.command("SCRIPT", "FLUSH")
        self.assertEqual(self.decide(limiter, "k").remaining, 1)
        self.assertTrue(limiter.health.healthy)

    def test_redisKilledThenRestarted(self) -> None:
        """Redis dies mid-test: checks fall back at once, logged once; it comes back: shared again."""
        events: list[dict[str, Any]] = []
        health = StoreHealth(self.clock, None, "redis", "rate_limit", log=Logger(observer=events.append))
        config = limitConfig("token_bucket", "1/m", 3)
        pool = self.pool()
        limiter = self.sharedLimiter(pool, config, health)
        self.assertTrue(self.decide(limiter, "k").allowed)
        self.redis.kill()
        waitUntil(lambda: not stores.isConnected(pool), what="pool noticing redis is gone")
        during = [limiter.check("k") for _ in range(5)]
        self.assertTrue(all(isinstance(d, Decision) for d in during))  # no waiting at all
        self.assertEqual([d.allowed for d in during], [True, True, True, False, False])  # type: ignore[union-attr]
        self.assertEqual(len(events), 1)
        self.redis.start()
        waitUntil(lambda: stores.isConnected(pool), what="pool reconnecting by itself")
        self.clock.advance(1.0)
        after = self.decide(limiter, "k")
        self.assertTrue(after.allowed)  # a fresh Redis: a full shared bucket again
        self.assertEqual(after.remaining, 2)
        self.assertEqual(self.redis.command("EXISTS", "txgw:rl:token_bucket:test:k"), 1)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn, LogLevel.info])

    def test_hungRedisCostsOneTimeout(self) -> None:
        """A Redis that stops answering holds one check for the timeout; the next ones decide locally at once."""
        pool = self.pool()
        limiter = self.sharedLimiter(pool, limitConfig("token_bucket", "1/m", 3))
        self.assertTrue(self.decide(limiter, "k").allowed)
        self.redis.freeze()
        self.addCleanup(self.redis.thaw)
        d = limiter.check("k")
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.assertTrue(self.successResultOf(d).allowed)
        self.assertIsInstance(limiter.check("k"), Decision)

    def test_reconnectChatterIsQuiet(self) -> None:
        """While Redis is down the pool's reconnect attempts are logged at debug level, not info."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pool = self.pool()
        self.redis.kill()
        waitUntil(lambda: any("next attempt" in str(e.get("log_format")) for e in events),
                  what="a reconnect attempt")
        retries = [e for e in events if "next attempt" in str(e.get("log_format"))]
        self.assertEqual({e["log_level"] for e in retries}, {LogLevel.debug})
        self.assertFalse(stores.isConnected(pool))

    def test_filterThroughRedis(self) -> None:
        """The chain filter built by rateLimitFilter uses Redis for shared: true and answers 429 from it."""
        config = gatewayConfig("{algorithm: sliding_window, rate: 2/m, key: consumer, shared: true}",
                               redis=self.redis.url)
        deps = makeDeps(config, self.clock, redis=self.pool())
        f = rateLimitFilter(CompiledRoute(config.routes[0]), deps)
        assert f is not None
        results = []
        for _ in range(3):
            context = makeContext(identity="alice")
            result = f.filterRequest(context)
            results.append(spin(result) if isinstance(result, Deferred) else result)
        self.assertEqual(results[:2], [None, None])
        self.assertIsInstance(results[2], LocalResponse)
        self.assertEqual(results[2].code, 429)
        self.assertEqual(self.redis.command("EXISTS", "txgw:rl:sliding_window:api:alice"), 1)


class CancellationTests(SynchronousTestCase):
    def test_clientGoneIsNotAnOutage(self) -> None:
        """A check cancelled because the client left propagates the cancel and logs no Redis outage."""
        clock = Clock()
        health, events = _healthWithLog(clock)
        limiter = RedisRateLimiter(_FakePool(), limitConfig("token_bucket", "1/m", 2), "p:",
                                   TokenBucketLimiter(1 / 60, 2, clock), clock, 0.25, health)
        f = RateLimitFilter(limiter, lambda c: "k", Metrics(processMetrics=False).rateLimited.labels("r"))
        d = f.filterRequest(makeContext())
        assert isinstance(d, Deferred)
        d.cancel()
        self.failureResultOf(d).trap(CancelledError)
        self.assertEqual(events, [])
        self.assertTrue(health.healthy)
        self.assertEqual(self.flushLoggedErrors(), [])


class ReloadTests(SynchronousTestCase):
    def test_countersSurviveARuntimeRebuild(self) -> None:
        """buildRuntime for an unchanged config (a reload) reuses the route's limiter and its counters."""
        from txgateway.building import buildRuntime

        clock = Clock()
        config = gatewayConfig("{rate: 1/m, burst: 1}")
        shared: dict[str, Any] = {}
        metrics = Metrics(processMetrics=False)
        first = buildRuntime(config, reactor=clock, clock=clock, metrics=metrics, shared=shared)
        second = buildRuntime(gatewayConfig("{rate: 1/m, burst: 1}"), reactor=clock, clock=clock,
                              metrics=metrics, previous=first, shared=shared)
        [route1] = [r for r in first.routes.routes if r.name == "api"]
        [route2] = [r for r in second.routes.routes if r.name == "api"]
        self.assertIsNone(route1.chain.filters[-1].filterRequest(makeContext()))
        self.assertIsInstance(route2.chain.filters[-1].filterRequest(makeContext()), LocalResponse)
