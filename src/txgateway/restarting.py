# -*- test-case-name: tests.test_workers_supervisor -*-
"""
When the supervisor starts a crashed worker again: at once the first time, then backing off.

A worker that dies once (killed, out of memory) should be back in a tenth of
a second; one that dies at every start (a broken config file read at start,
a port taken) must not be restarted in a tight loop that eats the machine
and floods the log.  So the wait doubles with each crash in a row, up to a
cap, and goes back to the first step once a worker has stayed up for a
while.  Each restart is counted in C{txgateway_worker_restarts_total}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

__all__ = ["RestartBackoff", "restartsCounter"]


class RestartBackoff:
    """
    Per worker index: the wait before its next start.

    @param initial: the wait after a first crash (or one after a stable run).
    @param maximum: the longest wait, however many crashes in a row.
    @param stable: a worker up at least this long had not been crashing:
        its next crash waits C{initial} again.
    """

    def __init__(self, clock: IReactorTime, initial: float = 0.1, maximum: float = 30.0, stable: float = 10.0) -> None:
        self.clock = clock
        self.initial = initial
        self.maximum = maximum
        self.stable = stable
        self._startedAt: dict[int, float] = {}
        self._next: dict[int, float] = {}

    def started(self, index: int) -> None:
        """Worker C{index} was (re)started now."""
        self._startedAt[index] = self.clock.seconds()

    def delayAfterExit(self, index: int) -> float:
        """Worker C{index} exited now: seconds to wait before starting it again."""
        now = self.clock.seconds()
        if now - self._startedAt.get(index, now) >= self.stable:
            self._next[index] = self.initial
        delay = self._next.get(index, self.initial)
        self._next[index] = min(self.maximum, delay * 2)
        return delay


def restartsCounter() -> Any:
    """
    C{txgateway_worker_restarts_total{worker}}, kept by the supervisor.

    Created after the supervisor has set C{PROMETHEUS_MULTIPROC_DIR} (see
    L{txgateway.tap}): the counter then lives in the same directory as the
    workers' samples, and C{/metrics} in any worker reports it with theirs.
    """
    from prometheus_client import CollectorRegistry, Counter

    return Counter("txgateway_worker_restarts", "Workers started again by the supervisor after they exited.",
                   ["worker"], registry=CollectorRegistry(auto_describe=True))
