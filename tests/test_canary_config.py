"""
Parsing a route's canary keys (upstreams, sticky, canary_override, mirror)
from YAML as the config loader reads it: the specs, and each problem with
its key path and line.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from random import Random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txgateway.canary.split import Splitter
from txgateway.config.errors import Problem
from txgateway.config.parser_canary import (
    CANARY_ROUTE_KEYS,
    INTERNAL_NETWORKS,
    CanaryRouteSpec,
    CompareSpec,
    JsonCompareSpec,
    MirrorSpec,
    OverrideSpec,
    RedactSpec,
    StickySpec,
    WeightedUpstream,
    parseRouteCanary,
)
from txgateway.config.source import loadYAML

UPSTREAMS = ("model-v1", "model-v2", "model-v3")
PATH = "routes[0](predict)"


def parse(text: str, upstreams: tuple[str, ...] = UPSTREAMS) -> tuple[CanaryRouteSpec, list[Problem]]:
    """Parse one route written as YAML at the top of a document (so line 1 is `name: predict`)."""
    route, repeated = loadYAML(text, "gw.yaml")
    assert not repeated, repeated
    return parseRouteCanary(route, PATH, 1, upstreams)


def problems(text: str) -> list[tuple[str, int | None, str]]:
    return [(p.path, p.line, p.message) for p in parse(text)[1]]


class UpstreamsTests(SynchronousTestCase):
    def test_weightedUpstreams(self) -> None:
        spec, found = parse("name: predict\n"
                            "upstreams:\n"
                            "  - {name: model-v1, weight: 95}\n"
                            "  - {name: model-v2, weight: 5}\n")
        self.assertEqual(found, [])
        self.assertEqual(spec.upstreams, (WeightedUpstream("model-v1", 95), WeightedUpstream("model-v2", 5)))
        self.assertTrue(spec.active)
        self.assertEqual(Splitter.fromSpec("predict", spec, Random(1)).split.weights, (95, 5))

    def test_plainRouteIsInactive(self) -> None:
        spec, found = parse("name: predict\nupstream: model-v1\n")
        self.assertEqual((spec, found), (CanaryRouteSpec(), []))
        self.assertFalse(spec.active)

    def test_upstreamProblems(self) -> None:
        """Unknown and repeated names, bad or missing weights, unknown keys: each at its line."""
        found = problems("name: predict\n"
                         "upstreams:\n"
                         "  - {name: model-v1, weight: 95}\n"
                         "  - {name: model-v9, weight: 5}\n"
                         "  - {name: model-v1, weight: 1}\n"
                         "  - {name: model-v2, weight: -1}\n"
                         "  - {name: model-v3}\n"
                         "  - {name: model-v3, weight: 2, share: 3}\n"
                         "  - just-a-name\n")
        self.assertEqual(found, [
            ("routes[0](predict).upstreams[1](model-v9).name", 4, "no upstream named 'model-v9'"),
            ("routes[0](predict).upstreams[2](model-v1).name", 5, "upstream 'model-v1' is listed twice"),
            ("routes[0](predict).upstreams[3](model-v2).weight", 6, "must be at least 0"),
            ("routes[0](predict).upstreams[4](model-v3).weight", 7, "is required (a whole number, 0 or more)"),
            ("routes[0](predict).upstreams[5](model-v3).share", 8, "unknown key (expected one of: name, weight)"),
            ("routes[0](predict).upstreams[5](model-v3).name", 8, "upstream 'model-v3' is listed twice"),
            ("routes[0](predict).upstreams[6]", 9, "must be a mapping {name: UPSTREAM, weight: N}"),
        ])

    def test_allZero(self) -> None:
        found = problems("name: predict\nupstreams:\n  - {name: model-v1, weight: 0}\n  - {name: model-v2, weight: 0}\n")
        self.assertEqual(found, [("routes[0](predict).upstreams", 2,
                                  "every weight is 0: at least one upstream must take traffic")])

    def test_notAList(self) -> None:
        self.assertEqual(problems("name: predict\nupstreams: model-v1\n"), [
            ("routes[0](predict).upstreams", 2, "must be a list of {name: UPSTREAM, weight: N}, at least one")])

    def test_upstreamAndUpstreams(self) -> None:
        found = problems("name: predict\nupstream: model-v1\nupstreams:\n  - {name: model-v1, weight: 1}\n")
        self.assertEqual(found, [("routes[0](predict).upstreams", 3,
                                  "give upstream (one) or upstreams (a weighted split), not both")])


class StickyAndOverrideTests(SynchronousTestCase):
    SPLIT = "name: predict\nupstreams:\n  - {name: model-v1, weight: 95}\n  - {name: model-v2, weight: 5}\n"

    def test_stickyKeys(self) -> None:
        for key in ("header:X-User", "cookie:session", "client_ip", "consumer"):
            spec, found = parse(self.SPLIT + f"sticky: {{key: \"{key}\"}}\n")
            self.assertEqual((spec.sticky, found), (StickySpec(key), []), key)

    def test_badStickyKey(self) -> None:
        self.assertEqual(problems(self.SPLIT + "sticky:\n  key: header:X User\n"), [
            ("routes[0](predict).sticky.key", 6, "not a valid header name: 'X User'")])
        self.assertEqual(problems(self.SPLIT + "sticky: {key: ip}\n"), [
            ("routes[0](predict).sticky.key", 5, "'ip' is not one of: header:NAME, cookie:NAME, client_ip, consumer")])
        self.assertEqual(problems(self.SPLIT + "sticky: {}\n"), [
            ("routes[0](predict).sticky.key", 5, "is required (header:NAME, cookie:NAME, client_ip or consumer)")])

    def test_overrideDefaults(self) -> None:
        """{header: X-Canary, trusted_only: true}: internal networks are trusted."""
        spec, found = parse(self.SPLIT + "canary_override: {header: X-Canary, trusted_only: true}\n")
        self.assertEqual(found, [])
        self.assertEqual(spec.override, OverrideSpec("X-Canary", True, INTERNAL_NETWORKS, ()))

    def test_overrideEverything(self) -> None:
        spec, found = parse(self.SPLIT + "canary_override:\n  header: X-Version\n  trusted_only: true\n"
                                         "  trusted_clients: [198.51.100.0/24]\n  trusted_consumers: [qa]\n")
        self.assertEqual(found, [])
        self.assertEqual(spec.override, OverrideSpec("X-Version", True, (ipaddress.ip_network("198.51.100.0/24"),),
                                                     ("qa",)))

    def test_overrideProblems(self) -> None:
        found = problems(self.SPLIT + "canary_override:\n  header: X Canary\n  trusted_only: yes please\n"
                                      "  trusted_clients: [not-a-net]\n  who: me\n")
        self.assertEqual(found, [
            ("routes[0](predict).canary_override.who", 9, "unknown key (expected one of: header, trusted_clients, "
                                                          "trusted_consumers, trusted_only)"),
            ("routes[0](predict).canary_override.trusted_clients[0]", 8, "not an IP address or CIDR: 'not-a-net'"),
            ("routes[0](predict).canary_override.header", 6, "not a valid header name: 'X Canary'"),
            ("routes[0](predict).canary_override.trusted_only", 7, "not true or false: 'yes please'"),
        ])

    def test_needUpstreams(self) -> None:
        """sticky and canary_override choose among upstreams: a route with one upstream has none to choose."""
        found = problems("name: predict\nupstream: model-v1\nsticky: {key: client_ip}\ncanary_override: {}\n")
        self.assertEqual(found, [("routes[0](predict).sticky", 3, "needs upstreams: a weighted split to choose from"),
                                 ("routes[0](predict).canary_override", 4,
                                  "needs upstreams: a weighted split to choose from")])


class MirrorConfigTests(SynchronousTestCase):
    def test_issueExample(self) -> None:
        """The issue's mirror, with YAML's 1e-6 (read as text) as a number."""
        spec, found = parse("name: predict\nupstream: model-v1\n"
                            "mirror:\n"
                            "  upstream: model-v2\n"
                            "  percent: 10\n"
                            "  timeout: 5s\n"
                            "  max_body: 1MiB\n"
                            "  queue: 50\n"
                            "  compare:\n"
                            "    headers: [Content-Type]\n"
                            "    json: {ignore: [\"$.meta.latency\", \"$.items[*].id\"], absolute: 1e-6, relative: 1e-3}\n"
                            "    redact: {headers: [X-Tenant], json: [$.user.email]}\n")
        self.assertEqual(found, [])
        self.assertEqual(spec.mirror, MirrorSpec(
            upstream="model-v2", percent=10.0, timeout=5.0, max_body=1024 * 1024, queue=50, concurrency=10,
            compare=CompareSpec(status=True, headers=("Content-Type",), body="json",
                                json=JsonCompareSpec(("$.meta.latency", "$.items[*].id"), 1e-6, 1e-3),
                                redact=RedactSpec(("X-Tenant",), ("$.user.email",)), samples=20)))
        self.assertTrue(spec.active)

    def test_defaults(self) -> None:
        spec, found = parse("name: predict\nupstream: model-v1\nmirror: {upstream: model-v2, compare: true}\n")
        self.assertEqual(found, [])
        self.assertEqual(spec.mirror, MirrorSpec("model-v2", compare=CompareSpec()))
        spec, _ = parse("name: predict\nupstream: model-v1\nmirror: {upstream: model-v2, percent: 2.5%}\n")
        self.assertEqual((spec.mirror.percent, spec.mirror.compare), (2.5, None))  # type: ignore[union-attr]

    def test_mirrorProblems(self) -> None:
        found = problems("name: predict\nupstream: model-v1\n"
                         "mirror:\n"
                         "  upstream: model-v2\n"
                         "  percent: 150\n"
                         "  timeout: 0s\n"
                         "  max_body: lots\n"
                         "  queue: 0\n"
                         "  retries: 3\n"
                         "  compare:\n"
                         "    body: xml\n"
                         "    json: {ignore: [meta.latency], absolute: -1, relative: tiny}\n"
                         "    samples: -2\n")
        self.assertEqual(found, [
            ("routes[0](predict).mirror.retries", 9, "unknown key (expected one of: compare, concurrency, max_body, "
                                                      "percent, queue, timeout, upstream)"),
            ("routes[0](predict).mirror.compare.json.ignore[0]", 12,
             "a JSON path starts with $ (e.g. $.meta.latency), not 'meta.latency'"),
            ("routes[0](predict).mirror.compare.json.absolute", 12, "must be zero or more"),
            ("routes[0](predict).mirror.compare.json.relative", 12, "not a number: 'tiny' (write e.g. 1e-6 or 0.001)"),
            ("routes[0](predict).mirror.compare.body", 11, "'xml' is not one of: json, bytes, ignore"),
            ("routes[0](predict).mirror.compare.samples", 13, "must be at least 0"),
            ("routes[0](predict).mirror.percent", 5, "must be between 0 and 100"),
            ("routes[0](predict).mirror.timeout", 6, "must be greater than zero"),
            ("routes[0](predict).mirror.max_body", 7, "not a size: 'lots' (write e.g. 512KiB, 10MiB)"),
            ("routes[0](predict).mirror.queue", 8, "must be at least 1"),
        ])

    def test_mirrorUpstreamRequiredAndKnown(self) -> None:
        self.assertEqual(problems("name: predict\nupstream: model-v1\nmirror: {percent: 10}\n"), [
            ("routes[0](predict).mirror.upstream", 3, "is required: the upstream that receives the copies")])
        spec, found = parse("name: predict\nupstream: model-v1\nmirror: {upstream: nope}\n")
        self.assertEqual([(p.path, p.message) for p in found],
                         [("routes[0](predict).mirror.upstream", "no upstream named 'nope'")])
        self.assertIsNone(spec.mirror)

    def test_plainDictsWithoutLines(self) -> None:
        """A mapping built in code (no lines) parses too; problems then carry the route's line."""
        route: dict[str, Any] = {"upstreams": [{"name": "model-v1", "weight": "x"}]}
        spec, found = parseRouteCanary(route, PATH, 42, UPSTREAMS)
        self.assertEqual([(p.path, p.line) for p in found], [("routes[0](predict).upstreams[0](model-v1).weight", 42)])

    def test_knownKeys(self) -> None:
        self.assertEqual(CANARY_ROUTE_KEYS, ("upstreams", "sticky", "canary_override", "mirror"))


