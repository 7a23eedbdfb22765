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
    (set in its constructor, not declared as its interface).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    globalLogPublisher,
)
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
    for observer in list(getattr(publisher, "_observers", [])):
        target = getattr(observer, "_observer", observer)  # unwrap filtering observers
        if isinstance(target, FileLogObserver):
            target.formatEvent = formatter  # type: ignore[attr-defined]
            count += 1
    return count


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

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.adopted:
            self.adopted = adoptTwistdObservers(self.formatter, self.publisher)

    def attach(self) -> None:
        self.publisher.addObserver(self)

    def detach(self) -> None:
        if not self.adopted:
            self.adopted = adoptTwistdObservers(self.formatter, self.publisher)
        self.publisher.removeObserver(self)


__all__ = ["TwistdLogAdopter", "adoptTwistdObservers"]
