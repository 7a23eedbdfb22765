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
        """docs/configuration.md names every key config.py accepts."""
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


def _anchors(text: str) -> set[str]:
    return {re.sub(r"[^a-z0-9 \-_]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"(?m)^#+ (.+)$", text)}


class LinkTests(SynchronousTestCase):
    def test_relativeLinksResolve(self) -> None:
        """Every relative link in the README and docs/*.md names a file (and heading) that exists."""
        broken = []
        for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
            for m in re.finditer(r"\]\(([^)\s]+)\)", page.read_text()):
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
