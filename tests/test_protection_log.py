"""
What the access log says of a request that issue 24's protections touched:
C{queue_ms} (the wait for an admission permit), C{batch_id} and
C{batch_size} (the micro-batch it went in), C{coalesced: true} (it was
answered by another request's fetch); and nothing more for any other request.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.protecting import Held, pending, settle
from txgateway.testing import GatewayFixture

ORIGIN = "http://model.internal:8000"


def gateway(case: SynchronousTestCase, upstream: str = "", route: str = "") -> tuple[GatewayFixture, Held,
                                                                                      list[dict[str, Any]]]:
    """A fixture whose access-log entries (by request, as JSON would write them) are collected."""
    origin = Held()
    fixture = GatewayFixture.fromYAML(f"""
upstreams:
  model:
    targets: [{ORIGIN}]
    timeouts: {{response: 30s}}
    retries: false
{upstream}
routes:
  - {{name: predict, match: {{path_prefix: /p}}, upstream: model{route}}}
  - {{name: plain, match: {{path_prefix: /plain}}, upstream: model}}
""", origins={ORIGIN: origin})
    case.addCleanup(settle, fixture, origin)
    log = fixture.service.accessLog
    entries: list[dict[str, Any]] = []
    case.patch(log, "record", lambda c, d: entries.append(json.loads(log.jsonLine(c, d))))
    return fixture, origin, entries


class QueueTests(SynchronousTestCase):
    def test_queueMsIsTheWaitForAPermit(self) -> None:
        """Let in at once: 0.0; queued 1.5 s behind it: 1500.0; a route of another upstream: no field."""
        fixture, origin, entries = gateway(self, "    concurrency: {limit: 1, queue: {size: 5, max_wait: 10s}}")
        first, second = pending(fixture), pending(fixture)
        fixture.clock.advance(1.5)
        origin.answer()
        fixture.flush()
        origin.answer()
        fixture.flush()
        self.assertEqual([c[0].code for c in (first, second)], [200, 200])
        self.assertEqual([e["queue_ms"] for e in entries], [0.0, 1500.0])

    def test_noProtectionNoField(self) -> None:
        fixture, origin, entries = gateway(self)
        got = pending(fixture, path=b"/plain")
        origin.answer()
        fixture.flush()
        self.assertEqual(got[0].code, 200)
        self.assertEqual({"queue_ms", "batch_id", "batch_size", "coalesced"} & set(entries[0]), set())


class BatchTests(SynchronousTestCase):
    def test_eachClientNamesItsBatch(self) -> None:
        fixture, origin, entries = gateway(self, "    concurrency: {limit: 4}",
                                           ", batch: {target_path: /batch, max_size: 2, max_wait: 5ms}")
        clients = [pending(fixture, b"POST", b"/p", json.dumps(i).encode(), {b"content-type": [b"application/json"]})
                   for i in range(3)]
        fixture.clock.advance(0.005)
        fixture.flush()
        origin.answer(b"[10, 11]")
        origin.answer(b"[12]")
        fixture.flush()
        self.assertEqual([json.loads(c[0].body) for c in clients], [10, 11, 12])
        self.assertEqual(sorted((e["batch_id"], e["batch_size"], e["queue_ms"]) for e in entries),
                         [("batch-1", 2, 0.0), ("batch-1", 2, 0.0), ("batch-2", 1, 0.0)])


class CoalesceTests(SynchronousTestCase):
    def test_joinersAreMarkedCoalesced(self) -> None:
        fixture, origin, entries = gateway(self, route=", coalesce: true, idempotent_post: true")
        clients = [pending(fixture, b"POST", b"/p", b'{"q": 1}') for _ in range(3)]
        self.assertEqual(len(origin.seen), 1)
        origin.answer()
        fixture.flush()
        self.assertEqual([c[0].code for c in clients], [200, 200, 200])
        self.assertEqual(sorted(e.get("coalesced", False) for e in entries), [False, True, True])
