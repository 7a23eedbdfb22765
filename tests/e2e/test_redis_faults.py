"""
Redis faults end to end (issue 18): the real gateway processes against a real
redis-server that is stalled (SIGSTOP) and resumed, a listener that accepts
and never answers, and a Sentinel-managed primary that is killed and
replaced by its replica.  Whatever the fault, no request fails, /health
shows the store's state, and shared state comes back by itself.

Waits poll with bounded deadlines; the stall lasts ~6 s of steady traffic.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import Backend, GatewayProcess, Response, simpleConfig, waitFor
from tests.redisserver import RedisSentinel, RedisServer

OUTAGE_LINE = "unavailable ("
RECOVERY_LINE = "is back after"


def limitedConfig(backend: Backend, redisURL: str, rateLimit: str) -> str:
    return simpleConfig([backend.url], extra=f'stores: {{redis: "{redisURL}", redis_timeout: 250ms}}\n',
                        routeExtra=f"    rate_limit: {rateLimit}\n")


def storeState(gw: GatewayProcess) -> dict[str, Any]:
    report: dict[str, Any] = gw.request("GET", "/health", timeout=2).json()["stores"]["redis"]
    return report


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

    def redis(self, args: list[str] | None = None) -> RedisServer:
        r = RedisServer(args=args).start()
        self.addCleanup(r.cleanup)
        return r

    def timed(self, gw: GatewayProcess, responses: list[Response], headers: Any = None) -> Response:
        """One request, which must not be held by Redis (at most a timeout's worth, with slack)."""
        started = time.monotonic()
        r = gw.request("GET", "/echo", headers, timeout=5)
        self.assertLess(time.monotonic() - started, 2.0, "a request was held by a stalled redis")
        responses.append(r)
        return r

    def assertServed(self, responses: list[Response]) -> None:
        self.assertEqual({r.status for r in responses} - {200, 429}, set(), responses)


class StallTests(_Case):
    def test_stallThenResumeReturnsToSharedState(self) -> None:
        """Redis SIGSTOPped ~6 s under traffic, then resumed: both gateways go down, come back up, share again."""
        redis = self.redis()
        backend = self.backend()
        config = limitedConfig(backend, redis.url, "{rate: 1/m, burst: 4, key: header:X-Client, shared: true}")
        a, b = self.gateway(config), self.gateway(config)
        waitFor(lambda: storeState(a)["state"] == "up" and storeState(b)["state"] == "up", 10, "both up")
        responses: list[Response] = []
        redis.freeze()
        self.addCleanup(redis.thaw)
        frozenAt = time.monotonic()

        def bothDown() -> bool:
            self.timed(a, responses, {"X-Client": "during"})
            self.timed(b, responses, {"X-Client": "during"})
            return storeState(a)["state"] == "down" and storeState(b)["state"] == "down"

        waitFor(bothDown, 10, "both gateways seeing redis down")
        # Keep the traffic going until the stall has lasted ~6 s (txredisapi never came back from this).
        waitFor(lambda: self.timed(a, responses) and time.monotonic() - frozenAt >= 6, 10, "a 6 s stall")
        redis.thaw()
        waitFor(lambda: storeState(a)["state"] == "up" and storeState(b)["state"] == "up", 10,
                "both gateways reconnected")
        self.assertServed(responses)
        # Shared again: one limit of 4 across both gateways for a fresh client.
        after = [(a if i % 2 else b).request("GET", "/echo", {"X-Client": "after"}) for i in range(8)]
        self.assertEqual([r.status for r in after], [200] * 4 + [429] * 4)
        self.assertEqual(redis.command("EXISTS", "txgw:rl:token_bucket:all:after"), 1)
        for gw in (a, b):
            log = gw.log()
            self.assertEqual(log.count(OUTAGE_LINE), 1, log)  # the outage, once; retries are at debug level
            self.assertEqual(log.count(RECOVERY_LINE), 1, log)
            self.assertNotIn("Traceback", log)

    def test_aListenerThatNeverAnswers(self) -> None:
        """A port that accepts connections but never answers: down with a reason, requests served locally."""
        backend = self.backend()
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes connections; nobody ever reads
        self.addCleanup(silent.close)
        port = silent.getsockname()[1]
        gw = self.gateway(limitedConfig(backend, f"redis://127.0.0.1:{port}/0", "{rate: 1/m, burst: 2, shared: true}"))
        responses: list[Response] = []
        waitFor(lambda: self.timed(gw, responses) and storeState(gw)["state"] == "down", 10, "store down")
        report = storeState(gw)
        self.assertTrue(report["error"] in ("timed out", "no reply within 1s"), report)  # handshake or watchdog
        self.assertEqual(report["address"], f"127.0.0.1:{port}")
        self.assertEqual([r.status for r in responses[:3]], [200, 200, 429])  # the local limit decides
        self.assertServed(responses)
        admin = gw.request("GET", "/health").json()
        self.assertEqual(admin["status"], "ok")  # the gateway works: Redis down is shown, not unhealthy


class SentinelTests(_Case):
    def test_failoverCostsNoRequestAndEndsShared(self) -> None:
        """The primary behind Sentinel is killed; the replica is promoted; no request fails; shared again."""
        primary = self.redis()
        replica = self.redis(["--replicaof", "127.0.0.1", str(primary.port)])
        sentinel = RedisSentinel(primary.port)
        sentinel.start()
        self.addCleanup(sentinel.cleanup)
        waitFor(lambda: sentinel.knowsReplicas() >= 1, 15, "sentinel seeing the replica")
        backend = self.backend()
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"
        gw = self.gateway(limitedConfig(backend, url, "{rate: 1000/s, burst: 1000, key: header:X-Client, shared: true}"))
        waitFor(lambda: storeState(gw)["state"] == "up", 10, "connected to the primary")
        self.assertEqual(storeState(gw)["address"], f"127.0.0.1:{primary.port}")
        responses: list[Response] = []
        self.timed(gw, responses, {"X-Client": "before"})
        self.assertEqual(primary.command("EXISTS", "txgw:rl:token_bucket:all:before"), 1)
        primary.kill()

        def promotedAndUp() -> bool:
            self.timed(gw, responses)
            state = storeState(gw)
            return state["state"] == "up" and state["address"] == f"127.0.0.1:{replica.port}"

        waitFor(promotedAndUp, 25, "the gateway on the promoted replica")
        self.assertEqual(sentinel.primaryPort(), replica.port)

        def sharedAgain() -> bool:
            self.timed(gw, responses, {"X-Client": "after"})
            return bool(replica.command("EXISTS", "txgw:rl:token_bucket:all:after"))

        waitFor(sharedAgain, 5, "decisions in the new primary")
        self.assertEqual([r.status for r in responses if r.status != 200], [])
        self.assertEqual(gw.log().count(RECOVERY_LINE), 1)
