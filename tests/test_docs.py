"""The configuration reference covers every key the parser accepts, and is freshly assembled."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "configuration.md"


def parserKeys() -> set[str]:
    """Every key named in a known-keys list of a mapping() call in the config package."""
    source = "\n".join(p.read_text() for p in sorted((REPO / "src" / "txgateway" / "config").glob("*.py")))
    keys: set[str] = set()
    for call in re.finditer(r"self\.mapping\(", source):
        window = source[call.end(): call.end() + 600]
        depth, end = 1, 0
        for i, ch in enumerate(window):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                end = i
                break
        lists = re.findall(r"\[((?:\s*\"[a-z_]+\",?)+)\s*\]", window[:end])
        if lists:
            keys.update(re.findall(r'"([a-z_]+)"', lists[-1]))
    # parser_canary's sections list their keys as known(("a", "b")), its route keys in CANARY_ROUTE_KEYS.
    for listed in re.findall(r"(?:\.known\(|CANARY_ROUTE_KEYS = )\(((?:\s*\"[a-z_]+\",?)+)\s*\)", source):
        keys.update(re.findall(r'"([a-z_]+)"', listed))
    return keys


def exampleKeys() -> set[str]:
    out: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                out.add(str(k))
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.load((REPO / "examples" / "gw.yaml").read_text(), Loader=yaml.BaseLoader))
    return out


class ReferenceTests(SynchronousTestCase):
    def test_everyParserKeyIsDocumented(self) -> None:
        """docs/configuration.md names every key the config package's parser accepts."""
        text = REFERENCE.read_text()
        keys = parserKeys()
        self.assertGreater(len(keys), 100)
        missing = sorted(k for k in keys if not re.search(rf"[`.]{k}[`.:\[ ]|`{k}`", text))
        self.assertEqual(missing, [])

    def test_everyExampleKeyIsDocumented(self) -> None:
        """Every key used in the example config appears in the reference (names, not user-chosen values)."""
        text = REFERENCE.read_text()
        userNamed = {"partners", "staff", "services", "inference", "users", "sessions", "alice", "X-Canary", "X-Gateway"}
        missing = sorted(k for k in exampleKeys() - userNamed if k not in text)
        self.assertEqual(missing, [])

    def test_referenceIsAssembledFromTheConcernPages(self) -> None:
        """docs/configuration.md is what scripts/build-config-doc.py makes of docs/config/*.md."""
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build-config-doc.py"), "--check"])
        self.assertEqual(proc.returncode, 0, "run: python scripts/build-config-doc.py")

    def test_readmeOpensWithTheTwoCommands(self) -> None:
        """The README's set-up is `make run` and `make test`, and .ci/run calls the latter."""
        readme = (REPO / "README.md").read_text()
        block = re.search(r"```sh\n(.*?)```", readme, re.S)
        assert block is not None
        commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
        self.assertEqual(commands, ["make run", "make test"])
        self.assertIn("make test", (REPO / ".ci" / "run").read_text())


GETTING_STARTED = REPO / "docs" / "getting-started.md"
DEMO_KEY = "alice-demo-key"


def gettingStartedConfigs() -> list[tuple[str, str]]:
    """
    Each YAML snippet of getting-started.md that has routes, as the whole file a reader would have then.

    A snippet with upstreams is a whole file; one without adds its top-level
    keys to the last whole file, replacing those it names (step 5 on step 4).
    """
    import yaml as _yaml

    configs: list[tuple[str, str]] = []
    current: dict[str, object] = {}
    text = GETTING_STARTED.read_text()
    for m in re.finditer(r"```yaml\n(.*?)```", text, re.S):
        snippet = _yaml.safe_load(m.group(1))
        heading = re.findall(r"(?m)^## (.+)$", text[: m.start()])[-1]
        if not isinstance(snippet, dict) or "routes" not in snippet:
            continue
        current = dict(snippet) if "upstreams" in snippet else {**current, **snippet}
        configs.append((heading, _yaml.safe_dump(current)))
    return configs


