"""
End to end: the seeds' users move over in one step.  go-reverse-proxy's own
proxyConfig.yaml (its README's shape: two services, users.com and shop.com,
two hosts each), converted with C{txgateway convert} and run, and the same
file run directly through go-reverse-proxy's environment variables; the
workshop gateway's C{ENVIRONMENT} and C{/health} fields.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import REPO, Backend, GatewayProcess, childEnv, echoed, namedPort, request, waitFor

USERS = "/proxy/api/v1/users?par1=foo"


def proxyConfig(port: int | str, users: list[Backend], shop: list[Backend]) -> str:
    def hosts(backends: list[Backend]) -> str:
        return "".join(f'        - address: "127.0.0.1"\n          port: {b.port}\n' for b in backends)

    return (f'proxy:\n  listen:\n    address: "127.0.0.1"\n    port: {port}\n  services:\n'
            f"    - name: users\n      domain: users.com\n      hosts:\n{hosts(users)}"
            f"    - name: shop\n      domain: shop.com\n      hosts:\n{hosts(shop)}")


class GoReverseProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.users = [Backend("users-1").start(), Backend("users-2").start()]
        self.shop = [Backend("shop-1").start(), Backend("shop-2").start()]
        for b in self.users + self.shop:
            self.addCleanup(b.stop)

    def gateway(self, config: str, env: dict[str, str] | None = None, useConfigFile: bool = True,
                port: int | None = None) -> GatewayProcess:
        g = GatewayProcess(config, env=env, useConfigFile=useConfigFile, port=port)
        if not useConfigFile:
            g.env = {**(env or {}), "CONFIGURATION_FILENAME": str(g.configPath)}
        self.addCleanup(g.cleanup)
        self.addCleanup(g.stop)
        return g.start()

    def backendsOf(self, g: GatewayProcess, host: str, path: str, n: int) -> list[str]:
        names = []
        for _ in range(n):
            r = g.request("GET", path, {"Host": host})
            self.assertEqual(r.status, 200, r)
            data = echoed(r)
            self.assertEqual(data["uri"], path.removeprefix("/proxy"))  # /proxy/ removed, query kept
            names.append(data["backend"])
        return names

    def test_convertedConfigRoutesByHostRoundRobin(self) -> None:
        """`txgateway convert proxyConfig.yaml > gw.yaml`, then run: Host picks the service, hosts take turns."""
        port = namedPort()  # the seed names its ports up front: below the ephemeral range (see namedPort)
        source = Path(tempfile.mkdtemp(prefix="txgw-seed-")) / "proxyConfig.yaml"
        self.addCleanup(shutil.rmtree, source.parent, True)
        source.write_text(proxyConfig(port, self.users, self.shop))
        done = subprocess.run([sys.executable, "-m", "txgateway", "convert", str(source)], capture_output=True,
                              env=childEnv({"HTTP_CACHE_TTL_SECONDS": "0"}), cwd=REPO, timeout=60, check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        g = self.gateway(done.stdout.decode(), port=port)
        names = self.backendsOf(g, "users.com", USERS, 4)
        self.assertEqual(sorted(set(names)), ["users-1", "users-2"])
        self.assertTrue(all(a != b for a, b in zip(names, names[1:], strict=False)), names)  # round robin
        self.assertEqual(sorted(set(self.backendsOf(g, "shop.com", "/proxy/cart", 2))), ["shop-1", "shop-2"])
        # go-reverse-proxy: an unknown Host, or a path outside /proxy/, is 404.
        self.assertEqual(g.request("GET", USERS, {"Host": "nobody.com"}).status, 404)
        self.assertEqual(g.request("GET", "/api/v1/users", {"Host": "users.com"}).status, 404)
        # Each host was sent its own address as Host, as go-reverse-proxy did.
        self.assertEqual(echoed(g.request("GET", USERS, {"Host": "users.com"}))["h"]["host"][0][:10], "127.0.0.1:")

    def test_sameFileThroughItsEnvironmentVariables(self) -> None:
        """CONFIGURATION_FILENAME and the rest, no txgateway config at all; HTTP_CACHE_TTL_SECONDS caches."""
        metrics = namedPort()  # the seed names its ports up front: below the ephemeral range (see namedPort)
        env = {"HTTP_CACHE_TTL_SECONDS": "60", "MAX_HTTP_RETRIES": "1", "MAX_FORWARD_RETRIES": "1",
               "METRICS_ADDR": f"127.0.0.1:{metrics}", "ENVIRONMENT": "staging"}
        g = self.gateway(proxyConfig("{port}", self.users, self.shop), env, useConfigFile=False)
        first = self.backendsOf(g, "users.com", USERS, 1)[0]
        again = g.request("GET", USERS, {"Host": "users.com"})
        self.assertEqual(echoed(again)["backend"], first)  # the same answer: cached (default_ttl)
        self.assertTrue(again.header("Cache-Status").startswith("txgateway; hit"), again.headers)
        other = self.backendsOf(g, "users.com", "/proxy/api/v1/users?par1=bar", 1)[0]
        self.assertNotEqual(other, first)  # the next host in turn
        # A response without freshness information is kept default_ttl; a no-store one never.
        for key, extra in (("plain", ""), ("nostore", "&cc=no-store")):
            for _ in range(3):
                self.assertEqual(g.request("GET", f"/proxy/cacheable?key={key}{extra}", {"Host": "shop.com"}).status, 200)
        seen = {key: sum(int(request(b.port, "GET", f"/cacheable-count?key={key}").body) for b in self.shop)
                for key in ("plain", "nostore")}
        self.assertEqual(seen, {"plain": 1, "nostore": 3})
        # METRICS_ADDR: metrics on their own listener; ENVIRONMENT on /health and the status API.
        self.assertIn(b"txgateway_http_requests_total{", request(metrics, "GET", "/metrics").body)
        self.assertEqual(g.request("GET", "/health").json()["environment"], "staging")
        self.assertEqual(request(metrics, "GET", "/api/status").json()["gateway"]["environment"], "staging")


class WorkshopGatewayTests(SynchronousTestCase):
    def test_environmentAndBackendFieldsOnHealth(self) -> None:
        """BACKEND_URL + ENVIRONMENT: /health says environment, backend: ok and backend_status; logs carry it."""
        backend = Backend("ml").start()
        self.addCleanup(backend.stop)
        port = namedPort()  # the seed names its ports up front: below the ephemeral range (see namedPort)
        g = GatewayProcess("", env={"BACKEND_URL": backend.url, "GATEWAY_PORT": str(port), "ENVIRONMENT": "production"},
                           useConfigFile=False, port=port)
        self.addCleanup(g.cleanup)
        self.addCleanup(g.stop)
        g.start()
        health = waitFor(lambda: (lambda h: h if "backend_status" in h else None)(g.request("GET", "/health").json()),
                         what="a health probe answered")
        self.assertEqual((health["environment"], health["backend"], health["backend_status"]), ("production", "ok", 200))
        self.assertEqual(echoed(g.request("POST", "/predict", body=b'{"text": "hi"}'))["path"], "/predict")
        lines = [json.loads(line) for line in g.log().splitlines() if line.startswith("{")]
        self.assertTrue(lines)
        self.assertTrue(all(line.get("environment") == "production" for line in lines), lines[:3])
