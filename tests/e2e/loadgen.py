"""
An open-loop load generator for the issue 24 end-to-end tests, run as its own process.

C{python tests/e2e/loadgen.py PORT PATH RATE SECONDS SKIP} sends C{POST PATH}
(a small JSON body) to 127.0.0.1:PORT at RATE requests a second for SECONDS,
each on its own connection, whether or not earlier ones were answered (an
open loop: overload shows as it does to real clients, instead of the
generator slowing down with the server).  It prints one JSON line: the count
of each status, and over the requests started after SKIP seconds (the
adaptive limit's time to settle) the p50 and p99 latency of the 200s, the
share shed (503), and whether every 503 had a Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any


async def one(port: int, path: str, results: list[Any], started: float) -> None:
    t0 = time.monotonic()
    status, retryAfter = 0, False
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"x": 1}'
        writer.write(b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (path.encode(), len(body), body))
        data = await asyncio.wait_for(reader.read(-1), 60)
        writer.close()
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        status = int(head.split(b" ", 2)[1])
        retryAfter = b"\r\nretry-after: " in head
    except Exception:
        status = 0
    results.append((t0 - started, status, time.monotonic() - t0, retryAfter))


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    port, path, rate, seconds, skip = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), \
        float(sys.argv[5])
    results: list[Any] = []
    tasks = []
    started = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(port, path, results, started)))
    await asyncio.gather(*tasks)
    statuses: dict[str, int] = {}
    for _, status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    measured = [r for r in results if r[0] >= skip]
    ok = [r[2] for r in measured if r[1] == 200]
    shed = [r for r in measured if r[1] == 503]
    print(json.dumps({
        "sent": n, "statuses": statuses, "measured": len(measured),
        "p50": quantile(ok, 0.50), "p99": quantile(ok, 0.99),
        "shed_share": len(shed) / len(measured) if measured else 0.0,
        "retry_after_on_every_503": all(r[3] for r in shed),
        "goodput_per_s": len(ok) / (seconds - skip) if seconds > skip else None,
    }))


if __name__ == "__main__":
    asyncio.run(main())
