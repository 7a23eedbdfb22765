"""
Parsing the discovery keys (target items, discovery.nameservers,
slow_start) into specs, and the slow-start ramp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.config.errors import Problem
from txgateway.config.parser_discovery import isSourceItem, parseSourceItem
from txgateway.config.parser_discovery import parseDiscovery as _parseDiscovery
from txgateway.config.parser_discovery import parseSlowStart as _parseSlowStart
from txgateway.config.schema_discovery import DiscoveryConfig, DnsSpec, DnsSrvSpec, FileSpec
from txgateway.config.source import YAMLMap
from txgateway.discovery.build import makeSource
from txgateway.discovery.dns import AddressSource, ServiceSource
from txgateway.discovery.files import FileSource
from txgateway.discovery.slowstart import rampedWeight, rampEnds, slowStartFraction

BASE = Path("/etc/txgateway")
PATH = "upstreams.api.targets[1]"


def LinedDict(items: dict[str, Any], line: int, lines: dict[str, int]) -> YAMLMap:
    """A mapping as the config loader gives it: with the line of each key."""
    m = YAMLMap(items)
    m.line = line
    m.lines = dict(lines)
    return m


def triples(problems: list[Problem]) -> list[tuple[str, int | None, str]]:
    return [(p.path, p.line, p.message) for p in problems]


def parseDiscovery(value: Any) -> tuple[DiscoveryConfig, list[tuple[str, int | None, str]]]:
    config, problems = _parseDiscovery(value)
    return config, triples(problems)


def parseSlowStart(value: Any, path: str, line: int | None) -> tuple[float, list[tuple[str, int | None, str]]]:
    seconds, problems = _parseSlowStart(value, path, line)
    return seconds, triples(problems)


class SourceItemTests(SynchronousTestCase):
    def parse(self, item: dict[str, Any]) -> tuple[Any, list[tuple[str, int | None, str]]]:
        self.assertTrue(isSourceItem(item))
        spec, problems = parseSourceItem(item, PATH, 7, BASE)
        return spec, triples(problems)

    def test_notASourceItem(self) -> None:
        """URLs and url:/weight: mappings are left to the config package."""
        self.assertFalse(isSourceItem("http://a:1"))
        self.assertFalse(isSourceItem({"url": "http://a:1", "weight": 2}))

    def test_dnsDefaults(self) -> None:
        """{dns: NAME, port: P}: http, refresh 10s, keep on empty, both families."""
        spec, problems = self.parse({"dns": "API.default.svc.cluster.local.", "port": 8000})
        self.assertEqual(problems, [])
        self.assertEqual(spec, DnsSpec("api.default.svc.cluster.local", 8000, "http", 10.0, "keep", "any"))

    def test_dnsEverything(self) -> None:
        """Every key of a dns item is read."""
        spec, problems = self.parse({"dns": "api.svc", "port": 8443, "scheme": "https", "refresh": "30s",
                                     "on_empty": "drop", "family": "ipv6"})
        self.assertEqual(problems, [])
        self.assertEqual(spec, DnsSpec("api.svc", 8443, "https", 30.0, "drop", "ipv6"))

    def test_dnsPortDefaultsByScheme(self) -> None:
        """Without port:, 80 for http and 443 for https."""
        self.assertEqual(self.parse({"dns": "a.svc", "scheme": "https"})[0].port, 443)

    def test_srv(self) -> None:
        """{dns_srv: _http._tcp.NAME}: no port key (SRV gives ports)."""
        spec, problems = self.parse({"dns_srv": "_http._tcp.api.svc", "refresh": "5s"})
        self.assertEqual(problems, [])
        self.assertEqual(spec, DnsSrvSpec("_http._tcp.api.svc", "http", 5.0))
        _, problems = self.parse({"dns_srv": "_http._tcp.api.svc", "port": 80})
        self.assertEqual([p[0] for p in problems], [f"{PATH}.port"])

    def test_file(self) -> None:
        """{file: PATH}: relative to the config file's directory; watch interval."""
        spec, problems = self.parse({"file": "targets/api.yaml", "watch": "500ms"})
        self.assertEqual(problems, [])
        self.assertEqual(spec, FileSpec(BASE / "targets/api.yaml", 0.5, "keep"))
        self.assertEqual(self.parse({"file": "/srv/t.yaml"})[0].path, Path("/srv/t.yaml"))

    def test_problemsNameKeyPathAndLine(self) -> None:
        """Each bad key is reported at its own path and line, all of them at once."""
        item = LinedDict({"dns": "api.svc", "port": 0, "refresh": "soon", "on_empty": "maybe", "colour": "red"},
                         line=10, lines={"dns": 10, "port": 11, "refresh": 12, "on_empty": 13, "colour": 14})
        spec, problems = self.parse(item)
        self.assertIsNone(spec)
        self.assertEqual(sorted((p[0], p[1]) for p in problems),
                         [(f"{PATH}.colour", 14), (f"{PATH}.on_empty", 13), (f"{PATH}.port", 11),
                          (f"{PATH}.refresh", 12)])
        messages = " ".join(p[2] for p in problems)
        self.assertIn("not a port number", messages)
        self.assertIn("not a duration", messages)
        self.assertIn("keep, drop", messages)
        self.assertIn("unknown key", messages)

    def test_badNames(self) -> None:
        """A DNS item needs a name, not an address or a URL; two kinds in one item are refused."""
        for item, words in [({"dns": "10.0.0.1", "port": 80}, "list it as a URL"),
                            ({"dns": "http://api.svc", "port": 80}, "not a DNS name"),
                            ({"dns": None, "port": 80}, "must be a DNS name"),
                            ({"dns": "a.svc", "file": "t.yaml"}, "one source per item"),
                            ({"file": ""}, "path of a targets file"),
                            ({"dns": "a.svc", "refresh": "0s"}, "greater than zero")]:
            spec, problems = self.parse(item)
            self.assertIsNone(spec, item)
            self.assertTrue(any(words in p[2] for p in problems), (item, problems))


