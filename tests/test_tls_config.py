"""
C{upstreams.NAME.tls} in the config: parsed into a frozen L{UpstreamTLS},
files read and checked when the config loads, every problem naming its key
path and line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgateway.building import buildRuntime
from txgateway.config import ConfigError, UpstreamTLS, parseConfig
from txgateway.observe import Metrics

from .tlscerts import Authority


def _config(tls: str, target: str = "https://127.0.0.1:9443") -> str:
    return f"""\
upstreams:
  api:
    targets: [{target}]
    tls:
{tls}
routes:
  - match: {{path_prefix: /}}
    upstream: api
"""


class TLSConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.ca = Authority()
        (self.dir / "ca.crt").write_bytes(self.ca.pem)
        self.ca.issue(names=[], client=True).write(self.dir, "client")

    def parse(self, tls: str, target: str = "https://127.0.0.1:9443") -> UpstreamTLS | None:
        return parseConfig(_config(tls, target), "gw.yaml", baseDir=self.dir).upstreams["api"].tls

    def problems(self, tls: str, target: str = "https://127.0.0.1:9443") -> list[str]:
        try:
            self.parse(tls, target)
        except ConfigError as e:
            return [str(p) for p in e.problems]
        raise AssertionError("config was accepted")

    def test_everyKey(self) -> None:
        """All six keys, relative files taken from the config's directory, 1.3 read as a version."""
        spec = self.parse("      ca_file: ca.crt\n      cert_file: client.crt\n      key_file: client.key\n"
                          "      server_name: api.internal\n      verify: true\n      min_version: 1.3")
        self.assertEqual(spec, UpstreamTLS(ca_file=str(self.dir / "ca.crt"), cert_file=str(self.dir / "client.crt"),
                                           key_file=str(self.dir / "client.key"), server_name="api.internal",
                                           verify=True, min_version="1.3"))

    def test_noTLSSection(self) -> None:
        """Without tls: an https target keeps the defaults (system CAs, verified), and the spec is None."""
        self.assertIsNone(parseConfig(_config("      {}").replace("    tls:\n      {}\n", ""), "gw.yaml").upstreams["api"].tls)

    def test_missingFile(self) -> None:
        """A CA file that does not exist is an error naming the key and its line."""
        self.assertEqual(self.problems("      ca_file: nope.crt"),
                         [f"line 5: upstreams.api.tls.ca_file: cannot read CA file '{self.dir / 'nope.crt'}': "
                          "No such file or directory"])

    def test_notPEM(self) -> None:
        """A CA file without a PEM certificate is refused."""
        (self.dir / "junk.crt").write_text("hello\n")
        [problem] = self.problems("      ca_file: junk.crt")
        self.assertIn("upstreams.api.tls.ca_file: CA file", problem)
        self.assertIn("holds no PEM certificate", problem)

    def test_certWithoutKey(self) -> None:
        """A client certificate without its key (or the reverse) is refused."""
        self.assertEqual(self.problems("      cert_file: client.crt"),
                         ["line 5: upstreams.api.tls.cert_file: needs key_file too: a client certificate and its key "
                          "go together"])
        self.assertIn("needs cert_file too", self.problems("      key_file: client.key")[0])

    def test_keyNotTheCertificates(self) -> None:
        """A key that does not belong to the certificate is refused, naming key_file."""
        self.ca.issue(names=[], client=True).write(self.dir, "other")
        [problem] = self.problems("      cert_file: client.crt\n      key_file: other.key")
        self.assertIn("line 6: upstreams.api.tls.key_file: key file", problem)
        self.assertIn("is not the key of the certificate", problem)

    def test_badValues(self) -> None:
        """An unknown min_version, a non-boolean verify, an unknown key: each its own problem."""
        got = self.problems("      min_version: 1.1\n      verify: maybe\n      ciphers: ALL")
        self.assertEqual(len(got), 3)
        self.assertIn('upstreams.api.tls.min_version: must be "1.2" or "1.3"', got[0])
        self.assertIn("upstreams.api.tls.verify", got[1])
        self.assertIn("upstreams.api.tls.ciphers: unknown key", got[2])

    def test_verifyFalseWithCA(self) -> None:
        """verify: false with a ca_file is contradictory: refused rather than silently unverified."""
        self.assertIn("is unused with verify: false", self.problems("      ca_file: ca.crt\n      verify: false")[0])

    def test_onlyHttpTargets(self) -> None:
        """tls: on an upstream whose every target is http:// is an error: it would do nothing."""
        [problem] = self.problems("      verify: false", target="http://127.0.0.1:9000")
        self.assertIn("upstreams.api.tls: applies to https:// targets", problem)


class ReloadTests(SynchronousTestCase):
    """What a reload does with an upstream's TLS policy."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        (self.dir / "ca.crt").write_bytes(Authority().pem)

    def build(self, tls: str, previous: Any = None) -> Any:
        clock = Clock()
        config = parseConfig(_config(tls), "gw.yaml", baseDir=self.dir)
        return buildRuntime(config, reactor=clock, clock=clock, metrics=Metrics(processMetrics=False),
                            previous=previous)

    def test_unchangedTLSKeepsThePolicy(self) -> None:
        """A reload that leaves tls as it was keeps the policy (and what it knows of rotated files); a change makes a new one."""
        first = self.build("      ca_file: ca.crt")
        policy = first.clusters["api"].tlsPolicy
        self.assertEqual(policy.upstream, "api")
        same = self.build("      ca_file: ca.crt", first)
        self.assertIs(same.clusters["api"].tlsPolicy, policy)
        changed = self.build("      ca_file: ca.crt\n      server_name: api.internal", same)
        self.assertIsNot(changed.clusters["api"].tlsPolicy, policy)
        self.assertEqual(changed.clusters["api"].tlsPolicy.spec.server_name, "api.internal")

    def test_fileBrokenAfterParsingFailsTheBuild(self) -> None:
        """A file that breaks between parsing and building fails the build as a config error (a reload is rejected)."""
        config = parseConfig(_config("      ca_file: ca.crt"), "gw.yaml", baseDir=self.dir)
        (self.dir / "ca.crt").write_text("gone\n")
        with self.assertRaises(ConfigError) as caught:
            buildRuntime(config, reactor=Clock(), clock=Clock(), metrics=Metrics(processMetrics=False))
        self.assertIn("upstreams.api.tls: CA file", str(caught.exception))

    def test_httpsTargetWithoutTLSGetsTheDefaults(self) -> None:
        """An https target with no tls section gets the default policy (system CAs, verified); http only, none."""
        clock = Clock()
        plain = parseConfig(_config("      {}").replace("    tls:\n      {}\n", ""), "gw.yaml")
        runtime = buildRuntime(plain, reactor=clock, clock=clock, metrics=Metrics(processMetrics=False))
        policy = runtime.clusters["api"].tlsPolicy
        self.assertIsNone(policy.spec)
        cleartext = parseConfig(_config("      {}", "http://127.0.0.1:9000").replace("    tls:\n      {}\n", ""))
        runtime = buildRuntime(cleartext, reactor=clock, clock=clock, metrics=Metrics(processMetrics=False))
        self.assertIsNone(runtime.clusters["api"].tlsPolicy)
