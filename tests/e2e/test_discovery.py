"""
Discovery and runtime target control end to end (issue 22): the real
C{twistd -n txgateway}, real origins on loopback addresses, and a real
C{twisted.names} DNS server (tests/e2e/dnsserver.py) on a free port that
the gateway's C{discovery.nameservers} points at.

Records are added and removed while traffic flows, on short TTLs with a
long C{refresh} (so it is the TTL that brings the change); SRV weights
shape the split; a dead DNS server leaves the last good set serving; a
targets file is rewritten; and the admin API drains, disables, re-weights
and enables targets under load without a single failed request.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .dnsserver import DNSServer
from .harness import Backend, GatewayProcess, request, waitFor
from .harness import Traffic as HealthTraffic

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config(targets: str, upstreamExtra: str = "", nameserver: int | None = None) -> str:
    discovery = f'discovery:\n  nameservers: ["127.0.0.1:{nameserver}"]\n' if nameserver else ""
    return f"""\
server:
  listen: "tcp:{{port}}:interface=127.0.0.1"
  timeouts: {{drain: 10s}}
admin:
  listen: "tcp:0:interface=127.0.0.1"
  token: {TOKEN}
logging:
  level: info
{discovery}upstreams:
  app:
    timeouts: {{connect: 1s, response: 5s}}
    retries: {{attempts: 2, on: [connect_failure, reset, 502, 503], backoff: 1ms, budget: 100%}}
    targets:
{targets}
{upstreamExtra}
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: app
"""


class Traffic(HealthTraffic):
    """The health tests' steady traffic, with what these tests ask of it."""

    def since(self, mark: int) -> list[tuple[int, str | None]]:
        return self.results[mark:]

    def failures(self) -> list[tuple[int, str | None]]:
        return [r for r in self.results if r[0] != 200]


class DiscoveryTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-dns-"))
        self.backends: dict[str, Backend] = {}

    def backend(self, name: str, interface: str = "127.0.0.1", port: int | None = None) -> Backend:
        b = Backend(name, port, interface).start()
        self.addCleanup(b.stop)
        self.backends[name] = b
        return b

    def dnsServer(self) -> DNSServer:
        server = DNSServer(self.dir).start()
        self.addCleanup(server.stop)
        return server

    def gateway(self, text: str, files: dict[str, str] | None = None) -> GatewayProcess:
        gw = GatewayProcess(text, files=files)
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        gw.start()
        return gw

    def traffic(self, gw: GatewayProcess) -> Traffic:
        t = Traffic(gw.port).start()
        self.addCleanup(t.stop)
        return t

    def targets(self, gw: GatewayProcess) -> list[dict[str, Any]]:
        resp = request(gw.adminPort, "GET", "/api/upstreams", AUTH)
        self.assertEqual(resp.status, 200, resp)
        (app,) = [u for u in resp.json()["upstreams"] if u["name"] == "app"]
        return list(app["targets"])

    def urls(self, gw: GatewayProcess, state: str | None = None) -> set[str]:
        return {t["url"] for t in self.targets(gw) if state is None or t["state"] == state}

    def waitServedBy(self, traffic: Traffic, names: set[str], n: int = 20) -> None:
        """Wait until the last C{n} answers came from exactly C{names}."""
        waitFor(lambda: len(traffic.results) >= n and {b for _, b in traffic.results[-n:]} == names,
                what=f"traffic served by {sorted(names)}")

    def metric(self, gw: GatewayProcess, pattern: str) -> float:
        text = request(gw.adminPort, "GET", "/metrics", AUTH).body.decode()
        total = 0.0
        for line in text.splitlines():
            if re.match(pattern, line):
                total += float(line.rsplit(" ", 1)[1])
        return total


