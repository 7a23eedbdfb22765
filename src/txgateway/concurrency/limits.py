# -*- test-case-name: tests.test_concurrency_limits -*-
"""
Concurrency limits: a fixed cap, and one learnt from the backend's latency.

A backend that serves N requests at once (one GPU, a model server with N
workers) answers in its normal time up to N and queues the rest inside
itself: past N its latency grows with every extra request and nobody is
served faster.  Rate limits per client do not see this; the number that
matters is how many requests are at the backend at once.

L{FixedLimit} is that number written in the config.  L{GradientLimit}
finds it from what the backend's latency does, in the manner of Netflix's
concurrency-limits (C{GradientLimit}) and Envoy's adaptive concurrency
filter:

  - Samples are gathered in windows (at least C{window} seconds and
    C{minSamples} successful samples).  At the end of a window its mean
    latency is compared with C{minRTT}, the latency the backend shows when
    it is not loaded::

        gradient = clamp(tolerance * minRTT / windowRTT, 0.5, 1.0)
        gradient < 1:  newLimit = limit * gradient
        gradient = 1:  newLimit = limit + sqrt(limit) until the first cut,
                       limit + 1 after it

    While latency stays within C{tolerance} of its minimum, the gradient is
    1 and the limit grows; once latency rises, the gradient falls below 1
    and the limit is cut in proportion, by at most half per window.  Growth
    is by the square root until latency first rises, then by one per
    window (TCP's slow start, then congestion avoidance): with square-root
    headroom at every window the limit would swing about C{sqrt L} above
    the backend's parallelism and keep that many requests queued inside
    it, which is what the limit is there to prevent.  So the limit settles within a step or two of the point where
    latency reaches C{tolerance} times its minimum (for a backend of W
    workers, about C{tolerance * W}), and each window over it is cut back.
    The price: once cut, the limit climbs back one request per window, so a
    backend that gained capacity (or a limit cut by a transient stall) is
    followed at that pace.
  - A window in which the backend dropped a request (a timeout, a 503) cuts
    the limit by C{backoff} (0.9), as AIMD does: overload shown by errors
    is believed before latency is (and growth is one per window after it
    too).
  - A window judges only the requests admitted since the limit last moved
    (or a probe began): a cut is not cut again for the slow answers of
    requests let in under the higher limit before it, so a stall of a
    second costs one cut, not two, and the climb back starts at once.
  - A limit that is not used is not raised: if fewer than half of the
    permits were in use during a window (the load, not the backend, is the
    bottleneck), the limit stays, so a quiet night does not leave a limit
    of 200 waiting for the morning burst.
  - C{minRTT} is measured, not configured.  The first window's latency
    starts it and every window's lower latency replaces it; because a
    backend that became slower (a new model, a busier GPU) would otherwise
    never be believed, every C{probeInterval} seconds the limit drops to
    C{minLimit} for one window and the latency measured there, from
    requests admitted during the probe only, becomes the new minimum (as
    Envoy's minRTT recalculation does).  The limit returns to its previous
    value after the probe.  Set C{min} at or below the backend's real
    parallelism so the probe sees it unloaded.

No timer runs: the window and the probe schedule are checked lazily, from
the injected clock, when a sample arrives.  The limit is a float inside and
a whole number (at least C{minLimit}) outside.
"""

from __future__ import annotations

import math

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from txgateway.concurrency.interfaces import DROPPED, IGNORED, IConcurrencyLimit, Outcome

__all__ = ["INITIAL", "FixedLimit", "GradientLimit"]

#: The adaptive limit before anything was measured (within C{[min, max]}):
#: enough that a cold gateway in front of a backend of a few workers does
#: not shed its first requests while the limit learns, few enough that a
#: backend of one worker is over it for one window only.
INITIAL = 10


