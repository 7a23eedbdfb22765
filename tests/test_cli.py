"""`txgateway check`: exit codes, error listing, summary, and packaging of the twistd plugin."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from txgateway import __version__
from txgateway.cli import main

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "examples" / "gw.yaml"


def run(*argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err, {} if environ is None else environ)
    return code, out.getvalue(), err.getvalue()


class CheckTests(SynchronousTestCase):
    def test_validConfigExitsZeroWithASummary(self) -> None:
        """A valid config prints its listeners, upstreams and routes."""
        code, out, _ = run("check", str(BUNDLED))
        self.assertEqual(code, 0)
        for word in ("listeners:", "tcp:8080", "inference", "least_connections", "routes", "users-canary"):
            self.assertIn(word, out)

    def test_invalidConfigExitsOneListingEveryProblem(self) -> None:
        """Every problem is printed with its key path and line; exit 1."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("upstreams:\n  a:\n    targets: [ftp://x]\nroutes:\n  - upstream: b\n")
        code, _, err = run("check", f.name)
        self.assertEqual(code, 1)
        self.assertIn("line 3: upstreams.a.targets[0]: not a URL", err)
        self.assertIn("routes[0].upstream: no upstream named 'b'", err)
        self.assertIn("2 problem(s)", err)

    def test_badGatewayPortFailsCheck(self) -> None:
        """GATEWAY_PORT=abc or 80000 fails `check`, with or without a file, naming the variable."""
        for value in ("abc", "80000"):
            for argv in (("check",), ("check", str(BUNDLED))):
                code, out, err = run(*argv, environ={"GATEWAY_PORT": value})
                self.assertEqual(code, 1, argv)
                self.assertEqual(out, "")
                self.assertIn(f"environment: GATEWAY_PORT: not a port number: '{value}'", err)

    def test_repeatedKeyFailsCheck(self) -> None:
        """A key written twice fails `check`, naming its path and both lines."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("upstreams:\n  a:\n    targets: [http://127.0.0.1:9000]\n"
                    "routes:\n  - name: r\n    upstream: a\n    upstream: a\n")
        code, _, err = run("check", f.name)
        self.assertEqual(code, 1)
        self.assertIn("line 7, column 5: routes[0](r).upstream: is written twice, on line 6 and on line 7", err)

    def test_explainNamesTheWinningRouteAndWhyOthersLost(self) -> None:
        """--explain shows the matching route and the backend path."""
        code, out, _ = run("check", str(BUNDLED), "--explain", "http://users.example.com/api/v1/x")
        self.assertEqual(code, 0)
        self.assertIn("=> route users-api, upstream users, backend path /v1/x", out)
        self.assertIn("a header matcher does not hold", out)

    def test_moduleAndConsoleScriptBothRun(self) -> None:
        """`python -m txgateway check` works as a command."""
        proc = subprocess.run([sys.executable, "-m", "txgateway", "check", str(BUNDLED)], capture_output=True,
                              text=True, cwd=REPO)
        self.assertEqual(proc.returncode, 0, proc.stderr)


class VersionTests(SynchronousTestCase):
    def test_versionPrintsNameAndVersion(self) -> None:
        """`txgateway --version` prints `txgateway X.Y.Z` and exits 0."""
        self.assertEqual(run("--version"), (0, f"txgateway {__version__}\n", ""))
        self.assertRegex(__version__, r"^\d+\.\d+\.\d+")

    def test_versionFromTheCommandLine(self) -> None:
        """`python -m txgateway --version` works as a command."""
        proc = subprocess.run([sys.executable, "-m", "txgateway", "--version"], capture_output=True, text=True,
                              cwd=REPO)
        self.assertEqual((proc.returncode, proc.stdout), (0, f"txgateway {__version__}\n"), proc.stderr)

    def test_noCommandIsAUsageError(self) -> None:
        """Neither a command nor --version: usage on stderr, exit 2."""
        code, out, err = run()
        self.assertEqual((code, out), (2, ""))
        self.assertIn("usage: txgateway", err)


class PackagingTests(SynchronousTestCase):
    def test_wheelCarriesTheTwistdPlugin(self) -> None:
        """After installing the built wheel, `twistd --help` lists txgateway (not only from a source tree)."""
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", d, str(REPO)], check=True, capture_output=True)
            wheel = next(Path(d).glob("txgateway-*.whl"))
            target = Path(d, "site")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                            str(wheel)], check=True, capture_output=True)
            self.assertTrue((target / "twisted" / "plugins" / "txgateway_plugin.py").exists())
            self.assertFalse((target / "twisted" / "plugins" / "__init__.py").exists())
            env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
            proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['twistd','--help'];"
                                   "from twisted.scripts.twistd import run; run()"],
                                  capture_output=True, text=True, env=env, cwd=d)
            self.assertIn("txgateway", proc.stdout)