class GettingStartedTests(SynchronousTestCase):
    def test_everyConfigSnippetLoads(self) -> None:
        """Each config of the walkthrough (steps 2, 4 and 5) is one `txgateway check` accepts."""
        from txgateway.config import parseConfig

        configs = gettingStartedConfigs()
        self.assertEqual([h.split(".")[0] for h, _ in configs], ["2", "4", "5"])
        for heading, text in configs:
            c = parseConfig(text, f"getting-started.md, {heading}")
            self.assertTrue(c.routes, heading)

    def test_step4IsAWholeFile(self) -> None:
        """Step 4's snippet defines every upstream its routes name, so it loads on its own."""
        from txgateway.config import parseConfig

        heading, text = gettingStartedConfigs()[1]
        self.assertTrue(heading.startswith("4."))
        c = parseConfig(text)
        self.assertEqual(sorted(r.upstream for r in c.routes), ["inference", "users"])

    def test_demoKeyIsWrittenDownAndOpensTheBatchRoute(self) -> None:
        """The key the docs give is the one examples/gw.yaml holds the hash of, for the route that asks for it."""
        import hashlib

        from txgateway.config import loadConfig

        text = GETTING_STARTED.read_text()
        self.assertIn(f"-H 'X-API-Key: {DEMO_KEY}'", text)
        self.assertIn("/batch_predict", text)
        self.assertIn(DEMO_KEY, (REPO / "examples" / "run_demo.py").read_text())
        c = loadConfig(REPO / "examples" / "gw.yaml", environ={})
        batch = next(r for r in c.routes if r.name == "batch")
        assert batch.auth is not None and batch.auth.api_key is not None
        self.assertEqual(batch.auth.api_key.header, "X-API-Key")
        digest = hashlib.sha256(DEMO_KEY.encode()).hexdigest()
        self.assertIn(("alice", "sha256", digest), batch.auth.api_key.keys)
        self.assertIn(digest, text)  # step 5 shows the same key's hash


def _anchors(text: str) -> set[str]:
    return {re.sub(r"[^a-z0-9 \-_]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"(?m)^#+ (.+)$", text)}


class LinkTests(SynchronousTestCase):
    def test_relativeLinksResolve(self) -> None:
        """Every relative link in the README and docs/*.md names a file (and heading) that exists."""
        broken = []
        for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
            # Code is not a link: routes[0](name) is how a key path is written.
            prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
            for m in re.finditer(r"\]\(([^)\s]+)\)", prose):
                link = m.group(1)
                if link.startswith(("http:", "https:", "mailto:")):
                    continue
                path, _, fragment = link.partition("#")
                target = (page.parent / path).resolve() if path else page
                if not target.exists():
                    broken.append(f"{page.name}: {link}")
                elif fragment and target.suffix == ".md" and fragment not in _anchors(target.read_text()):
                    broken.append(f"{page.name}: {link} (no such heading)")
        self.assertEqual(broken, [])


def pythonBlocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


class TestingGuideTests(SynchronousTestCase):
    def test_examplesRun(self) -> None:
        """docs/testing.md's Python blocks run, in order, as one script, and the test case they define passes."""
        import unittest

        blocks = pythonBlocks(REPO / "docs" / "testing.md")
        self.assertGreaterEqual(len(blocks), 5)
        namespace: dict[str, object] = {"__name__": "docs_testing"}
        exec(compile("\n".join(blocks), "docs/testing.md", "exec"), namespace)  # noqa: S102 - our own docs
        cases = [v for v in namespace.values()
                 if isinstance(v, type) and issubclass(v, unittest.TestCase) and v.__module__ == "docs_testing"]
        self.assertEqual([c.__name__ for c in cases], ["SearchLimitTests"])
        result = unittest.TestResult()
        unittest.defaultTestLoader.loadTestsFromTestCase(cases[0]).run(result)
        self.assertEqual((result.testsRun, result.failures, result.errors), (2, [], []))

    def test_linkedFromTheReadme(self) -> None:
        """The README's list of docs points at the testing guide."""
        self.assertIn("(docs/testing.md)", (REPO / "README.md").read_text())
