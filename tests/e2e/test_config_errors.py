"""
What `txgateway check` refuses, start-up refuses too, each with one clear line and a non-zero exit.

Both run as operators run them: the console script and C{twistd -n txgateway}
beside this interpreter, in a temporary folder, with the environment given.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import childEnv, simpleConfig

BIN = Path(sys.executable).parent

REPEATED = """\
upstreams:
  app:
    targets: [http://127.0.0.1:9]
routes:
  - name: all
    match: {path_prefix: /}
    upstream: app
    upstream: app
"""

BROKEN = """\
upstreams:
  app:
    targets: [http://127.0.0.1:9]
   routes: []
"""


class ConfigErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-config-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def run_(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.dir, env=childEnv(env), capture_output=True, text=True, timeout=60)

    def check(self, config: str | None, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "txgateway"), "check"]
        if config is not None:
            (self.dir / "gw.yaml").write_text(config)
            argv.append("gw.yaml")
        return self.run_(argv, env)

    def start(self, config: str | None, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "txgateway"]
        if config is not None:
            (self.dir / "gw.yaml").write_text(config)
            argv += ["--config", "gw.yaml"]
        return self.run_(argv, env)

    def assertBothRefuse(self, config: str | None, env: dict[str, str], line: str) -> None:
        """`check` exits 1 naming the problem; twistd exits non-zero with that one line and no traceback."""
        checked = self.check(config, env)
        self.assertEqual(checked.returncode, 1, checked.stdout + checked.stderr)
        self.assertIn(line, checked.stderr)
        started = self.start(config, env)
        output = started.stdout + started.stderr
        self.assertNotEqual(started.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual([x for x in output.splitlines() if x.strip()], [f"txgateway: config rejected: {line}"])

    def test_badGatewayPortWithoutAFile(self) -> None:
        """GATEWAY_PORT=abc (and 80000) with only the environment: both refuse, naming the variable."""
        for value in ("abc", "80000"):
            self.assertBothRefuse(None, {"GATEWAY_PORT": value, "BACKEND_URL": "http://127.0.0.1:9"},
                                  f"environment: GATEWAY_PORT: not a port number: '{value}' "
                                  "(write a number from 0 to 65535)")

    def test_badGatewayPortOverridingAFile(self) -> None:
        """GATEWAY_PORT=abc beside a config file: both refuse, naming the variable."""
        config = simpleConfig(["http://127.0.0.1:9"]).replace("{port}", "0")
        self.assertBothRefuse(config, {"GATEWAY_PORT": "abc"},
                              "environment: GATEWAY_PORT: not a port number: 'abc' (write a number from 0 to 65535)")

    def test_repeatedKey(self) -> None:
        """A key written twice: both refuse, naming the key path and both lines."""
        self.assertBothRefuse(REPEATED, {},
                              "gw.yaml: line 8, column 5: routes[0](all).upstream: is written twice, on line 7 "
                              "and on line 8 (remove one: YAML would silently keep only the last)")

    def test_yamlSyntaxError(self) -> None:
        """Broken indentation: both refuse, naming the line and column of the mistake."""
        self.assertBothRefuse(BROKEN, {},
                              "gw.yaml: line 4, column 4: not valid YAML: expected <block end>, "
                              "but found '<block mapping start>'")