@implementer(IConcurrencyLimit)
class FixedLimit:
    """C{concurrency: {limit: N}}: N at once, whatever the latency."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency limit is at least 1")
        self.limit = limit

    def onSample(self, latency: float, outcome: Outcome, inFlight: int) -> None:
        pass

    def __repr__(self) -> str:
        return f"<FixedLimit {self.limit}>"


@implementer(IConcurrencyLimit)
class GradientLimit:
    """
    C{concurrency: {adaptive: true, min, max}}: the limit follows latency.

    See the module docstring for the algorithm.  C{counters}-like state
    (C{minRTT}, C{lastRTT}, C{windows}, C{probes}) is public for the status
    page and tests.
    """

    def __init__(self, clock: IReactorTime, *, minLimit: int = 1, maxLimit: int = 200,
                 initial: int | None = None, tolerance: float = 1.25, window: float = 1.0,
                 minSamples: int = 10, backoff: float = 0.9, probeInterval: float = 60.0) -> None:
        if not 1 <= minLimit <= maxLimit:
            raise ValueError("need 1 <= min <= max")
        if tolerance < 1.0:
            raise ValueError("tolerance is at least 1.0")
        self.clock = clock
        self.minLimit = minLimit
        self.maxLimit = maxLimit
        self.tolerance = tolerance
        self.window = window
        self.minSamples = max(1, minSamples)
        self.backoff = backoff
        self.probeInterval = probeInterval
        start = INITIAL if initial is None else initial
        self._estimate = float(min(maxLimit, max(minLimit, start)))
        self.limit = int(self._estimate)
        self.minRTT: float | None = None
        #: Latency has risen (or the backend dropped) once: growth is one per window from then on.
        self.congested = False
        self.lastRTT: float | None = None
        self.windows = 0
        self.probes = 0
        now = clock.seconds()
        self._windowStart = now
        self._sum = 0.0
        self._count = 0
        self._dropped = 0
        self._maxInFlight = 0
        self._probeStart: float | None = None  # while probing: when it began
        self._since = -math.inf  # when the limit last moved: requests admitted before are not judged
        self._beforeProbe = self._estimate
        self._nextProbe = now + probeInterval if probeInterval > 0 else math.inf

    @property
    def probing(self) -> bool:
        return self._probeStart is not None

    def onSample(self, latency: float, outcome: Outcome, inFlight: int) -> None:
        if outcome == IGNORED:
            return
        now = self.clock.seconds()
        if now - latency < self._since:
            return  # admitted before the limit last moved (or the probe began): it says nothing of the limit now
        if outcome == DROPPED:
            self._dropped += 1
        else:
            self._sum += latency
            self._count += 1
        if inFlight > self._maxInFlight:
            self._maxInFlight = inFlight
        if now - self._windowStart >= self.window and (self._count >= self.minSamples or self._dropped):
            self._endWindow(now)

    def _endWindow(self, now: float) -> None:
        self.windows += 1
        rtt = self._sum / self._count if self._count else None
        self.lastRTT = rtt
        estimate = self._estimate
        if self._probeStart is not None:
            self._probeStart = None
            self._nextProbe = now + self.probeInterval
            if rtt is not None and not self._dropped:
                self.minRTT = rtt
            estimate = self._beforeProbe
        elif self._dropped:
            estimate = max(self.minLimit, estimate * self.backoff)
            self.congested = True
        elif rtt is not None:
            if self.minRTT is None or rtt < self.minRTT:
                self.minRTT = rtt
            gradient = max(0.5, min(1.0, self.tolerance * self.minRTT / rtt))
            if gradient < 1.0:
                estimate *= gradient
                self.congested = True
            elif self._maxInFlight * 2 >= estimate:
                estimate += 1.0 if self.congested else math.sqrt(estimate)
        before = self.limit
        self._estimate = min(float(self.maxLimit), max(float(self.minLimit), estimate))
        self.limit = int(self._estimate)
        if self.limit != before:
            self._since = now
        self._windowStart = now
        self._sum = 0.0
        self._count = 0
        self._dropped = 0
        self._maxInFlight = 0
        if now >= self._nextProbe:
            self.probes += 1
            self._beforeProbe = self._estimate
            self._probeStart = now
            self._since = now
            self.limit = self.minLimit

    def __repr__(self) -> str:
        return f"<GradientLimit {self.limit} in [{self.minLimit}, {self.maxLimit}] minRTT={self.minRTT}>"
