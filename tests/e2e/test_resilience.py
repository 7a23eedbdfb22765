"""
Resilience end to end: real gateway, real origins that refuse, fail, hang or die.

Each test starts the processes it needs (a gateway and up to three origins);
a "refusing" target is a free port with nothing listening.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, deadPort, request, simpleConfig, waitFor


def accessLines(gw: GatewayProcess) -> list[dict[str, Any]]:
    out = []
    for line in gw.log().splitlines():
        if line.startswith("{") and '"request_id"' in line and '"duration_ms"' in line:
            out.append(json.loads(line))
    return out


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    """Sum of the samples of C{name} whose labels include C{labels}."""
    text = gw.request("GET", "/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def hangs(backend: Backend) -> dict[str, int]:
    return dict(request(backend.port, "GET", "/hangs").json())


def setMode(backend: Backend, query: str) -> None:
    assert request(backend.port, "GET", f"/control/mode{query}").status == 200


class ResilienceCase(SynchronousTestCase):
    def backend(self, name: str) -> Backend:
        b = Backend(name).start()
        self.addCleanup(b.stop)
        return b

    def gateway(self, targets: list[str], upstreamExtra: str) -> GatewayProcess:
        gw = GatewayProcess(simpleConfig(targets, upstreamExtra=upstreamExtra))
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        gw.start()
        return gw


class RetryTests(ResilienceCase):
    def test_refusingTargetIsRetriedOnAnotherForEveryMethod(self) -> None:
        """A target refusing connections costs nothing: GET and POST (body included) land on the live one."""
        live = self.backend("live")
        dead = f"http://127.0.0.1:{deadPort()}"
        gw = self.gateway([dead, live.url], "    retries: {attempts: 2, backoff: 0s}")
        for i in range(6):
            r = gw.request("GET", f"/echo/{i}")
            self.assertEqual((r.status, r.header("X-Backend")), (200, "live"), r)
            body = b"payload-%d" % i
            r = gw.request("POST", "/echo", {"Content-Type": "text/plain"}, body=body)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["body"], body.decode())
        self.assertGreater(metric(gw, "txgateway_retries_total", upstream="app"), 0)
        retried = waitFor(lambda: [a for a in accessLines(gw) if a["attempts"] == 2], what="retried access lines")
        self.assertEqual(retried[0]["targets_tried"], [dead, live.url])
        self.assertEqual(retried[0]["target"], live.url)

    def test_largeBodyIsReplayedWholeOnRetry(self) -> None:
        """A body big enough to be spooled to disk is sent whole to a 503ing target, then again to the next."""
        live = self.backend("live")
        sick = self.backend("sick")
        setMode(sick, "?status=503")
        gw = self.gateway([sick.url, live.url], "    retries: {attempts: 1, backoff: 0s, on: [503]}")
        body = bytes(range(256)) * 1200  # 300 KiB: over the Site's in-memory limit and our 256 KiB one
        for _ in range(4):
            r = gw.request("PUT", "/echo", body=body, timeout=20)
            self.assertEqual((r.status, r.header("X-Backend")), (200, "live"), r)
            self.assertEqual(r.json()["body"].encode("latin-1"), body)
        self.assertGreater(metric(gw, "txgateway_retries_total", upstream="app"), 0)

    def test_getRetriedAfter503ButPostIsNot(self) -> None:
        """A 503 is retried for GET; a POST the backend already saw keeps its 503."""
        good = self.backend("good")
        sick = self.backend("sick")
        setMode(sick, "?status=503")
        gw = self.gateway([sick.url, good.url], "    retries: {attempts: 1, backoff: 0s, on: [connect_failure, 503]}")
        for _ in range(6):
            r = gw.request("GET", "/echo")
            self.assertEqual((r.status, r.header("X-Backend")), (200, "good"), r)
        before = sick.count()
        posts = [gw.request("POST", "/echo", body=b"x") for _ in range(6)]
        refused = [r for r in posts if r.status == 503]
        self.assertTrue(refused, "round robin sends some POSTs to the sick target")
        self.assertTrue(all(r.header("X-Backend") == "sick" for r in refused))
        self.assertTrue(all(r.status == 200 for r in posts if r not in refused))
        # Exactly one attempt per refused POST reached the sick backend (+1 for our /count).
        self.assertEqual(sick.count() - before, len(refused) + 1)


class TimeoutTests(ResilienceCase):
    def test_hangingTargetTimesOutAndTheRetryAnswers(self) -> None:
        """A hanging target costs one response timeout; the retry answers, and the hung request is cancelled."""
        good = self.backend("good")
        stuck = self.backend("stuck")
        setMode(stuck, "?hang=1")
        gw = self.gateway([stuck.url, good.url],
                          "    timeouts: {connect: 1s, response: 500ms}\n"
                          "    retries: {attempts: 1, backoff: 0s, on: [connect_failure, timeout]}")
        for _ in range(4):
            started = time.monotonic()
            r = gw.request("GET", "/echo")
            self.assertEqual((r.status, r.header("X-Backend")), (200, "good"), r)
            self.assertLess(time.monotonic() - started, 3.0)
        seen = hangs(stuck)
        self.assertGreaterEqual(seen["total"], 1)
        # The gateway gave up on each of them: the backend saw every connection closed.
        waitFor(lambda: hangs(stuck)["cancelled"] == seen["total"], timeout=5, what="hung requests cancelled")

    def test_timeoutWithoutRetryIs504(self) -> None:
        """With retries off, a target that does not answer in time gives 504 after the response timeout."""
        stuck = self.backend("stuck")
        gw = self.gateway([stuck.url], "    timeouts: {connect: 1s, response: 500ms}\n    retries: false")
        started = time.monotonic()
        r = gw.request("GET", "/hang")
        elapsed = time.monotonic() - started
        self.assertEqual(r.status, 504, r)
        self.assertEqual(r.json()["reason"], "timeout")
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 3.0)
        waitFor(lambda: hangs(stuck)["cancelled"] == 1, timeout=5, what="backend sees the cancel")

    def test_clientDisconnectCancelsTheBackendRequest(self) -> None:
        """A client that hangs up mid-request makes the gateway close its backend request at once."""
        origin = self.backend("origin")
        # Retries on reset and a one-failure breaker: a cancel mistaken for a failure would show.
        gw = self.gateway([origin.url], "    timeouts: {connect: 1s, response: 60s}\n"
                                        "    retries: {attempts: 2, backoff: 0s, on: [connect_failure, reset, timeout]}\n"
                                        "    circuit_breaker: {failures: 1}")
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        try:
            s.sendall(b"GET /hang HTTP/1.1\r\nHost: gw\r\n\r\n")
            waitFor(lambda: hangs(origin)["open"] == 1, timeout=5, what="request reaches the backend")
        finally:
            s.close()
        waitFor(lambda: hangs(origin)["cancelled"] == 1, timeout=5, what="backend sees the cancel")
        self.assertEqual(hangs(origin)["open"], 0)
        line = waitFor(lambda: [a for a in accessLines(gw) if a["path"] == "/hang"], what="access line")[0]
        self.assertEqual(line["status"], 499)
        self.assertEqual(line["attempts"], 1)
        # Nothing was blamed on the backend and nothing was retried.
        self.assertEqual(metric(gw, "txgateway_retries_total"), 0)
        self.assertEqual(hangs(origin)["total"], 1)
        self.assertEqual(metric(gw, "txgateway_circuit_state", target=origin.url), 0)
        self.assertEqual(metric(gw, "txgateway_upstream_requests_total"), 0)
        waitFor(lambda: metric(gw, "txgateway_in_flight_requests") == 1, what="only /metrics in flight")


class OutageTests(ResilienceCase):
    def test_200RequestsDuringOneBackendOutageAllSucceed(self) -> None:
        """One of three backends dies: with retries on, 200 concurrent requests all succeed."""
        backends = [self.backend(f"b{i}") for i in range(3)]
        gw = self.gateway([b.url for b in backends],
                          "    timeouts: {connect: 1s, response: 5s}\n"
                          "    circuit_breaker: {failures: 3, open_for: 1s, half_open_probes: 1}\n"
                          "    retries: {attempts: 2, backoff: 10ms}")
        for _ in range(3):
            self.assertEqual(gw.request("GET", "/echo").status, 200)
        backends[0].stop()

        def one(i: int) -> tuple[int, str | None]:
            r = gw.request("GET", f"/echo?i={i}")
            return r.status, r.header("X-Backend")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(200)))
        self.assertEqual([s for s, _ in results], [200] * 200)
        self.assertNotIn("b0", {b for _, b in results})
        self.assertGreater(metric(gw, "txgateway_retries_total", upstream="app"), 0)
        self.assertGreaterEqual(metric(gw, "txgateway_circuit_transitions_total", target=backends[0].url, to="open"), 1)

    def test_everyBackendDownIsFast503WithoutPilingOn(self) -> None:
        """All targets refusing: once the breakers open, requests get 503 + Retry-After at once, with no connect attempts."""
        dead = [f"http://127.0.0.1:{deadPort()}" for _ in range(3)]
        gw = self.gateway(dead, "    circuit_breaker: {failures: 2, open_for: 30s}\n"
                                "    retries: {attempts: 2, backoff: 0s}")
        for _ in range(2):
            self.assertEqual(gw.request("GET", "/echo").status, 502)
        attempts = metric(gw, "txgateway_upstream_requests_total", status="connect_failure")
        self.assertEqual(attempts, 6)
        for _ in range(30):
            started = time.monotonic()
            r = gw.request("GET", "/echo")
            self.assertLess(time.monotonic() - started, 1.0)
            self.assertEqual(r.status, 503, r)
            self.assertGreaterEqual(int(r.header("Retry-After") or 0), 28)
        self.assertEqual(metric(gw, "txgateway_upstream_requests_total"), attempts)
        for target in dead:
            self.assertEqual(metric(gw, "txgateway_circuit_state", target=target), 1)
        health = gw.request("GET", "/health")
        self.assertEqual(health.status, 503)
        self.assertEqual({t["circuit"] for t in health.json()["upstreams"]["app"]["targets"]}, {"open"})

    def test_everyBackendHangingIsFast503WithoutPilingOn(self) -> None:
        """All targets hanging: after the breakers open, no more requests reach (and pile up on) them."""
        backends = [self.backend(f"h{i}") for i in range(3)]
        for b in backends:
            setMode(b, "?hang=1")
        gw = self.gateway([b.url for b in backends],
                          "    timeouts: {connect: 1s, response: 300ms}\n"
                          "    circuit_breaker: {failures: 1, open_for: 30s}\n"
                          "    retries: {attempts: 2, backoff: 0s, on: [connect_failure, timeout]}")
        r = gw.request("GET", "/echo")
        self.assertEqual(r.status, 504, r)
        self.assertEqual(sum(hangs(b)["total"] for b in backends), 3)
        started = time.monotonic()
        for _ in range(20):
            r = gw.request("GET", "/echo")
            self.assertEqual(r.status, 503, r)
            self.assertIsNotNone(r.header("Retry-After"))
        self.assertLess(time.monotonic() - started, 3.0)
        self.assertEqual(sum(hangs(b)["total"] for b in backends), 3)
        waitFor(lambda: sum(hangs(b)["open"] for b in backends) == 0, timeout=5, what="no connection left open")

    def test_breakerHalfOpensAndClosesWhenTheBackendRecovers(self) -> None:
        """After open_for a probe goes through; the backend is back, so the breaker closes and traffic flows."""
        origin = self.backend("origin")
        setMode(origin, "?status=503")
        gw = self.gateway([origin.url], "    circuit_breaker: {failures: 2, open_for: 1s}\n    retries: false")
        for _ in range(2):
            self.assertEqual(gw.request("GET", "/echo").status, 503)
        r = gw.request("GET", "/echo")
        self.assertEqual(r.status, 503)
        self.assertIsNone(r.header("X-Backend"), "answered by the gateway: breaker open")
        setMode(origin, "")
        r = waitFor(lambda: (lambda r: r if r.status == 200 else None)(gw.request("GET", "/echo")),
                    timeout=5, what="breaker closes")
        self.assertEqual(r.header("X-Backend"), "origin")
        self.assertEqual(metric(gw, "txgateway_circuit_state", target=origin.url), 0)
        for to in ("open", "half_open", "closed"):
            self.assertEqual(metric(gw, "txgateway_circuit_transitions_total", target=origin.url, to=to), 1, to)