class DiscoverySectionTests(SynchronousTestCase):
    def test_absent(self) -> None:
        """No discovery: section: the system resolver."""
        self.assertEqual(parseDiscovery(None), (DiscoveryConfig(), []))

    def test_nameservers(self) -> None:
        """Addresses with an optional port (53 by default), IPv6 in brackets."""
        config, problems = parseDiscovery({"nameservers": ["127.0.0.1:5353", "10.96.0.10", "[::1]:53", "fd00::53"]})
        self.assertEqual(problems, [])
        self.assertEqual(config.nameservers, (("127.0.0.1", 5353), ("10.96.0.10", 53), ("::1", 53), ("fd00::53", 53)))
        self.assertEqual(parseDiscovery({"nameservers": "127.0.0.1:53"})[0].nameservers, (("127.0.0.1", 53),))

    def test_badNameservers(self) -> None:
        """A host name or a bad port is refused at its list index."""
        _, problems = parseDiscovery({"nameservers": ["dns.google", "127.0.0.1:99999"], "cache": True})
        self.assertEqual(sorted(p[0] for p in problems),
                         ["discovery.cache", "discovery.nameservers[0]", "discovery.nameservers[1]"])
        self.assertEqual(parseDiscovery([1])[1], [("discovery", None, "must be a mapping")])


class SlowStartTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """slow_start is a duration, 0 when absent."""
        self.assertEqual(parseSlowStart(None, "upstreams.api.slow_start", 3), (0.0, []))
        self.assertEqual(parseSlowStart("30s", "upstreams.api.slow_start", 3), (30.0, []))
        self.assertEqual(parseSlowStart("-1s", "upstreams.api.slow_start", 3)[1][0][:2], ("upstreams.api.slow_start", 3))

    def test_ramp(self) -> None:
        """From the minimum share at once to the full weight at slow_start, linearly."""
        self.assertEqual(slowStartFraction(0, 30), 0.1)
        self.assertAlmostEqual(slowStartFraction(15, 30), 0.55)
        self.assertEqual(slowStartFraction(30, 30), 1.0)
        self.assertEqual(slowStartFraction(99, 30), 1.0)
        self.assertEqual(slowStartFraction(-5, 30), 0.1)
        self.assertEqual(slowStartFraction(0, 0), 1.0)

    def test_rampedWeight(self) -> None:
        """Integer weights keep their proportion and never reach zero."""
        self.assertEqual(rampedWeight(2, 30, 30), 200)
        self.assertEqual(rampedWeight(2, 0, 30), 20)
        self.assertEqual(rampedWeight(1, 0, 30, scale=1), 1)
        self.assertEqual(rampEnds(100.0, 30), 130.0)


class MakeSourceTests(SynchronousTestCase):
    def test_eachSpecItsSource(self) -> None:
        """Every spec kind builds its (not yet started) source."""
        clock = Clock()
        resolver: Any = object()
        a = makeSource(DnsSpec("api.svc", 8000, refresh=5.0, on_empty="drop"), resolver, clock)
        self.assertIsInstance(a, AddressSource)
        assert isinstance(a, AddressSource)
        self.assertEqual((a.port, a.refreshInterval, a.onEmpty, a.running), (8000, 5.0, "drop", 0))
        self.assertIsInstance(makeSource(DnsSrvSpec("_http._tcp.api.svc"), resolver, clock), ServiceSource)
        self.assertIsInstance(makeSource(FileSpec(Path("/srv/t.yaml")), resolver, clock), FileSource)


class WholeFileTests(SynchronousTestCase):
    def test_everyMistakeWithKeyPathAndLine(self) -> None:
        """In a whole file, as `txgateway check` reports it: each discovery mistake at its key path and line."""
        from txgateway.config import ConfigError, parseConfig

        text = """\
discovery:
  nameservers: ["dns.google", "127.0.0.1:53"]
upstreams:
  app:
    slow_start: soon
    targets:
      - http://a:1
      - {dns: api.svc, port: 0, refresh: fast}
      - {dns_srv: _http._tcp.api.svc, colour: red}
      - {file: ""}
routes:
  - {name: all, match: {path_prefix: /}, upstream: app}
"""
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text)
        self.assertEqual(sorted((p.path, p.line) for p in caught.exception.problems), [
            ("discovery.nameservers[0]", 2), ("upstreams.app.slow_start", 5),
            ("upstreams.app.targets[1].port", 8), ("upstreams.app.targets[1].refresh", 8),
            ("upstreams.app.targets[2].colour", 9), ("upstreams.app.targets[3].file", 10)])

    def test_aGoodFile(self) -> None:
        from txgateway.config import parseConfig

        config = parseConfig("""\
discovery: {nameservers: ["127.0.0.1:5353"]}
upstreams:
  app:
    slow_start: 30s
    targets:
      - http://a:1
      - {dns: api.svc, port: 8000}
      - {file: t.yaml}
routes:
  - {name: all, match: {path_prefix: /}, upstream: app}
""", baseDir=BASE)
        app = config.upstreams["app"]
        self.assertEqual(config.discovery.nameservers, (("127.0.0.1", 5353),))
        self.assertEqual(app.slow_start, 30.0)
        self.assertEqual([t.url for t in app.targets], ["http://a:1"])
        self.assertEqual(app.sources, (DnsSpec("api.svc", 8000), FileSpec(BASE / "t.yaml")))
