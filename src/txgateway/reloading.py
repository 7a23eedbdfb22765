# -*- test-case-name: tests.test_reloading -*-
"""
Hot reload from the config file: poll it, and reload when its content changes.

Polling (a L{LoopingCall} on the injected clock) rather than inotify: it works
the same on every platform and file system, including bind mounts and the
symlink swaps Kubernetes does for ConfigMaps, and it costs one C{stat} per
interval.  The file is read and hashed only when its C{stat} changed, and a
reload happens only when the hash changed too, so C{touch}, a save without
edits or an editor replacing the file with the same bytes reload nothing.

An edit that is rejected is remembered by its hash, so a broken file is
reported once, not every interval; the next change is tried again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["ConfigWatcher"]

log = Logger(namespace="txgateway")

_Fingerprint = tuple[int, int, int, int, int]


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    # ctime and inode catch a replaced file whose mtime was preserved (cp -p, rsync -t).
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


class ConfigWatcher(Service):
    """
    Calls C{reload()} when the config file's content changes.

    C{reload} is L{txgateway.service.GatewayService.reload}: it returns the
    problems of a rejected config (and logs them), or an empty list.
    """

    name = "config-watcher"

    def __init__(self, path: str | os.PathLike[str], reload: Callable[[], Sequence[str]], clock: IReactorTime,
                 interval: float = 2.0) -> None:
        self.path = os.fspath(path)
        self.reload = reload
        self.clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._fingerprint: _Fingerprint | None = None
        self._digest: bytes | None = None
        self._missing = False
        # The running config was loaded from this file moments ago: its
        # current content is the baseline, not a change.
        self.sync()

    # -- lifecycle

    def startService(self) -> None:
        super().startService()
        self._startLoop()

    def stopService(self) -> None:
        super().stopService()
        self._stopLoop()

    def setInterval(self, interval: float) -> None:
        """Adopt a new C{server.watch_config} after a reload; 0 stops watching."""
        if interval == self.interval:
            return
        self.interval = interval
        if self.running:
            self._stopLoop()
            self._startLoop()

    def _startLoop(self) -> None:
        if self.interval <= 0:
            return
        loop = LoopingCall(self.check)
        loop.clock = self.clock
        self._loop = loop
        # check() catches its own errors; this only guards against a bug there.
        loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("the config file watcher stopped", f))

    def _stopLoop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    # -- checking

    def sync(self) -> None:
        """
        Take the file as it is now as seen, without reloading.

        Called before any reload reads the file (SIGHUP, admin API, or this
        watcher), so the watcher does not reload the same edit twice; a
        change made after this call still differs and is picked up.
        """
        try:
            st = os.stat(self.path)
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return
        self._fingerprint = _fingerprint(st)
        self._digest = hashlib.sha256(data).digest()

    def check(self) -> list[str] | None:
        """
        One poll: None when nothing changed (or the file cannot be read),
        else the problems the reload reported (empty when it succeeded).
        Never raises: an exception would stop the loop for good.
        """
        try:
            return self._check()
        except Exception:
            log.failure("checking the config file {path} failed; will try again", path=self.path)
            return None

    def _check(self) -> list[str] | None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            # Editors that save by delete-and-rename leave a moment with no
            # file; keep serving and look again next time.
            if not self._missing:
                log.warn("cannot stat the config file {path} ({error}); the running config keeps serving",
                         path=self.path, error=e.strerror or str(e))
            self._missing = True
            return None
        self._missing = False
        fingerprint = _fingerprint(st)
        if fingerprint == self._fingerprint:
            return None
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            log.warn("cannot read the config file {path} ({error}); will try again",
                     path=self.path, error=e.strerror or str(e))
            return None
        self._fingerprint = fingerprint
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return None
        # Remembered before reloading, so a rejected edit is reported once,
        # not every poll (reload() may sync() again with what it read).
        self._digest = digest
        log.info("config file {path} changed; reloading", path=self.path)
        return list(self.reload())

    def __repr__(self) -> str:
        return f"<ConfigWatcher {self.path} every {self.interval:g}s>"
