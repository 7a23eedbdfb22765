"""
File discovery: the targets file's format, its errors with their lines, and
the watcher (a real temp file, a Clock for the polls).
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.support import tempPath
from txgateway.discovery.files import FileSource, TargetsFileError, parseTargetsFile
from txgateway.discovery.interfaces import DiscoveredTarget, ITargetSource


class ParseTests(SynchronousTestCase):
    def test_urlsAndWeights(self) -> None:
        """Plain URLs weigh 1; url: with weight: sets it; the port defaults by scheme."""
        targets = parseTargetsFile("- http://10.0.0.1:8000\n- url: https://b.internal\n  weight: 2\n")
        self.assertEqual(targets, [DiscoveredTarget("http", "10.0.0.1", 8000, 1, "file"),
                                   DiscoveredTarget("https", "b.internal", 443, 2, "file")])

    def test_emptyFileIsNoTargets(self) -> None:
        """An empty file (or an empty list) lists nothing."""
        self.assertEqual(parseTargetsFile(""), [])
        self.assertEqual(parseTargetsFile("[]\n"), [])

    def assertProblem(self, text: str, line: int | None, words: str) -> None:
        with self.assertRaises(TargetsFileError) as cm:
            parseTargetsFile(text)
        self.assertEqual(cm.exception.line, line)
        self.assertIn(words, cm.exception.message)

    def test_errorsNameTheLine(self) -> None:
        """Each kind of mistake is reported with the line it is on."""
        self.assertProblem("- http://10.0.0.1:8000\n- ftp://x:1\n", 2, "not a URL")
        self.assertProblem("- http://10.0.0.1:8000\n- url: http://x:1\n  weight: 0\n", 3, "not a weight")
        self.assertProblem("- url: http://x:1\n  wieght: 2\n", 2, "unknown key 'wieght'")
        self.assertProblem("- weight: 2\n", 1, "needs url")
        self.assertProblem("- http://a:1\n- http://a:1/\n", 2, "twice")
        self.assertProblem("targets: [http://a:1]\n", 1, "must be a list")
        self.assertProblem("- http://a:1\n- [oops\n", 3, "not valid YAML")
        self.assertProblem("- http://a:1/path\n", 1, "without path")


class FileSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = tempPath(self)
        self.changes: list[tuple[DiscoveredTarget, ...]] = []
        self.mtime = 1_000_000_000

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)
        # Explicit, distinct mtimes: no test depends on timestamp granularity.
        self.mtime += 10
        os.utime(self.path, (self.mtime, self.mtime))

    def source(self, **kwargs: object) -> FileSource:
        s = FileSource(self.path, self.clock, 2.0, **kwargs)  # type: ignore[arg-type]
        s.subscribe(self.changes.append)
        s.startService()
        self.addCleanup(lambda: s.running and s.stopService())
        return s

    def test_providesITargetSource(self) -> None:
        """The file source provides ITargetSource."""
        self.assertTrue(verifyObject(ITargetSource, FileSource(self.path, self.clock)))

    def test_readAtStart(self) -> None:
        """The file is read when the source starts, before any poll."""
        self.write("- http://10.0.0.2:8000\n- http://10.0.0.1:8000\n")
        s = self.source()
        self.assertEqual([t.url for t in s.targets], ["http://10.0.0.1:8000", "http://10.0.0.2:8000"])
        self.successResultOf(s.whenReady())

    def test_rewrittenFileIsReread(self) -> None:
        """A changed file changes the targets at the next poll."""
        self.write("- http://10.0.0.1:8000\n")
        s = self.source()
        self.write("- http://10.0.0.1:8000\n- url: http://10.0.0.3:8000\n  weight: 4\n")
        self.clock.advance(2)
        self.assertEqual([(t.url, t.weight) for t in s.targets],
                         [("http://10.0.0.1:8000", 1), ("http://10.0.0.3:8000", 4)])
        self.assertEqual(len(self.changes), 2)

    def test_sameContentIsNoChange(self) -> None:
        """A touch, or the same targets reordered, calls no listener."""
        self.write("- http://10.0.0.1:8000\n- http://10.0.0.2:8000\n")
        s = self.source()
        self.write("- http://10.0.0.1:8000\n- http://10.0.0.2:8000\n")
        self.clock.advance(2)
        self.write("- http://10.0.0.2:8000\n- http://10.0.0.1:8000\n")
        self.clock.advance(2)
        self.assertEqual(len(self.changes), 1)
        self.assertEqual(s.counters.refreshes, 2)  # the touch was not even parsed

    def test_badFileKeepsTheLastGoodSetAndSaysWhere(self) -> None:
        """A broken edit keeps the targets and logs one error with the line; a fix is taken."""
        self.write("- http://10.0.0.1:8000\n")
        s = self.source()
        logged: list[dict[str, object]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.write("- http://10.0.0.1:8000\n- url: http://10.0.0.2:8000\n  weight: many\n")
        for _ in range(3):
            self.clock.advance(2)
        self.assertEqual([t.url for t in s.targets], ["http://10.0.0.1:8000"])
        self.assertEqual(s.counters.failures, 1)
        errors = [e for e in logged if e.get("log_level") is not None and e["log_level"].name == "error"]  # type: ignore[attr-defined]
        self.assertEqual(len(errors), 1)
        self.assertIn("line 3", str(errors[0]["reason"]))
        self.assertIn(self.path, str(errors[0]["source"]))
        self.write("- http://10.0.0.2:8000\n")
        self.clock.advance(2)
        self.assertEqual([t.url for t in s.targets], ["http://10.0.0.2:8000"])

    def test_missingFileKeepsTargets(self) -> None:
        """A file that disappears (a delete-and-rename save) keeps the targets, reported once."""
        self.write("- http://10.0.0.1:8000\n")
        s = self.source()
        os.unlink(self.path)
        self.clock.advance(2)
        self.clock.advance(2)
        self.assertEqual(len(s.targets), 1)
        self.assertEqual(s.counters.failures, 1)
        self.write("- http://10.0.0.1:8000\n")
        self.clock.advance(2)
        self.assertEqual(len(self.changes), 1)

    def test_emptyFileObeysOnEmpty(self) -> None:
        """An emptied file keeps the targets under on_empty: keep and drops them under drop."""
        self.write("- http://10.0.0.1:8000\n")
        keep = self.source()
        self.write("")
        self.clock.advance(2)
        self.assertEqual(len(keep.targets), 1)
        keep.stopService()
        self.write("- http://10.0.0.1:8000\n")
        drop = self.source(onEmpty="drop")
        self.write("[]\n")
        self.clock.advance(2)
        self.assertEqual(drop.targets, ())

    def test_stopLeavesNoTimer(self) -> None:
        """After stopService no poll is scheduled."""
        self.write("- http://10.0.0.1:8000\n")
        s = self.source()
        s.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
