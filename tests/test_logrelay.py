"""Workers' log lines reach the supervisor's file whole, each naming its worker, and survive a move + SIGUSR1."""

from __future__ import annotations

import io
import json
import os
import signal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from twisted.logger import FileLogObserver, Logger, LogLevel, LogPublisher, formatEvent, globalLogPublisher
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from tests.support import tempPath
from txgateway.http.twistdlog import TwistdLogAdopter, onReopenSignal, reopenOrRotate
from txgateway.logrelay import ACCESS_FD, AppendFile, LineRelay, WorkerOutput, workerMarkers
from txgateway.observe.logging import jsonFormatter, textFormatter

WORKER_LINE = b'{"time":"2026-01-01T00:00:00.000Z","level":"info","message":"m%d","worker":1}\n'


def relayInto(out: list[str], worker: int = 1, format: str = "json") -> LineRelay:
    fmt = jsonFormatter("info", worker) if format == "json" else textFormatter("info", worker)
    return WorkerOutput(out.append, lambda i: fmt, format, now=lambda: 0.0).relays(worker)[2]


class LineRelayTests(SynchronousTestCase):
    def test_linesSplitAcrossReadsComeOutWhole(self) -> None:
        """A line cut between two pipe reads is written once, whole, when its newline arrives."""
        out: list[str] = []
        relay = relayInto(out)
        data = WORKER_LINE % 1 + WORKER_LINE % 2
        relay.feed(data[:30])
        self.assertEqual(out, [])
        relay.feed(data[30:100])
        relay.feed(data[100:])
        self.assertEqual([json.loads(x)["message"] for x in "".join(out).splitlines()], ["m1", "m2"])

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30),
           st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=40))
    def test_anyChunkingGivesBackEveryLineExactlyOnce(self, ids: list[int], cuts: list[int]) -> None:
        """However the kernel splits the bytes, the lines written are the lines sent, in order, none torn."""
        out: list[str] = []
        relay = relayInto(out)
        data = b"".join(WORKER_LINE % i for i in ids)
        pos, k = 0, 0
        while pos < len(data):
            step = cuts[k % len(cuts)]
            relay.feed(data[pos:pos + step])
            pos, k = pos + step, k + 1
        relay.end()
        self.assertTrue(all(chunk.endswith("\n") for chunk in out))
        self.assertEqual([json.loads(x)["message"] for x in "".join(out).splitlines()], [f"m{i}" for i in ids])

    def test_unformattedLineIsWrappedNamingTheWorker(self) -> None:
        """Raw output of a worker (not from its formatter) becomes a JSON line of the log naming the worker."""
        out: list[str] = []
        relay = relayInto(out, worker=3)
        relay.feed(b"Traceback (most recent call last):\n" + WORKER_LINE % 7)
        lines = [json.loads(x) for x in "".join(out).splitlines()]
        self.assertEqual(lines[0]["worker"], 3)
        self.assertEqual(lines[0]["message"], "Traceback (most recent call last):")
        self.assertEqual(lines[0]["level"], "error")
        self.assertEqual(lines[1]["message"], "m7")

    def test_textLinesNameTheWorkerToo(self) -> None:
        """In a text log an unformatted line gets the worker's tag; formatted ones pass as they are."""
        out: list[str] = []
        relay = relayInto(out, worker=2, format="text")
        relay.feed(b"2026-01-01T00:00:00.000Z [worker 2] [txgateway#info] ready\nsegfault-ish\n")
        first, second = "".join(out).splitlines()
        self.assertEqual(first, "2026-01-01T00:00:00.000Z [worker 2] [txgateway#info] ready")
        self.assertIn("[worker 2]", second)
        self.assertTrue(second.endswith("segfault-ish"))

    def test_workerDyingMidLineLeavesAValidLine(self) -> None:
        """The unfinished tail of a worker that died is written wrapped: the file stays valid JSON."""
        out: list[str] = []
        relay = relayInto(out)
        relay.feed(WORKER_LINE % 1 + b'{"time":"2026-01-01T00:00:00.0')
        relay.end()
        relay.end()
        lines = [json.loads(x) for x in "".join(out).splitlines()]
        self.assertEqual(len(lines), 2)
        self.assertEqual(lines[1]["message"], '{"time":"2026-01-01T00:00:00.0')

    def test_endlessLineIsBounded(self) -> None:
        """A line with no newline in sight is not held without bound: it is written wrapped past the limit."""
        out: list[str] = []
        fmt = jsonFormatter("info", 1)
        wrap = WorkerOutput(out.append, lambda i: fmt, "json").relays(1)[2]._wrap
        relay = LineRelay(out.append, wrap, workerMarkers("json"), maxLine=100)
        for _ in range(10):
            relay.feed(b"x" * 60)
        relay.end()
        lines = [json.loads(line) for line in "".join(out).splitlines()]
        self.assertEqual("".join(x["message"] for x in lines), "x" * 600)
        self.assertTrue(all(x["worker"] == 1 and len(x["message"]) <= 160 for x in lines))

    def test_aFailedWriteIsCountedNotRaised(self) -> None:
        """A full disk: the lines that could not be written are counted by file, and the pipe keeps being read."""
        registry = CollectorRegistry()
        dropped = Counter("txgateway_log_lines_dropped", "d", ["file"], registry=registry)

        def full(text: str) -> None:
            raise OSError(28, "No space left on device")

        fmt = jsonFormatter("info", 0)
        relays = WorkerOutput(full, lambda i: fmt, "json", full, dropped=dropped).relays(0)
        relays[1].feed(WORKER_LINE % 1 + WORKER_LINE % 2)
        relays[ACCESS_FD].feed(WORKER_LINE % 3)
        self.assertEqual(registry.get_sample_value("txgateway_log_lines_dropped_total", {"file": "log"}), 2.0)
        self.assertEqual(registry.get_sample_value("txgateway_log_lines_dropped_total", {"file": "access"}), 1.0)

    def test_markersOfEachFormat(self) -> None:
        """What says a line names its worker: the JSON field, or the text tags."""
        self.assertEqual(workerMarkers("json"), (b'"worker":',))
        self.assertEqual(workerMarkers("text"), (b"[worker ", b" worker="))

    def test_accessPipeOnlyWithAnAccessFile(self) -> None:
        """The access-log pipe exists when the supervisor writes an access_log_file."""
        fmt = jsonFormatter("info", 0)
        self.assertEqual(sorted(WorkerOutput(print, lambda i: fmt, "json").relays(0)), [1, 2])
        self.assertEqual(sorted(WorkerOutput(print, lambda i: fmt, "json", print).relays(0)), [1, 2, ACCESS_FD])


