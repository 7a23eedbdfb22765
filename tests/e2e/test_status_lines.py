"""
The 429 of the rate limiter on the wire of the real twistd process: its
status line reads C{HTTP/1.1 429 Too Many Requests} (#18 item 11).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, raw, simpleConfig


class StatusLineTests(SynchronousTestCase):
    def test_429ReasonPhrase(self) -> None:
        backend = Backend("sl").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(simpleConfig([backend.url], routeExtra="    rate_limit: {algorithm: token_bucket, "
                                         "rate: 1/m, burst: 1, key: client_ip}\n"))
        self.addCleanup(gw.cleanup)
        gw.start()
        ask = b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
        self.assertTrue(raw(gw.port, ask).startswith(b"HTTP/1.1 200 OK\r\n"))
        answer = raw(gw.port, ask)
        self.assertTrue(answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), answer[:200])
