# -*- test-case-name: tests.test_observe -*-
"""
The one timestamp format of every log line the gateway writes: ISO 8601, UTC, milliseconds.

C{2026-12-04T16:06:34.727Z}: access lines and other log lines, JSON and
text alike, so one line sorts and greps like the next.
"""

from __future__ import annotations

import functools
import time


@functools.lru_cache(maxsize=4)
def isoSecond(second: int) -> str:
    # Every access line within one second shares this: strftime once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


# The milliseconds of a timestamp as written, "000" to "999" ("1000" for a
# fraction that rounds up to a whole second, as the format spec wrote it).
MILLIS = [f"{i:03d}" for i in range(1001)]


def isoTime(t: float) -> str:
    return f"{isoSecond(int(t))}.{int((t % 1) * 1000):03d}Z"


__all__ = ["MILLIS", "isoSecond", "isoTime"]
