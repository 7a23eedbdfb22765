"""
The getting-started commands, run as the docs write them (issue #18, item 7).

In the venv that C{make run} / C{make test} build (an editable install,
C{pip install -e '.[test]'}), from a directory that is not the source tree and
with no C{PYTHONPATH}: C{.venv/bin/txgateway check gw.yaml} and
C{.venv/bin/twistd -n txgateway --config gw.yaml} must work exactly as
written.  The commands and the config are read from docs/getting-started.md,
so the test follows the docs.

The venv is the one running the tests when it is an install of this source
tree (C{make test}), or the one named by C{TXGATEWAY_DOCS_VENV}; otherwise
the test is skipped (another tree's venv proves nothing about this one).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .harness import REPO, namedPort, request, waitFor

GUIDE = REPO / "docs" / "getting-started.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else len(text)]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _venvBin() -> Path:
    """The bin/ of a venv holding an install of this source tree, or skip."""
    named = os.environ.get("TXGATEWAY_DOCS_VENV")
    candidates = [Path(named) / "bin"] if named else [Path(sys.executable).parent]
    for bin in candidates:
        python = bin / "python"
        if not python.exists() or not (bin / "twistd").exists():
            continue
        where = subprocess.run([str(python), "-c", "import txgateway; print(txgateway.__file__)"],
                               capture_output=True, text=True, env=_cleanEnv(), cwd="/").stdout.strip()
        if where and Path(where).resolve().is_relative_to(REPO.resolve()):
            return bin
    raise SkipTest("no venv with this tree installed (run under make test, or set TXGATEWAY_DOCS_VENV)")


def _cleanEnv() -> dict[str, str]:
    """The environment a user's shell has: no PYTHONPATH, nothing of the test run's."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "BACKEND_URL", "GATEWAY_PORT", "LOG_LEVEL", "REQUEST_TIMEOUT")}


class GettingStartedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bin = _venvBin()
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-docs-"))
        # The docs run ".venv/bin/...": give the temp directory a .venv that is the venv under test.
        (self.dir / ".venv").symlink_to(self.bin.parent)
        section = _section(GUIDE.read_text(), "## 2. The smallest useful config")
        (yaml,) = _blocks(section, "yaml")
        (commands,) = _blocks(section, "sh")
        self.port = namedPort()  # named before twistd binds it: below the ephemeral range (see namedPort)
        # The one change: the docs' port 8080 may be taken on a test machine.
        (self.dir / "gw.yaml").write_text(yaml.replace('"tcp:8080"', f'"tcp:{self.port}:interface=127.0.0.1"'))
        self.commands = [shlex.split(line.split("#", 1)[0]) for line in commands.splitlines() if line.strip()]

    def tearDown(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def test_checkCommandWorksAsWritten(self) -> None:
        """`.venv/bin/txgateway check gw.yaml` exits 0 from a directory outside the source tree."""
        (check,) = [c for c in self.commands if "check" in c]
        r = subprocess.run(check, cwd=self.dir, env=_cleanEnv(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_twistdCommandWorksAsWritten(self) -> None:
        """`.venv/bin/twistd -n txgateway --config gw.yaml` starts the gateway (no "Unknown command"), and stops 0."""
        (run,) = [c for c in self.commands if "twistd" in c[0]]
        proc = subprocess.Popen(run, cwd=self.dir, env=_cleanEnv(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        try:
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''!r}")
                return request(self.port, "GET", "/ready", timeout=1).status == 200

            waitFor(ready, timeout=30, what="the gateway started by the docs' command")
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(30), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()

    def test_pluginIsFoundFromAnyDirectory(self) -> None:
        """`twistd txgateway --help` from / lists the plugin's options: the plugin is found without PYTHONPATH."""
        r = subprocess.run([str(self.bin / "twistd"), "txgateway", "--help"], cwd="/", env=_cleanEnv(),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("--config", r.stdout)
        self.assertNotIn("Unknown command", r.stdout + r.stderr)
