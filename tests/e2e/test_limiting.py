"""
Rate limiting end to end: the real gateway answering 429 with its headers,
two gateway processes sharing one limit through one real redis-server, and
gateways that keep serving while Redis is down, dies, or comes back.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import Backend, GatewayProcess, Response, deadPort, simpleConfig, waitFor
from tests.redisserver import RedisServer

FALLBACK_LINE = "unavailable for rate_limit"
RECOVERY_LINE = "is back for rate_limit"


def limitedConfig(backend: Backend, rateLimit: str, redisURL: str | None = None) -> str:
    extra = f'stores: {{redis: "{redisURL}", redis_timeout: 1s}}\n' if redisURL else ""
    return simpleConfig([backend.url], extra=extra, routeExtra=f"    rate_limit: {rateLimit}\n")


class _Case(SynchronousTestCase):
    def backend(self) -> Backend:
        b = Backend("b1").start()
        self.addCleanup(b.stop)
        return b

    def gateway(self, config: str) -> GatewayProcess:
        g = GatewayProcess(config)
        self.addCleanup(g.cleanup)
        g.start()
        return g

    def redis(self) -> RedisServer:
        r = RedisServer().start()
        self.addCleanup(r.cleanup)
        return r

    def assertServed(self, responses: list[Response]) -> None:
        """Every answer is the backend's 200 or the limiter's 429: nothing failed."""
        self.assertEqual({r.status for r in responses} - {200, 429}, set(), responses)


def _storeUp(*gateways: GatewayProcess) -> bool:
    """Every gateway's /health says its Redis connection is up."""
    return all(g.request("GET", "/health", timeout=2).json()["stores"]["redis"]["state"] == "up" for g in gateways)


class LocalLimitTests(_Case):
    def test_429WithRetryAfterAndRateLimitHeaders(self) -> None:
        """Over the limit the real gateway answers 429 JSON with Retry-After; every response has RateLimit-*."""
        backend = self.backend()
        gw = self.gateway(limitedConfig(backend, "{algorithm: token_bucket, rate: 1/m, burst: 2, key: client_ip}"))
        before = backend.count()
        responses = [gw.request("GET", "/echo") for _ in range(3)]
        after = backend.count()
        self.assertEqual([r.status for r in responses], [200, 200, 429])
        self.assertEqual([r.header("RateLimit-Limit") for r in responses], ["2", "2", "2"])
        self.assertEqual([r.header("RateLimit-Remaining") for r in responses], ["1", "0", "0"])
        self.assertTrue(all(r.header("RateLimit-Reset") is not None for r in responses))
        refused = responses[2]
        retry = int(refused.header("Retry-After") or "0")
        self.assertTrue(1 <= retry <= 60, retry)
        self.assertEqual(refused.header("Content-Type"), "application/json")
        body = json.loads(refused.body)
        self.assertEqual((body["status"], body["retry_after"]), (429, retry))
        self.assertEqual(after - before - 1, 2)  # the 429 never reached the backend
        metrics = gw.request("GET", "/metrics").body.decode()
        self.assertIn('txgateway_rate_limited_total{route="all"} 1.0', metrics)

    def test_headerKeyGivesEachClientItsOwnBucket(self) -> None:
        """key: header:X-API-Key limits per key; requests without it share the anonymous bucket."""
        backend = self.backend()
        gw = self.gateway(limitedConfig(backend, "{rate: 1/m, burst: 1, key: header:X-API-Key}"))
        self.assertEqual(gw.request("GET", "/echo", {"X-API-Key": "a"}).status, 200)
        self.assertEqual(gw.request("GET", "/echo", {"X-API-Key": "a"}).status, 429)
        self.assertEqual(gw.request("GET", "/echo", {"X-API-Key": "b"}).status, 200)
        self.assertEqual(gw.request("GET", "/echo").status, 200)
        self.assertEqual(gw.request("GET", "/echo").status, 429)


