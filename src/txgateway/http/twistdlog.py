# -*- test-case-name: tests.test_observe -*-
"""
Making twistd's own log file speak the gateway's format and level.

twistd installs its file observer after the plugin's C{makeService}
returns and offers no hook to replace it, so this module reaches into the
global log publisher.  Private Twisted names used here (the lead's
private-name rule must allow them in this module, or it moves):

  - C{LogPublisher._observers}, the list of observers of
    L{twisted.logger.globalLogPublisher};
  - C{FilteringLogObserver._observer}, the observer a filter wraps;
  - C{FileLogObserver.formatEvent}, the formatter of a file observer
    (set in its constructor, not declared as its interface);
  - C{FileLogObserver._outFile}, the file it writes to: twistd's C{LogFile}
    for C{--logfile=FILE}, stdout for C{--logfile=-}.  The worker
    supervisor writes its workers' lines there (one writer per file), and
    SIGUSR1 reopens it;
  - C{BaseLogFile._file}, the open file of a C{LogFile}, to tell whether
    its path still names it (L{TwistdLogAdopter.reopen}).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    globalLogPublisher,
)
from twisted.python.logfile import BaseLogFile
from zope.interface import implementer


def adoptTwistdObservers(formatter: Callable[[dict[str, Any]], str | None],
                         publisher: Any = globalLogPublisher) -> int:
    """
    Make twistd's own log file speak our format and level.

    twistd installs its file observer after the plugin's C{makeService}
    returns and offers no hook to replace it; re-pointing the formatter of
    the L{FileLogObserver}s already listening is the least intrusive way to
    get JSON lines and level filtering in C{twistd -n txgateway} without
    asking every user to pass C{--logger}.
    """
    count = 0
    for target in _fileObservers(publisher):
        target.formatEvent = formatter  # type: ignore[attr-defined]
        count += 1
    return count


def _fileObservers(publisher: Any) -> list[FileLogObserver]:
    found = []
    for observer in list(getattr(publisher, "_observers", [])):
        target = getattr(observer, "_observer", observer)  # unwrap filtering observers
        if isinstance(target, FileLogObserver):
            found.append(target)
    return found


def reopenOrRotate(logFile: Any) -> str:
    """
    What SIGUSR1 does to twistd's log file: C{"reopened"}, C{"rotated"} or
    C{"nothing"} (stdout has nothing to reopen).

    twistd's own handler rotates (C{gw.log} becomes C{gw.log.1}); but an
    external tool such as logrotate moves the file itself first and then
    sends SIGUSR1, and twistd's rotate, finding the path gone or replaced,
    keeps writing to the moved file forever.  So: when the path no longer
    names the open file, reopen it (the next line starts the new file);
    otherwise rotate, as twistd users expect.
    """
    if not isinstance(logFile, BaseLogFile):
        return "nothing"
    try:
        onDisk = os.stat(logFile.path)
    except FileNotFoundError:
        moved = True
    else:
        opened = os.fstat(logFile._file.fileno())
        moved = (onDisk.st_dev, onDisk.st_ino) != (opened.st_dev, opened.st_ino)
    if moved:
        logFile.reopen()
        return "reopened"
    logFile.rotate()  # type: ignore[attr-defined]  # LogFile's and DailyLogFile's, not the base's
    return "rotated"


@implementer(ILogObserver)
class TwistdLogAdopter:
    """
    Adopts twistd's file observer as soon as it exists: at its first event.

    Added to the publisher while the plugin builds its service, this
    observer sits before the one twistd adds when it begins logging, so it
    sees the first event (the replay of what was logged during start-up)
    before the file does, and re-points the file's formatter in time for
    twistd's own "starting up" lines to come out as JSON too.  After that
    it is inert; L{detach} removes it (not from inside a log call: the
    publisher is iterating over its observers then).
    """

    def __init__(self, formatter: Callable[[dict[str, Any]], str | None], publisher: Any = globalLogPublisher) -> None:
        self.formatter = formatter
        self.publisher = publisher
        self.adopted = 0
        self.outFile: Any = None  # the file twistd's observer writes to, once adopted

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.adopted:
            self._adopt()

    def _adopt(self) -> None:
        self.adopted = adoptTwistdObservers(self.formatter, self.publisher)
        observers = _fileObservers(self.publisher)
        if observers:
            self.outFile = observers[0]._outFile  # type: ignore[attr-defined]

    def write(self, text: str) -> None:
        """
        Whole lines, already formatted, straight into twistd's log file (a
        worker's lines, in the supervisor); without one (C{--syslog}, a
        C{--logger} of the operator's) each line is logged as an event.
        """
        out = self.outFile
        if out is None:
            for line in text.splitlines():
                self.publisher({"log_namespace": "txgateway.workers", "log_format": "{line}", "line": line})
            return
        out.write(text)
        out.flush()

    def reopen(self) -> str:
        """SIGUSR1: L{reopenOrRotate} twistd's log file."""
        return reopenOrRotate(self.outFile)

    def attach(self) -> None:
        self.publisher.addObserver(self)

    def attachUntilRunning(self, reactor: Any) -> None:
        """
        Attach now, detach once the reactor runs: twistd begins logging
        after the plugin's makeService returns, and its first event (when
        this adopts its file) comes before the reactor runs.
        """
        self.attach()
        reactor.callWhenRunning(self.detach)

    def detach(self) -> None:
        if not self.adopted:
            self._adopt()
        self.publisher.removeObserver(self)




def onReopenSignal(reactor: Any, reopen: Callable[[], object]) -> None:
    """
    SIGUSR1 reopens the log files (L{TwistdLogAdopter.reopen}, and the
    access log's file).

    Installed once the reactor runs, over the handler twistd installs for
    C{--logfile=FILE} (which only rotates, and keeps writing to a file
    logrotate has moved); the work is done in the reactor thread, between
    two writes, so no line is split or lost.
    """
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return

    def reopenLogs() -> None:
        try:
            reopen()
        except OSError as e:  # the directory gone or unwritable: keep writing where we were
            Logger(namespace="txgateway").error("SIGUSR1: cannot reopen the log files: {reason}; still writing to "
                                                "the old ones", reason=e.strerror or str(e))

    def onUsr1(signum: int, frame: Any) -> None:
        reactor.callFromThread(reopenLogs)

    reactor.callWhenRunning(signal.signal, signal.SIGUSR1, onUsr1)


__all__ = ["TwistdLogAdopter", "adoptTwistdObservers", "onReopenSignal", "reopenOrRotate"]
