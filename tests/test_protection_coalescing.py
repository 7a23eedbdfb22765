"""
Which requests coalesce in the forward path (issue 24): GET and HEAD on a
route with the cache on (for the answers the cache will not store) or with
C{coalesce}; POST only where the route declares C{idempotent_post}; keyed on
method, path, query, the key headers and the body, so requests that differ
in any of these each reach the backend.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.protecting import Held, pending, settle
from txgateway.testing import GatewayFixture

ORIGIN = "http://model.internal:8000"


def gateway(case: SynchronousTestCase, route: str) -> tuple[GatewayFixture, Held]:
    origin = Held()
    fixture = GatewayFixture.fromYAML(f"""
upstreams:
  model:
    targets: [{ORIGIN}]
    timeouts: {{response: 30s}}
    retries: false
routes:
  - {{name: predict, match: {{path_prefix: /p}}, upstream: model{route}}}
""", origins={ORIGIN: origin})
    case.addCleanup(settle, fixture, origin)
    return fixture, origin


def answerAll(fixture: GatewayFixture, origin: Held) -> None:
    while origin.waiting:
        origin.answer()
        fixture.flush()


class WhoCoalescesTests(SynchronousTestCase):
    def test_getWhereTheCacheIsOn(self) -> None:
        """
        Identical GETs on a cached route whose answer the cache does not
        store.  The first burst: the cache holds the misses behind the first
        until its answer's head shows it unstorable, then releases them
        together, and they go as one flight (2 backend calls for 5, not 5).
        Later bursts (the URL is marked uncacheable for 10 s, so the cache
        holds nothing): one backend call for all.
        """
        fixture, origin = gateway(self, ", cache: true")
        first = [pending(fixture, b"GET", b"/p/x") for _ in range(5)]
        answerAll(fixture, origin)
        self.assertEqual([c[0].code for c in first], [200] * 5)
        self.assertEqual(len(origin.seen), 2)
        later = [pending(fixture, b"GET", b"/p/x") for _ in range(5)]
        answerAll(fixture, origin)
        self.assertEqual([c[0].code for c in later], [200] * 5)
        self.assertEqual(len(origin.seen), 3)
        self.assertIn('txgateway_coalesced_total{route="predict"} 7.0', fixture.service.metrics.render().decode())

    def test_getWithoutCacheOrCoalesceGoesEachTime(self) -> None:
        fixture, origin = gateway(self, "")
        clients = [pending(fixture, b"GET", b"/p/x") for _ in range(3)]
        answerAll(fixture, origin)
        self.assertEqual([c[0].code for c in clients], [200] * 3)
        self.assertEqual(len(origin.seen), 3)

    def test_postOnlyWithIdempotentPost(self) -> None:
        """coalesce: true alone leaves POSTs alone; with idempotent_post they coalesce too."""
        fixture, origin = gateway(self, ", coalesce: true")
        [pending(fixture, b"POST", b"/p", b"{}") for _ in range(3)]
        self.assertEqual(len(origin.seen), 3)
        answerAll(fixture, origin)
        fixture, origin = gateway(self, ", coalesce: true, idempotent_post: true")
        [pending(fixture, b"POST", b"/p", b"{}") for _ in range(3)]
        self.assertEqual(len(origin.seen), 1)
        answerAll(fixture, origin)

    def test_theKey(self) -> None:
        """
        Requests that differ in method, path, query, body, a key header
        (Authorization by default) each go; one that differs only in a header
        outside the key shares.
        """
        fixture, origin = gateway(self, ", coalesce: true, idempotent_post: true")
        base = pending(fixture, b"POST", b"/p?a=1", b"{}")
        variants = [
            pending(fixture, b"GET", b"/p?a=1"),
            pending(fixture, b"POST", b"/p/other?a=1", b"{}"),
            pending(fixture, b"POST", b"/p?a=2", b"{}"),
            pending(fixture, b"POST", b"/p?a=1", b"{ }"),
            pending(fixture, b"POST", b"/p?a=1", b"{}", {b"authorization": [b"Bearer other"]}),
        ]
        same = pending(fixture, b"POST", b"/p?a=1", b"{}", {b"x-trace-note": [b"whatever"]})
        self.assertEqual(len(origin.seen), 1 + len(variants))
        answerAll(fixture, origin)
        self.assertEqual([c[0].code for c in [base, same, *variants]], [200] * 7)
        self.assertEqual(same[0].body, base[0].body)

    def test_configuredKeyHeaders(self) -> None:
        """coalesce: {headers: [x-model]}: X-Model is in the key, Authorization no longer is."""
        fixture, origin = gateway(self, ", coalesce: {headers: [x-model]}")
        pending(fixture, b"GET", b"/p", headers={b"x-model": [b"a"], b"authorization": [b"Bearer 1"]})
        pending(fixture, b"GET", b"/p", headers={b"x-model": [b"a"], b"authorization": [b"Bearer 2"]})
        pending(fixture, b"GET", b"/p", headers={b"x-model": [b"b"]})
        self.assertEqual(len(origin.seen), 2)
        answerAll(fixture, origin)