class DNSDiscoveryTests(DiscoveryTestBase):
    def test_recordsAddedAndRemovedOnTheirTTL(self) -> None:
        """
        A/AAAA answers become the upstream's targets: a record added starts
        taking traffic, a record removed stops, with no failed request, on a
        1s TTL while refresh is 60s (so the TTL's expiry is what re-resolves).
        """
        b2 = self.backend("b2", "127.0.0.2")
        self.backend("b3", "127.0.0.3", b2.port)
        dns = self.dnsServer()
        dns.set("api.test", ["A", "127.0.0.2", 1])
        gw = self.gateway(config(f"      - {{dns: api.test, port: {b2.port}, refresh: 60s}}", nameserver=dns.port))
        waitFor(lambda: self.urls(gw) == {f"http://127.0.0.2:{b2.port}"}, what="the first answer")
        self.assertEqual({t["source"] for t in self.targets(gw)}, {"dns"})
        traffic = self.traffic(gw)
        self.waitServedBy(traffic, {"b2"})

        dns.set("api.test", ["A", "127.0.0.2", 1], ["A", "127.0.0.3", 1])
        waitFor(lambda: len(self.urls(gw)) == 2, what="the added record")
        self.waitServedBy(traffic, {"b2", "b3"})

        dns.set("api.test", ["A", "127.0.0.3", 1])
        waitFor(lambda: self.urls(gw) == {f"http://127.0.0.3:{b2.port}"}, what="the removed record")
        self.waitServedBy(traffic, {"b3"})
        traffic.stop()
        self.assertEqual(traffic.failures(), [])
        self.assertGreaterEqual(self.metric(gw, r'txgateway_discovery_refreshes_total\{.*outcome="changed"'), 3)
        self.assertEqual(self.metric(gw, r'txgateway_upstream_targets\{.*state="active"'), 1)

    def test_srvPortsAndWeights(self) -> None:
        """SRV records give each target its port and weight; weighted round robin follows them."""
        b1 = self.backend("b1")
        b2 = self.backend("b2")
        dns = self.dnsServer()
        dns.set("_http._tcp.api.test", ["SRV", "one.api.test", b1.port, 3, 5],
                ["SRV", "two.api.test", b2.port, 1, 5])
        dns.set("one.api.test", ["A", "127.0.0.1", 5])
        dns.set("two.api.test", ["A", "127.0.0.1", 5])
        gw = self.gateway(config("      - {dns_srv: _http._tcp.api.test}", "    balancer: weighted_round_robin",
                                 nameserver=dns.port))
        waitFor(lambda: len(self.urls(gw)) == 2, what="the SRV answer")
        weights = {t["url"]: t["weight"] for t in self.targets(gw)}
        self.assertEqual(weights, {b1.url: 3, b2.url: 1})
        seen = Counter(request(gw.port, "GET", "/echo").header("X-Backend") for _ in range(40))
        self.assertEqual(seen, Counter({"b1": 30, "b2": 10}))

    def test_serverDownKeepsTheLastGoodSet(self) -> None:
        """With the DNS server gone, the gateway keeps serving the targets it knew, and counts the failures."""
        b2 = self.backend("b2", "127.0.0.2")
        dns = self.dnsServer()
        dns.set("api.test", ["A", "127.0.0.2", 1])
        gw = self.gateway(config(f"      - {{dns: api.test, port: {b2.port}, refresh: 2s}}", nameserver=dns.port))
        waitFor(lambda: len(self.urls(gw)) == 1, what="the first answer")
        traffic = self.traffic(gw)
        dns.stop()
        waitFor(lambda: self.metric(gw, r'txgateway_discovery_refreshes_total\{.*outcome="failed"') >= 2,
                timeout=30, what="failed refreshes counted")
        self.assertEqual(self.urls(gw), {b2.url})
        self.waitServedBy(traffic, {"b2"})
        traffic.stop()
        self.assertEqual(traffic.failures(), [])
        self.assertIn("refresh failed", gw.log())


class FileDiscoveryTests(DiscoveryTestBase):
    def test_fileRewritten(self) -> None:
        """A targets file rewritten by another tool changes the targets, without a reload."""
        b1, b2 = self.backend("b1"), self.backend("b2")
        gw = self.gateway(config("      - {file: targets.yaml, watch: 200ms}"), files={"targets.yaml": f"- {b1.url}\n"})
        waitFor(lambda: self.urls(gw) == {b1.url}, what="the file's targets")
        self.assertEqual({t["source"] for t in self.targets(gw)}, {"file"})
        traffic = self.traffic(gw)
        self.waitServedBy(traffic, {"b1"})
        (gw.dir / "targets.yaml").write_text(f"- url: {b2.url}\n  weight: 2\n")
        waitFor(lambda: self.urls(gw) == {b2.url}, what="the rewritten file's targets")
        self.waitServedBy(traffic, {"b2"})
        traffic.stop()
        self.assertEqual(traffic.failures(), [])
        self.assertNotIn("config reloaded", gw.log())