class LayeringTests(SynchronousTestCase):
    def test_runtimeModulesImportNoConfig(self) -> None:
        """Only the parser touches the config package: the running parts (and the specs) stay below it."""
        code = ("import json, sys\n"
                "import txgateway.canary.build, txgateway.canary.split, txgateway.canary.mirror\n"
                "print(json.dumps(sorted(m for m in sys.modules if m.startswith('txgateway.'))))\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        self.assertEqual(json.loads(out), sorted([
            "txgateway.canary", "txgateway.canary.build", "txgateway.canary.compare", "txgateway.canary.interfaces",
            "txgateway.canary.jsonpath", "txgateway.canary.mirror", "txgateway.canary.specs",
            "txgateway.canary.split"]))


class RouteParserTests(SynchronousTestCase):
    """The whole config parser: canary keys on a route, problems with the route's name, key path and line."""

    HEAD = ("upstreams:\n  model-v1: {targets: ['http://127.0.0.1:9001']}\n"
            "  model-v2: {targets: ['http://127.0.0.1:9002']}\nroutes:\n")

    def problems(self, route: str) -> list[tuple[str, int | None, str]]:
        from txgateway.config import ConfigError, parseConfig

        try:
            parseConfig(self.HEAD + route)
        except ConfigError as e:
            return [(p.path, p.line, p.message) for p in e.problems]
        return []

    def test_splitRoute(self) -> None:
        from txgateway.config import parseConfig

        config = parseConfig(self.HEAD + "  - name: predict\n    upstreams: [{name: model-v1, weight: 95}, "
                             "{name: model-v2, weight: 5}]\n    sticky: {key: consumer}\n"
                             "    mirror: {upstream: model-v2, percent: 10}\n")
        route = config.routes[0]
        self.assertEqual(route.upstream, "model-v1")  # what single-upstream readers show
        self.assertEqual([(u.name, u.weight) for u in route.canary.upstreams], [("model-v1", 95), ("model-v2", 5)])
        self.assertEqual(route.canary.sticky, StickySpec("consumer"))
        self.assertEqual(route.canary.mirror, MirrorSpec("model-v2", percent=10.0))

    def test_mistakesNameTheRouteKeyAndLine(self) -> None:
        found = self.problems("  - name: predict\n    upstreams: [{name: model-v1, weight: 95}, "
                              "{name: model-v3, weight: 5}]\n    mirror: {upstream: nowhere}\n")
        self.assertEqual(len(found), 2, found)
        self.assertTrue(all(p.startswith("routes[0](predict).") for p, _, _ in found), found)
        self.assertTrue(any("model-v3" in m for _, _, m in found), found)
        self.assertTrue(any("nowhere" in m and line == 7 for _, line, m in found), found)

    def test_upstreamOrUpstreamsIsRequired(self) -> None:
        self.assertEqual(self.problems("  - name: predict\n"),
                         [("routes[0](predict).upstream", 5, "is required")])

    def test_cacheOnASplitRouteIsRefused(self) -> None:
        found = self.problems("  - name: predict\n    upstreams: [{name: model-v1, weight: 1}]\n    cache: true\n")
        self.assertEqual([p for p, _, _ in found], ["routes[0](predict).cache"])
