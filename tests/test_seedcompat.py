"""
The seeds' own interfaces: go-reverse-proxy's YAML and environment variables,
`txgateway convert`, `cache.default_ttl`, and the workshop gateway's
ENVIRONMENT and /health fields.
"""

from __future__ import annotations

import io
import json
import tempfile
from types import SimpleNamespace
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from txgateway import convert
from txgateway.caching import policy as p
from txgateway.cli import main as cliMain
from txgateway.config import ConfigError, configFromEnvironment, loadConfig, parseConfig
from txgateway.config.seeds import (
    GoSettings,
    SeedError,
    goSettings,
    metricsListen,
    parseGoProxy,
    toDocument,
)
from txgateway.workshop import labelledFormatter, workshopHealth

# go-reverse-proxy's README example, with the two services its users run.
PROXY_CONFIG = """\
proxy:
  listen:
    address: "127.0.0.1"
    port: 8080
  services:
    - name: users
      domain: users.com
      hosts:
        - address: "10.0.0.1"
          port: 9090
        - address: "10.0.0.2"
          port: 9090
    - name: shop
      domain: shop.com
      hosts:
        - address: "10.0.1.1"
          port: 9090
        - address: "10.0.1.2"
          port: 9090
"""


def tempFile(text: str, suffix: str = ".yaml") -> str:
    with tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False) as f:
        f.write(text)
    return f.name