class ReopenTests(SynchronousTestCase):
    def test_appendFileReopensAfterAMove(self) -> None:
        """After mv + reopen, lines before are in the moved file and lines after in a new one: none lost."""
        path = tempPath(self)
        f = AppendFile(path)
        self.addCleanup(f.close)
        f.write("one\n")
        os.rename(path, path + ".old")
        f.write("two\n")
        f.reopen()
        f.write("three\n")
        with open(path + ".old") as old, open(path) as new:
            self.assertEqual((old.read(), new.read()), ("one\ntwo\n", "three\n"))

    def test_twistdLogRotatesWhenNothingMovedIt(self) -> None:
        """SIGUSR1 with the file in place rotates it, as twistd does: gw.log becomes gw.log.1."""
        path = tempPath(self)
        log = LogFile.fromFullPath(path)
        self.addCleanup(log.close)
        log.write("before\n")
        self.assertEqual(reopenOrRotate(log), "rotated")
        log.write("after\n")
        log.flush()
        with open(path + ".1") as old, open(path) as new:
            self.assertEqual((old.read(), new.read()), ("before\n", "after\n"))

    def test_twistdLogReopensWhenLogrotateMovedIt(self) -> None:
        """logrotate's mv (and create) then SIGUSR1: the next line starts the new file, the moved one keeps the rest."""
        for create in (False, True):
            path = tempPath(self)
            log = LogFile.fromFullPath(path)
            self.addCleanup(log.close)
            log.write("before\n")
            os.rename(path, path + ".moved")
            if create:
                open(path, "w").close()
            log.write("between\n")
            self.assertEqual(reopenOrRotate(log), "reopened")
            log.write("after\n")
            log.flush()
            with open(path + ".moved") as old, open(path) as new:
                self.assertEqual((old.read(), new.read()), ("before\nbetween\n", "after\n"))
            self.assertFalse(os.path.exists(path + ".1"))

    def test_stdoutHasNothingToReopen(self) -> None:
        """With --logfile=- there is no file: SIGUSR1 changes nothing."""
        self.assertEqual(reopenOrRotate(io.StringIO()), "nothing")

    def test_adopterWritesWorkerLinesIntoTwistdsFile(self) -> None:
        """The supervisor's worker lines go into the very file twistd's observer writes, after its own lines."""
        publisher = LogPublisher()
        adopter = TwistdLogAdopter(jsonFormatter("info"), publisher)
        adopter.attach()
        out = io.StringIO()
        publisher.addObserver(FileLogObserver(out, lambda e: "classic\n"))
        Logger(namespace="twistd", observer=publisher).info("starting up")
        adopter.write(WORKER_LINE.decode() % 4)
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
        self.assertEqual([(x["message"], x.get("worker")) for x in lines], [("starting up", None), ("m4", 1)])


class RecordingReactor:
    def __init__(self) -> None:
        self.whenRunning: list[tuple[Any, ...]] = []
        self.fromThread: list[Any] = []

    def callWhenRunning(self, f: Any, *args: Any) -> None:
        self.whenRunning.append((f, *args))

    def callFromThread(self, f: Any) -> None:
        self.fromThread.append(f)


class SignalTests(SynchronousTestCase):
    def handler(self, reopen: Any) -> tuple[RecordingReactor, Any]:
        reactor = RecordingReactor()
        onReopenSignal(reactor, reopen)
        [(install, signum, handler)] = reactor.whenRunning
        self.assertEqual((install, signum), (signal.signal, signal.SIGUSR1))  # once running, over twistd's own
        return reactor, handler

    def test_sigusr1ReopensInTheReactorThread(self) -> None:
        """The signal only schedules the reopen; it runs in the reactor thread, between two writes."""
        calls: list[int] = []
        reactor, handler = self.handler(lambda: calls.append(1))
        handler(signal.SIGUSR1, None)
        self.assertEqual(calls, [])
        reactor.fromThread[0]()
        self.assertEqual(calls, [1])

    def test_aFailedReopenIsOneErrorLine(self) -> None:
        """A log directory gone unwritable: one error line, and the gateway keeps writing to the old file."""
        def reopen() -> None:
            raise PermissionError(13, "Permission denied")

        reactor, handler = self.handler(reopen)
        handler(signal.SIGUSR1, None)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reactor.fromThread[0]()
        [event] = [e for e in events if e.get("log_namespace") == "txgateway"]
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn("Permission denied", formatEvent(event))
