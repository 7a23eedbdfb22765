# -*- test-case-name: tests.test_discovery_files -*-
"""
File discovery: C{{file: targets.yaml}}, a list of targets any tool may rewrite.

The file is a YAML list; each item is a URL or a mapping with C{url} and
C{weight}::

    - http://10.0.0.1:8000
    - url: http://10.0.0.2:8000
      weight: 2

It is watched the way L{txgateway.reloading} watches the config file: a
C{stat} every C{interval} on the injected clock, a read and hash only when
the C{stat} changed, and a parse only when the hash changed, so C{touch}
or a rewrite with the same bytes does nothing.  A file that cannot be
read or parsed keeps the last good targets and logs one error naming the
line; that content is remembered so the error is not repeated every poll,
and the next change is tried again.  Writers should still replace the file
atomically (write elsewhere, then rename) so that a half-written file is
never seen, but a half-written one is merely reported and skipped.

Reading a small file with a plain C{open} is what the config watcher does
too; it costs less than a DNS packet and does not block the reactor in
any way that matters.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import yaml
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from txgateway.discovery.base import Observer, SourceBase, log
from txgateway.discovery.config import targetFromURL, weight
from txgateway.discovery.interfaces import DiscoveredTarget, ITargetSource

__all__ = ["FileSource", "TargetsFileError", "parseTargetsFile"]

_Fingerprint = tuple[int, int, int, int, int]


class TargetsFileError(Exception):
    """A targets file that cannot be used; C{line} is 1-based, or None."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def parseTargetsFile(text: str | bytes) -> list[DiscoveredTarget]:
    """The targets a file lists, in file order; raises L{TargetsFileError} naming the line."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return []
        if not isinstance(root, yaml.SequenceNode):
            raise TargetsFileError(root.start_mark.line + 1, "must be a list of targets (URLs, or url: and weight:)")
        targets: list[DiscoveredTarget] = []
        seen: set[str] = set()
        for node in root.value:
            line = node.start_mark.line + 1
            target = _item(loader, node, line)
            if target.url in seen:
                raise TargetsFileError(line, f"lists {target.url} twice")
            seen.add(target.url)
            targets.append(target)
        return targets
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise TargetsFileError(mark.line + 1 if mark is not None else None,
                               f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    finally:
        loader.dispose()


def _item(loader: yaml.SafeLoader, node: yaml.Node, line: int) -> DiscoveredTarget:
    try:
        if isinstance(node, yaml.ScalarNode):
            return targetFromURL(loader.construct_object(node), 1, "file")
        if isinstance(node, yaml.MappingNode):
            fields: dict[str, tuple[Any, int]] = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key not in ("url", "weight"):
                    raise TargetsFileError(k.start_mark.line + 1, f"unknown key {key!r} (expected url, weight)")
                if not isinstance(v, yaml.ScalarNode):
                    raise TargetsFileError(v.start_mark.line + 1, f"{key} must be a single value")
                fields[key] = (loader.construct_object(v), v.start_mark.line + 1)
            if "url" not in fields:
                raise TargetsFileError(line, "a target needs url:")
            w = 1
            if "weight" in fields:
                value, line = fields["weight"]
                w = weight(value)
            value, line = fields["url"]
            return targetFromURL(value, w, "file")
    except ValueError as e:
        raise TargetsFileError(line, str(e)) from None
    raise TargetsFileError(line, "a target is a URL, or a mapping with url: and weight:")


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)


@implementer(ITargetSource)
class FileSource(SourceBase):
    """The targets listed in one file, re-read when its content changes."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str], clock: IReactorTime, interval: float = 2.0,
                 onEmpty: str = "keep", observe: Observer | None = None) -> None:
        super().__init__(onEmpty, observe)
        self.path = os.fspath(path)
        self.clock = clock
        self.interval = interval
        self.description = f"file {self.path}"
        self._loop: LoopingCall | None = None
        self._fingerprint: _Fingerprint | None = None
        self._digest: bytes | None = None
        self._missing = False

    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self.check)
        loop.clock = self.clock
        self._loop = loop
        # now=True: the first read happens at start, so the upstream has its
        # targets before the gateway listens.  check() never raises.
        loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("{source}: the watcher stopped", f, source=self.description))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return succeed(None)

    def refresh(self) -> Deferred[None]:
        self.check()
        return succeed(None)

    def check(self) -> str | None:
        """
        One poll: the outcome (see L{txgateway.discovery.base}) when the
        file was read, or None when its C{stat} had not changed.  Never
        raises: an exception would stop the loop for good.
        """
        try:
            return self._check()
        except Exception as e:
            log.failure("{source}: checking failed; will try again", source=self.description)
            return self.fail(f"internal error: {e}")

    def _check(self) -> str | None:
        try:
            st = os.stat(self.path)
        except OSError as e:
            if not self._missing:
                self._missing = True
                self._fingerprint = None
                return self.fail(f"cannot stat the file: {e.strerror or e}", everyTime=True)
            return None
        self._missing = False
        fingerprint = _fingerprint(st)
        if fingerprint == self._fingerprint:
            return None
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            return self.fail(f"cannot read the file: {e.strerror or e}")
        self._fingerprint = fingerprint
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return None
        # Remembered before parsing, so a bad file is reported once, not every poll.
        self._digest = digest
        try:
            targets = parseTargetsFile(data)
        except TargetsFileError as e:
            where = f"line {e.line}: " if e.line else ""
            # Every rejected edit is news to whoever made it: logged each time.
            return self.fail(f"{where}{e.message}", everyTime=True)
        return self.publish(targets, self.clock.seconds())