class ConvertTests(SynchronousTestCase):
    def cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cliMain(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    def test_convertedConfigLoadsAndRoutesLikeGoReverseProxy(self) -> None:
        """Each service is a route on its Host under /proxy (stripped), round robin over its hosts."""
        code, out, err = self.cli("convert", tempFile(PROXY_CONFIG))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("# ", out)  # commented, for the user to grow
        config = loadConfig(tempFile(out), {})
        self.assertEqual(config.server.listen, "tcp:8080:interface=127.0.0.1")
        users = config.upstreams["users"]
        self.assertEqual([t.url for t in users.targets], ["http://10.0.0.1:9090", "http://10.0.0.2:9090"])
        self.assertEqual(users.balancer, "round_robin")
        self.assertEqual(users.retries.attempts, 4)
        route = next(r for r in config.routes if r.name == "users")
        self.assertEqual((route.match.host, route.match.path_prefix, route.strip_prefix), ("users.com", "/proxy", "/proxy"))
        self.assertFalse(route.preserve_host)
        assert route.cache is not None
        self.assertEqual(route.cache.default_ttl, 60.0)

    def test_convertedTextIsTheDocumentTheParserGetsDirectly(self) -> None:
        """What convert prints and what loading the go file directly gives are the same config."""
        direct = loadConfig(tempFile(PROXY_CONFIG), {})
        _, out, _ = self.cli("convert", tempFile(PROXY_CONFIG))
        converted = loadConfig(tempFile(out), {})
        self.assertEqual(direct.upstreams, converted.upstreams)
        self.assertEqual(direct.routes, converted.routes)
        self.assertEqual(yaml.safe_load(out), toDocument(parseGoProxy(yaml.safe_load(PROXY_CONFIG)), GoSettings()))

    def test_environmentShapesTheConversion(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        env = {"MAX_HTTP_RETRIES": "0", "MAX_FORWARD_RETRIES": "1", "HTTP_CACHE_TTL_SECONDS": "0",
               "METRICS_ADDR": ":8090"}
        self.assertEqual(convert.main(tempFile(PROXY_CONFIG), out, err, env), 0)
        config = parseConfig(out.getvalue())
        self.assertEqual(config.upstreams["shop"].retries.attempts, 1)
        self.assertEqual([r.cache for r in config.routes], [None, None])
        assert config.admin is not None
        self.assertEqual(config.admin.listen, "tcp:8090:interface=127.0.0.1")

    def test_notGoReverseProxyExitsOne(self) -> None:
        code, out, err = self.cli("convert", tempFile("upstreams: {}\n"))
        self.assertEqual((code, out), (1, ""))
        self.assertIn("not a go-reverse-proxy configuration", err)

    def test_badServiceNamesItsPath(self) -> None:
        bad = PROXY_CONFIG.replace("port: 8080", "port: 80800").replace("      domain: shop.com\n", "")
        code, _, err = self.cli("convert", tempFile(bad))
        self.assertEqual(code, 1)
        self.assertIn("proxy.listen.port: must be a port number", err)
        self.assertIn("proxy.services[1].domain: is required", err)

    def test_unreadableFileExitsOne(self) -> None:
        code, _, err = self.cli("convert", "/nonexistent/proxyConfig.yaml")
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)

    def test_invalidYAMLExitsOne(self) -> None:
        code, _, err = self.cli("convert", tempFile("proxy: [\n"))
        self.assertEqual(code, 1)
        self.assertIn("not valid YAML", err)


class DirectLoadingTests(SynchronousTestCase):
    def test_goFileLoadsWithTheEnvironmentsValues(self) -> None:
        config = loadConfig(tempFile(PROXY_CONFIG), {"MAX_HTTP_RETRIES": "3", "MAX_FORWARD_RETRIES": "1",
                                                     "HTTP_CACHE_TTL_SECONDS": "5"})
        self.assertEqual(config.upstreams["users"].retries.attempts, 4)
        self.assertEqual([r.cache.default_ttl if r.cache else None for r in config.routes], [5.0, 5.0])

    def test_goFileMixedWithTxgatewayKeysIsRefusedWithTheLine(self) -> None:
        with self.assertRaises(ConfigError) as e:
            loadConfig(tempFile(PROXY_CONFIG + "routes: []\n"), {})
        rendered = e.exception.render()
        self.assertIn("routes", rendered)
        self.assertIn("txgateway convert", rendered)
        self.assertEqual(e.exception.problems[0].line, 20)

    def test_badVariableIsNamed(self) -> None:
        with self.assertRaises(ConfigError) as e:
            loadConfig(tempFile(PROXY_CONFIG), {"MAX_HTTP_RETRIES": "two"})
        self.assertEqual(e.exception.problems[0].path, "MAX_HTTP_RETRIES")

    def test_configurationFilenameInEnvOnlyMode(self) -> None:
        config = configFromEnvironment({"CONFIGURATION_FILENAME": tempFile(PROXY_CONFIG), "ENVIRONMENT": "staging"})
        self.assertEqual(sorted(config.upstreams), ["shop", "users"])
        self.assertEqual(config.server.environment, "staging")

    def test_variablesOverrideATxgatewayFile(self) -> None:
        """Retries on every upstream; default_ttl only on routes that already cache."""
        text = ("upstreams:\n  a: {targets: [http://127.0.0.1:1], retries: false}\n"
                "routes:\n  - {name: c, match: {path_prefix: /c}, upstream: a, cache: true}\n"
                "  - {name: n, match: {path_prefix: /n}, upstream: a}\n")
        config = loadConfig(tempFile(text), {"MAX_FORWARD_RETRIES": "1", "HTTP_CACHE_TTL_SECONDS": "30",
                                             "METRICS_ADDR": "127.0.0.1:9100", "ENVIRONMENT": "production"})
        self.assertEqual(config.upstreams["a"].retries.attempts, 3)  # 1 + MAX_HTTP_RETRIES' default 2
        caches = {r.name: r.cache for r in config.routes}
        assert caches["c"] is not None
        self.assertEqual(caches["c"].default_ttl, 30.0)
        self.assertIsNone(caches["n"])
        assert config.admin is not None
        self.assertEqual(config.admin.listen, "tcp:9100:interface=127.0.0.1")
        self.assertEqual(config.server.environment, "production")

    def test_envOnlyGatewayCachesWhenAskedTo(self) -> None:
        config = configFromEnvironment({"BACKEND_URL": "http://127.0.0.1:3000", "HTTP_CACHE_TTL_SECONDS": "10"})
        cache = config.routes[0].cache
        assert cache is not None
        self.assertEqual(cache.default_ttl, 10.0)
        self.assertIsNone(configFromEnvironment({}).routes[0].cache)

    def test_fileWithoutSeedVariablesIsUntouched(self) -> None:
        text = "upstreams:\n  a: {targets: [http://127.0.0.1:1]}\nroutes:\n  - {upstream: a, cache: true}\n"
        config = loadConfig(tempFile(text), {})
        self.assertIsNone(config.admin)
        self.assertIsNone(config.server.environment)
        assert config.routes[0].cache is not None
        self.assertIsNone(config.routes[0].cache.default_ttl)

    def test_settings(self) -> None:
        self.assertEqual(goSettings({}), GoSettings(2, 2, 60, None))
        with self.assertRaises(SeedError) as e:
            goSettings({"HTTP_CACHE_TTL_SECONDS": "-1", "METRICS_ADDR": "nope"})
        self.assertEqual([x[0] for x in e.exception.problems], ["HTTP_CACHE_TTL_SECONDS", "METRICS_ADDR"])
        self.assertEqual(metricsListen("0.0.0.0:8090"), "tcp:8090:interface=0.0.0.0")


DATE = b"Mon, 01 Jan 2024 00:00:00 GMT"


class DefaultTTLTests(SynchronousTestCase):
    """cache.default_ttl: freshness for responses that have none, never past the refusals."""

    def lifetime(self, code: int, headers: list[tuple[bytes, bytes]], default: float | None = 60.0) -> float:
        cc = p.parseCacheControl(p.headerValues(headers, b"cache-control"))
        return p.freshnessLifetime(code, headers, cc, 0.0, None, default)

    def refusal(self, headers: list[tuple[bytes, bytes]], rules: p.RequestRules | None = None) -> str | None:
        cc = p.parseCacheControl(p.headerValues(headers, b"cache-control"))
        return p.storeRefusal(b"GET", 200, headers, cc, rules or p.RequestRules(), 0.0, None, 60.0)

    def test_headerlessResponseGetsTheDefault(self) -> None:
        self.assertEqual(self.lifetime(200, []), 60.0)
        self.assertIsNone(self.refusal([]))
        self.assertEqual(self.lifetime(200, [], None), 0.0)

    def test_ownFreshnessWins(self) -> None:
        self.assertEqual(self.lifetime(200, [(b"cache-control", b"max-age=5")]), 5.0)
        self.assertEqual(self.lifetime(200, [(b"expires", b"0")]), 0.0)

    def test_errorsAreNotGivenTheDefault(self) -> None:
        self.assertEqual(self.lifetime(404, []), 0.0)

    def test_maxTTLStillCaps(self) -> None:
        self.assertEqual(p.freshnessLifetime(200, [], p.parseCacheControl([]), 0.0, 10.0, 60.0), 10.0)

    def test_neverOverridesNoStorePrivateOrAuthorization(self) -> None:
        self.assertEqual(self.refusal([(b"cache-control", b"no-store")]), "no-store")
        self.assertEqual(self.refusal([(b"cache-control", b"private")]), "private")
        self.assertEqual(self.refusal([], p.RequestRules(hasAuthorization=True)), "authorization")

    def test_storedEntryIsFreshForTheDefault(self) -> None:
        entry = p.StoredResponse(200, b"OK", [(b"date", DATE)], b"x", 0.0, 0.0)
        self.assertEqual(p.assess(entry, p.RequestRules(), 30.0, None, 60.0).action, p.FRESH)
        self.assertEqual(p.assess(entry, p.RequestRules(), 61.0, None, 60.0).action, p.VALIDATE)


class WorkshopTests(SynchronousTestCase):
    def report(self, usable: bool, probes: list[int | None]) -> dict[str, Any]:
        targets = [{"url": f"http://t{i}", "usable": usable} for i in range(len(probes))]
        clusters = {"backend": SimpleNamespace(endpoints=[SimpleNamespace(probeStatus=s) for s in probes])}
        report = {"status": "ok", "degraded": [], "upstreams": {"backend": {"usable": usable, "targets": targets}}}
        return workshopHealth(report, "staging", clusters)

    def test_backendFields(self) -> None:
        r = self.report(True, [None, 200])
        self.assertEqual((r["environment"], r["backend"], r["backend_status"]), ("staging", "ok", 200))
        self.assertNotIn("backend_error", r)

    def test_unreachable(self) -> None:
        r = self.report(False, [None])
        self.assertEqual(r["backend"], "unreachable")
        self.assertIn("backend_error", r)
        self.assertNotIn("backend_status", r)

    def test_jsonLogLinesCarryTheEnvironment(self) -> None:
        fmt = labelledFormatter(lambda e: json.dumps(e) + "\n", "production")
        self.assertEqual(json.loads(fmt({"a": 1}) or ""), {"environment": "production", "a": 1})
        self.assertEqual(json.loads(fmt({}) or ""), {"environment": "production"})
        text = labelledFormatter(lambda e: "plain\n", "production")
        self.assertEqual(text({}), "plain\n")
        unlabelled = labelledFormatter(lambda e: "{}\n", None)
        self.assertEqual(unlabelled({}), "{}\n")

    def test_configured(self) -> None:
        self.assertEqual(configFromEnvironment({"ENVIRONMENT": "production"}).server.environment, "production")
        self.assertEqual(parseConfig("server: {environment: staging}\nupstreams: {a: {targets: [http://h:1]}}\n"
                                     "routes: [{upstream: a}]\n").server.environment, "staging")

