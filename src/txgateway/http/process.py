# -*- test-case-name: tests.test_lifecycle -*-
"""
Process-level hooks into the reactor that twistd runs.

Private Twisted names used here (and nowhere else in txgateway):

  - C{reactor._exitSignal}: twistd re-raises the signal that stopped the
    reactor once the reactor has run, so a process stopped by SIGTERM would
    die "killed by SIGTERM" (status 143 in a container) even after a drain
    that finished every request.  L{markCleanStop} clears it, so a completed
    drain exits 0 and orchestration can tell it from a cut one (status 3).
"""

from __future__ import annotations

from typing import Any

__all__ = ["markCleanStop"]


def markCleanStop(reactor: Any) -> None:
    """A completed drain is a clean stop: let twistd exit 0, not re-raise the stopping signal."""
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None
