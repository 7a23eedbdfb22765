"""
TLS to targets against the real C{twistd -n txgateway} and a real HTTPS
origin (tests/e2e/tlsorigin.py, the standard library's ssl), with a CA,
server and client certificates made in the test: a private CA, mutual TLS,
SNI by C{server_name}, C{verify: false}; a wrong CA, an expired certificate
and a missing client certificate answered 502 with a log line saying why;
the client certificate rotated on disk while the gateway runs.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ..tlscerts import Authority, Issued, replaceFile
from .harness import GatewayProcess, simpleConfig, waitFor
from .tlsorigin import TLSOrigin


class UpstreamTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-tls-"))
        self.ca = Authority("origin CA")
        self.clientCA = Authority("client CA")
        (self.dir / "ca.crt").write_bytes(self.ca.pem)
        (self.dir / "client-ca.crt").write_bytes(self.clientCA.pem)
        self.client = self.clientCA.issue(names=[], client=True, commonName="txgateway")
        self.client.write(self.dir, "client")

    def origin(self, issued: Issued, requireClient: bool = False) -> TLSOrigin:
        key, cert = issued.write(self.dir, f"origin-{issued.serial:x}")
        origin = TLSOrigin(cert, key, self.dir / "client-ca.crt" if requireClient else None).start()
        self.addCleanup(origin.stop)
        return origin

    def gateway(self, origin: TLSOrigin, tls: str, client: Issued | None = None) -> GatewayProcess:
        upstream = "    tls:\n" + "".join(f"      {line}\n" for line in tls.splitlines())
        config = simpleConfig([origin.url], upstreamExtra=upstream)
        client = client or self.client
        gw = GatewayProcess(config, files={"ca.crt": self.ca.pem, "other-ca.crt": Authority("other").pem,
                                           "client.crt": client.cert, "client.key": client.key})
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        # Runs first: a refused handshake is a 502 and a warning, never a traceback.
        self.addCleanup(lambda: self.assertNotIn("Traceback", gw.log()))
        return gw.start()

    def get(self, gw: GatewayProcess, path: str = "/echo") -> tuple[int, Any]:
        r = gw.request("GET", path)
        try:
            return r.status, json.loads(r.body)
        except ValueError:
            return r.status, None

    def logged(self, gw: GatewayProcess, pattern: str) -> str:
        """The first log line matching C{pattern}, once it has been written."""
        def find() -> str | None:
            m = re.search(rf"^.*{pattern}.*$", gw.log(), re.M)
            return m.group(0) if m else None

        return str(waitFor(find, what=f"a log line matching {pattern!r}"))

    def test_privateCA(self) -> None:
        """A target whose certificate the private CA signed answers through the gateway."""
        gw = self.gateway(self.origin(self.ca.issue()), "ca_file: ca.crt")
        status, body = self.get(gw, "/echo/1")
        self.assertEqual((status, body["path"]), (200, "/echo/1"))

    def test_wrongCA(self) -> None:
        """A CA that did not sign the target's certificate: 502, and a log line naming target and reason."""
        origin = self.origin(self.ca.issue())
        gw = self.gateway(origin, "ca_file: other-ca.crt")
        self.assertEqual(self.get(gw)[0], 502)
        line = self.logged(gw, "TLS handshake failed")
        self.assertIn(f"target {origin.url} of upstream app", line)
        self.assertIn("certificate verify failed: unable to get local issuer certificate", line)

    def test_expired(self) -> None:
        """An expired target certificate: 502, and the log line says it has expired."""
        gw = self.gateway(self.origin(self.ca.issue(expired=True)), "ca_file: ca.crt")
        self.assertEqual(self.get(gw)[0], 502)
        self.assertIn("certificate has expired", self.logged(gw, "TLS handshake failed"))

    def test_mutualTLS(self) -> None:
        """With cert_file and key_file the origin sees the gateway's client certificate."""
        gw = self.gateway(self.origin(self.ca.issue(), requireClient=True),
                          "ca_file: ca.crt\ncert_file: client.crt\nkey_file: client.key\nmin_version: \"1.3\"")
        status, body = self.get(gw)
        self.assertEqual(status, 200)
        self.assertEqual(body["client"]["serial"], f"{self.client.serial:x}")
        self.assertIn("commonName=txgateway", body["client"]["subject"])

    def test_mutualTLSWithoutClientCertificate(self) -> None:
        """An origin requiring a client certificate refuses a gateway without one: 502 and a log line."""
        gw = self.gateway(self.origin(self.ca.issue(), requireClient=True), "ca_file: ca.crt")
        self.assertEqual(self.get(gw)[0], 502)
        self.logged(gw, "TLS handshake failed: .*certificate required")

    def test_mutualTLSWithUntrustedClientCertificate(self) -> None:
        """A client certificate from a CA the origin does not trust: 502, and the log says the origin refused it."""
        stranger = Authority("stranger").issue(names=[], client=True)
        gw = self.gateway(self.origin(self.ca.issue(), requireClient=True),
                          "ca_file: ca.crt\ncert_file: client.crt\nkey_file: client.key", client=stranger)
        self.assertEqual(self.get(gw)[0], 502)
        self.logged(gw, "TLS handshake failed: tlsv1 alert unknown ca")

    def test_serverName(self) -> None:
        """server_name is sent as SNI and is the name checked, the target being an address."""
        gw = self.gateway(self.origin(self.ca.issue(names=["models.internal"])),
                          "ca_file: ca.crt\nserver_name: models.internal")
        status, body = self.get(gw)
        self.assertEqual((status, body["sni"]), (200, "models.internal"))

    def test_wrongName(self) -> None:
        """A certificate for another name: 502, the log line names the name checked."""
        gw = self.gateway(self.origin(self.ca.issue(names=["models.internal"])), "ca_file: ca.crt")
        self.assertEqual(self.get(gw)[0], 502)
        self.assertIn("is not valid for '127.0.0.1'", self.logged(gw, "TLS handshake failed"))

    def test_verifyFalse(self) -> None:
        """verify: false reaches a target no configured CA vouches for, with a warning at start-up."""
        gw = self.gateway(self.origin(Authority("unknown").issue(names=["elsewhere"])), "verify: false")
        self.assertEqual(self.get(gw)[0], 200)
        self.assertIn("upstream app", self.logged(gw, "tls.verify is false"))

    def test_clientCertificateRotatedWhileRunning(self) -> None:
        """A new client certificate written over the old one is used by new connections within seconds."""
        origin = self.origin(self.ca.issue(), requireClient=True)
        gw = self.gateway(origin, "ca_file: ca.crt\ncert_file: client.crt\nkey_file: client.key")
        self.assertEqual(self.get(gw)[1]["client"]["serial"], f"{self.client.serial:x}")
        second = self.clientCA.issue(names=[], client=True)
        second.write(gw.dir, "client")
        waitFor(lambda: self.get(gw)[1]["client"]["serial"] == f"{second.serial:x}",
                what="the rotated client certificate at the origin")
        self.logged(gw, "upstream app: TLS files reloaded")
        # A bad rotation (not PEM) is refused and the current certificate keeps working.
        # The watch sees it with no request made.
        replaceFile(gw.dir / "client.crt", b"garbage\n")
        self.logged(gw, "upstream app: TLS files changed but cannot be used")
        self.assertEqual(self.get(gw)[1]["client"]["serial"], f"{second.serial:x}")

    def test_activeHealthChecksUseTheUpstreamsTLS(self) -> None:
        """Probes of https targets trust the upstream's CA: the same origin is healthy for one upstream, not another."""
        origin = self.origin(self.ca.issue())
        health = "    health: {active: {interval: 200ms, timeout: 1s, unhealthy_after: 1}}\n"
        config = f"""\
server:
  listen: "tcp:{{port}}:interface=127.0.0.1"
logging: {{level: info}}
upstreams:
  good:
    targets: [{origin.url}]
    tls: {{ca_file: ca.crt}}
{health}  bad:
    targets: [{origin.url}]
    tls: {{ca_file: other-ca.crt}}
{health}routes:
  - {{name: good, match: {{path_prefix: /good}}, upstream: good}}
  - {{name: bad, match: {{path_prefix: /bad}}, upstream: bad}}
"""
        gw = GatewayProcess(config, files={"ca.crt": self.ca.pem, "other-ca.crt": Authority("other").pem})
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        gw.start()
        line = self.logged(gw, "of bad is unhealthy")
        self.assertIn("certificate verify failed", line)
        self.assertNotIn("of good is unhealthy", gw.log())
        self.assertEqual(self.get(gw, "/good")[0], 200)

    def test_reloadFixesTheCA(self) -> None:
        """A config reload that corrects ca_file takes effect: 502 before, 200 after, no restart."""
        origin = self.origin(self.ca.issue())
        gw = self.gateway(origin, "ca_file: other-ca.crt")
        self.assertEqual(self.get(gw)[0], 502)
        gw.configPath.write_text(gw.configPath.read_text().replace("other-ca.crt", "ca.crt"))
        waitFor(lambda: self.get(gw)[0] == 200, what="the reloaded ca_file in use")
