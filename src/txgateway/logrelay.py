# -*- test-case-name: tests.test_logrelay -*-
"""
Workers' log lines, reassembled whole in the supervisor and written by it alone.

When every worker opened C{--logfile=FILE} itself, N processes wrote one file
through N buffers (and N twistd C{LogFile}s, each rotating the file under the
others): lines were lost and torn.  Now a worker writes its lines to pipes
(its stdout and stderr, and a pipe of its own for C{logging.access_log_file})
and the supervisor, the one writer of each file, reads them.  A pipe delivers
bytes in whatever pieces the kernel chose, so each pipe has a L{LineRelay}
holding the unfinished line until its newline arrives: only whole lines are
written, a block of them per read.

Every line names its worker.  The worker's own formatter already puts
C{"worker": N} (JSON) or C{[worker N]} / C{worker=N} (text) in each line it
formats; a line that has neither (what reached the raw file descriptor:
output from before logging began, a C library's complaint) is wrapped by the
supervisor in a line of the log's format naming the worker.  So is the
unfinished tail of a worker that died mid-line, and a "line" longer than
L{MAX_LINE} (kept whole it would let one worker grow the supervisor's memory
without bound).

Memory stays bounded under a stalled disk because the supervisor writes
synchronously: while a write blocks, the supervisor reads nothing, the
pipes fill (64 KiB each on Linux) and the workers' own writes wait.  Nothing
is dropped, as with one process writing to that disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import LogLevel

__all__ = ["ACCESS_FD", "MAX_LINE", "AppendFile", "LineRelay", "WorkerOutput", "droppedCounter", "workerMarkers"]

# The longest line kept whole: past this an unfinished line is written
# wrapped (see the module docstring), and its rest follows as another.
MAX_LINE = 1 << 20


def workerMarkers(format: str) -> tuple[bytes, ...]:
    """What a line formatted by a worker of a C{logging.format} log contains (see L{txgateway.observe.logging})."""
    return (b'"worker":',) if format == "json" else (b"[worker ", b" worker=")


class LineRelay:
    """
    One pipe from one worker: bytes in, whole lines out, each naming the worker.

    @param write: takes a block of whole lines (text, each ending in a
        newline): the supervisor's one writer of the file they belong in.
    @param wrap: makes a line of the log's format, naming this worker, that
        carries a line (without its newline) the worker wrote unformatted.
    @param markers: byte strings of which a line formatted by the worker
        holds at least one (L{workerMarkers}).
    """

    def __init__(self, write: Callable[[str], None], wrap: Callable[[str], str], markers: tuple[bytes, ...],
                 maxLine: int = MAX_LINE) -> None:
        self._write = write
        self._wrap = wrap
        self._markers = markers
        self._maxLine = maxLine
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Bytes read from the pipe: every line they finish is written now, the rest held."""
        if self._partial:
            data = self._partial + data
        end = data.rfind(b"\n") + 1
        if end == 0:
            self._partial = data
            if len(data) > self._maxLine:
                self._partial = b""
                self._write(self._wrap(_text(data)))
            return
        self._partial = data[end:]
        whole = data[:end]
        markers = self._markers
        lines = whole.split(b"\n")
        lines.pop()  # the empty string after the last newline
        if all(any(m in line for m in markers) for line in lines):
            self._write(_text(whole))  # the usual case: one block, as it came
        else:
            self._write("".join(_text(line) + "\n" if any(m in line for m in markers) else self._wrap(_text(line))
                                for line in lines))
        if len(self._partial) > self._maxLine:
            rest, self._partial = self._partial, b""
            self._write(self._wrap(_text(rest)))

    def end(self) -> None:
        """The pipe closed: an unfinished line (the worker died writing it) is written wrapped, never torn."""
        if self._partial:
            rest, self._partial = self._partial, b""
            self._write(self._wrap(_text(rest)))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# The descriptor a worker writes its access-log lines to, when the config
# names a logging.access_log_file (0-2 are stdio, 3 and 4 the listening sockets).
ACCESS_FD = 5


class WorkerOutput:
    """
    Where the workers' lines go in the supervisor: a L{LineRelay} for each of a worker's pipes.

    @param log: writes whole lines to the supervisor's own log (twistd's
        C{--logfile}, or stdout).
    @param formatterFor: the log's formatter for worker N (naming it), used
        to wrap lines the worker wrote unformatted.
    @param format: C{logging.format}, C{json} or C{text}.
    @param access: writes whole lines to C{logging.access_log_file}, when
        the config names one (the workers send those lines on L{ACCESS_FD}).
    @param dropped: C{txgateway_log_lines_dropped_total} (L{droppedCounter}):
        lines a write could not store (a full disk, a closed stdout) are
        counted there, by file, since the log cannot say it of itself.
    """

    def __init__(self, log: Callable[[str], None], formatterFor: Callable[[int], Callable[[dict[str, Any]], str | None]],
                 format: str, access: Callable[[str], None] | None = None, now: Callable[[], float] = time.time,
                 dropped: Any = None) -> None:
        self.log = self._guarded(log, "log", dropped)
        self.formatterFor = formatterFor
        self.markers = workerMarkers(format)
        self.access = self._guarded(access, "access", dropped) if access is not None else None
        self.now = now

    @staticmethod
    def _guarded(write: Callable[[str], None], name: str, dropped: Any) -> Callable[[str], None]:
        """C{write}, with a failed write counted instead of raised into the reactor (which would close the pipe)."""
        child = dropped.labels(name) if dropped is not None else None

        def guarded(text: str) -> None:
            try:
                write(text)
            except (OSError, ValueError):
                if child is not None:
                    child.inc(text.count("\n"))

        return guarded

    def relays(self, index: int) -> dict[int, LineRelay]:
        """childFD -> relay, for worker C{index}'s pipes."""
        fmt = self.formatterFor(index)
        relays = {1: LineRelay(self.log, self._wrapper(fmt, LogLevel.info), self.markers),
                  2: LineRelay(self.log, self._wrapper(fmt, LogLevel.error), self.markers)}
        if self.access is not None:
            relays[ACCESS_FD] = LineRelay(self.access, self._wrapper(fmt, LogLevel.error), self.markers)
        return relays

    def _wrapper(self, fmt: Callable[[dict[str, Any]], str | None], level: LogLevel) -> Callable[[str], str]:
        def wrap(line: str) -> str:
            return fmt({"log_namespace": "txgateway.workers", "log_level": level, "log_format": "{output}",
                        "output": line, "log_time": self.now()}) or ""

        return wrap


class AppendFile:
    """
    A log file the supervisor alone appends to, reopened at its path on SIGUSR1.

    After logrotate has moved the file away, L{reopen} starts a new one at
    the same path: lines written before went to the moved file, lines after
    go to the new one, none in between (both happen in the reactor thread).
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the supervisor

    def write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def reopen(self) -> None:
        old, self._file = self._file, open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        old.close()

    def close(self) -> None:
        self._file.close()


def droppedCounter() -> Any:
    """
    C{txgateway_log_lines_dropped_total{file}}, kept by the supervisor
    (C{file}: C{log} or C{access}); like L{txgateway.restarting.restartsCounter},
    made once C{PROMETHEUS_MULTIPROC_DIR} is set, so the workers' C{/metrics} report it.
    """
    from prometheus_client import CollectorRegistry, Counter

    return Counter("txgateway_log_lines_dropped", "Workers' log lines the supervisor could not write (a full disk...).",
                   ["file"], registry=CollectorRegistry(auto_describe=True))