class SharedLimitTests(_Case):
    def test_twoGatewaysShareOneLimit(self) -> None:
        """Two gateway processes on one Redis admit, together, no more than the one limit's burst."""
        redis = self.redis()
        backend = self.backend()
        config = limitedConfig(backend, "{algorithm: token_bucket, rate: 1/m, burst: 6, key: route, shared: true}",
                               redis.url)
        a = self.gateway(config)
        b = self.gateway(config)
        waitFor(lambda: _storeUp(a, b), what="both gateways connected to redis")
        responses = [(a if i % 2 else b).request("GET", "/echo") for i in range(16)]
        self.assertServed(responses)
        admitted = sum(r.status == 200 for r in responses)
        self.assertGreaterEqual(admitted, 6)
        self.assertLessEqual(admitted, 7)  # burst, plus at most one token refilled at 1/m during the test
        self.assertEqual([r.header("RateLimit-Remaining") for r in responses[:6]], ["5", "4", "3", "2", "1", "0"])
        self.assertEqual({r.status for r in responses[8::2]} | {r.status for r in responses[9::2]}, {429})
        self.assertNotIn(FALLBACK_LINE, a.log() + b.log())

    def test_slidingWindowSharedAcrossGateways(self) -> None:
        """The sliding window, shared, holds across two gateways too."""
        redis = self.redis()
        backend = self.backend()
        config = limitedConfig(backend, "{algorithm: sliding_window, rate: 5/h, key: client_ip, shared: true}",
                               redis.url)
        a = self.gateway(config)
        b = self.gateway(config)
        waitFor(lambda: _storeUp(a, b), what="both gateways connected to redis")
        responses = [(a if i % 2 else b).request("GET", "/echo") for i in range(10)]
        self.assertEqual([r.status for r in responses], [200] * 5 + [429] * 5)
        self.assertEqual(redis.command("EXISTS", "txgw:rl:sliding_window:all:127.0.0.1"), 1)

    def test_redisDownGatewayStillServes(self) -> None:
        """A gateway whose Redis is not there limits locally, says so once, and fails no request."""
        backend = self.backend()
        gw = self.gateway(limitedConfig(backend, "{rate: 1/m, burst: 3, shared: true}",
                                        f"redis://127.0.0.1:{deadPort()}/0"))
        responses = [gw.request("GET", "/echo") for _ in range(5)]
        self.assertEqual([r.status for r in responses], [200, 200, 200, 429, 429])

        def warned() -> bool:
            responses.append(gw.request("GET", "/echo"))
            return FALLBACK_LINE in gw.log()

        waitFor(warned, what="the fallback warning")
        for _ in range(5):
            responses.append(gw.request("GET", "/echo"))
        self.assertServed(responses)
        self.assertEqual(gw.log().count(FALLBACK_LINE), 1)
        self.assertNotIn("Scheduling retry", gw.log())
        self.assertNotIn("next attempt", gw.log())  # reconnect attempts are debug-level chatter
        metrics = gw.request("GET", "/metrics").body.decode()
        self.assertIn('txgateway_store_fallbacks_total{store="redis",use="rate_limit"}', metrics)

    def test_redisKilledThenRestarted(self) -> None:
        """Redis killed mid-traffic: no failed request; restarted: the gateway is back on the shared limit."""
        redis = self.redis()
        backend = self.backend()
        gw = self.gateway(limitedConfig(backend, "{rate: 1000/s, burst: 1000, key: client_ip, shared: true}",
                                        redis.url))
        key = "txgw:rl:token_bucket:all:127.0.0.1"
        waitFor(lambda: _storeUp(gw), what="gateway connected to redis")
        responses = [gw.request("GET", "/echo") for _ in range(3)]
        self.assertEqual(redis.command("EXISTS", key), 1)
        redis.kill()
        for _ in range(20):
            responses.append(gw.request("GET", "/echo"))
        waitFor(lambda: FALLBACK_LINE in gw.log(), what="the fallback warning")
        redis.start()  # empty: the key is gone until the gateway writes it again

        def shared() -> bool:
            responses.append(gw.request("GET", "/echo"))
            return bool(redis.command("EXISTS", key))

        waitFor(shared, what="the gateway deciding in redis again")
        waitFor(lambda: RECOVERY_LINE in gw.log(), what="the recovery line")
        self.assertEqual(gw.log().count(FALLBACK_LINE), 1)
        self.assertEqual([r.status for r in responses if r.status != 200], [])