class RuntimeControlTests(DiscoveryTestBase):
    def control(self, gw: GatewayProcess, backend: Backend, action: str, body: dict[str, Any] | None = None) -> Any:
        method = "PUT" if action == "weight" else "POST"
        data = json.dumps(body).encode() if body is not None else None
        resp = request(gw.adminPort, method, f"/api/upstreams/app/targets/127.0.0.1:{backend.port}/{action}",
                       {**AUTH, "Content-Type": "application/json"}, data)
        self.assertEqual(resp.status, 200, resp)
        return resp.json()

    def test_drainDisableWeightEnableUnderLoad(self) -> None:
        """
        Drain, disable, re-weight and enable through the admin API while
        requests flow: the target stops getting new requests at once, its
        in-flight ones finish, nothing fails; a reload drops the changes
        and says so.
        """
        b1, b2 = self.backend("b1"), self.backend("b2")
        gw = self.gateway(config(f"      - {b1.url}\n      - {b2.url}", "    balancer: weighted_round_robin"))
        traffic = self.traffic(gw)
        self.waitServedBy(traffic, {"b1", "b2"})

        answer = self.control(gw, b1, "drain")
        self.assertEqual(answer["target"]["state"], "draining")
        self.waitServedBy(traffic, {"b2"})
        waitFor(lambda: all(t["in_flight"] == 0 for t in self.targets(gw) if t["url"] == b1.url),
                what="the drained target's in-flight requests to finish")
        before = b1.count()
        mark = len(traffic.results)
        waitFor(lambda: len(traffic.results) > mark + 20, what="more traffic")
        self.assertEqual(b1.count(), before + 1)  # only the /count asked in between
        self.assertEqual({t["url"]: t["state"] for t in self.targets(gw)}, {b1.url: "draining", b2.url: "active"})
        page = request(gw.adminPort, "GET", "/", AUTH).body.decode()
        self.assertIn(f'data-host-port="127.0.0.1:{b1.port}" data-action="enable">Enable</button>', page)
        self.assertIn(f'data-host-port="127.0.0.1:{b2.port}" data-action="drain">Drain</button>', page)

        self.control(gw, b1, "enable")
        self.waitServedBy(traffic, {"b1", "b2"})
        self.control(gw, b2, "disable")
        self.waitServedBy(traffic, {"b1"})
        self.control(gw, b2, "enable")
        self.control(gw, b2, "weight", {"weight": 3})
        self.waitServedBy(traffic, {"b1", "b2"})
        mark = len(traffic.results)
        waitFor(lambda: len(traffic.results) > mark + 80, what="weighted traffic")
        split = Counter(b for _, b in traffic.since(mark + 1)[:80])
        self.assertEqual(split, Counter({"b2": 60, "b1": 20}))

        self.control(gw, b1, "drain")
        self.waitServedBy(traffic, {"b2"})
        self.assertEqual(request(gw.adminPort, "POST", "/api/config/reload", AUTH).status, 200)
        waitFor(lambda: "runtime target change(s) (admin API) dropped" in gw.log(), what="the reload's log line")
        self.assertIn(f"app 127.0.0.1:{b1.port} draining", gw.log())
        reloads = request(gw.adminPort, "GET", "/api/reloads", AUTH).json()["reloads"]
        self.assertEqual(sorted(reloads[0]["dropped_runtime_changes"]),
                         sorted([f"app 127.0.0.1:{b1.port} draining", f"app 127.0.0.1:{b2.port} active weight 3"]))
        self.waitServedBy(traffic, {"b1", "b2"})
        traffic.stop()
        self.assertEqual(traffic.failures(), [])

    def test_answers(self) -> None:
        """Unknown upstream or target: 404; bad weight: 400; wrong method: 405; no token: 401."""
        b1 = self.backend("b1")
        gw = self.gateway(config(f"      - {b1.url}"))
        base = f"/api/upstreams/app/targets/127.0.0.1:{b1.port}"
        self.assertEqual(request(gw.adminPort, "POST", base + "/drain").status, 401)
        self.assertEqual(request(gw.adminPort, "POST", "/api/upstreams/nope/targets/127.0.0.1:1/drain", AUTH).status,
                         404)
        self.assertEqual(request(gw.adminPort, "POST", "/api/upstreams/app/targets/127.0.0.1:1/drain", AUTH).status,
                         404)
        self.assertEqual(request(gw.adminPort, "GET", base + "/drain", AUTH).status, 405)
        self.assertEqual(request(gw.adminPort, "PUT", base + "/weight", AUTH, b'{"weight": 0}').status, 400)
        self.assertEqual(request(gw.adminPort, "PUT", base + "/weight", AUTH, b"nonsense").status, 400)
